"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol, with a bounded request
head and BossDB JSON for requests that cannot be parsed.

httptools has no size limit of its own: uvicorn accumulates the URL and the header list for as
long as a client keeps sending them (64 MiB of one header cost 64 MiB of memory here), so a few
slow clients could exhaust the machine. nginx refuses heads past 4 × 8 KiB; we allow 64 KiB (a
neuroglancer state in a query string can be long) and answer 431 after that.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import BadRequest, RelayError, RequestHeadTooLarge

__all__ = ["MAX_HEAD_BYTES", "BoundedHttpToolsProtocol"]

MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # bytes received since the current request began, while its head is still incomplete
    _head_bytes = 0
    _in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(RequestHeadTooLarge(
                    f"Request line and headers are over {MAX_HEAD_BYTES} bytes"))
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # a pipelined request may follow

    def send_400_response(self, msg: str) -> None:
        self._refuse(BadRequest(msg))

    def _refuse(self, error: RelayError) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(error.to_json()).encode()
        self.transport.write(b"".join([
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()
