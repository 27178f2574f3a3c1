"""The responses of the data routes: a body held against the in-flight budget until it is sent,
or one forwarded from an upstream relay as it arrives (``relay.forwarding``).

The body goes to the server in slices, each sent only once the connection has taken the one
before (the server's flow control), so a slow reader holds this body and not a second copy in
the transport's buffer; its reservation (``relay.budget``) is given back when the last byte has
been handed over, or when the client is gone. A body may be a view into a cached value: it is
sent as it is, without a copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..budget import Reservation
from ..forwarding import ForwardBroken, Forwarded

__all__ = ["BodyResponse", "ForwardedResponse"]

log = logging.getLogger("relay")

#: Bytes per ``http.response.body`` message.
SLICE = 1 << 20


def _head(media_type: str, length: int, headers: Mapping[str, str] | None
          ) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", media_type.encode("latin-1")),
           (b"content-length", b"%d" % length)]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in (headers or {}).items()
            if k.lower() not in ("content-type", "content-length")]
    return raw


class BodyResponse(Response):
    def __init__(self, body: bytes | memoryview, media_type: str,
                 reservation: Reservation | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        # Response.__init__ would render a body and make headers twice: these are made once
        self.status_code = 200
        self.background = None
        self.body = b""
        self.payload = memoryview(body).cast("B")
        self.raw_headers = _head(media_type, self.payload.nbytes, headers)
        self.reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            payload = b"" if scope["method"] == "HEAD" else self.payload
            if len(payload) <= SLICE:  # what the transport holds of it is bounded by the slice
                await send({"type": "http.response.body", "body": payload})
                return
            for start in range(0, len(payload), SLICE):
                await send({"type": "http.response.body", "body": payload[start:start + SLICE],
                            "more_body": True})
            # the server waits for the connection to drain before taking the last message
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self.reservation is not None:
                self.reservation.release()


class ForwardedResponse(Response):
    """An upstream relay's frame, sent on as it arrives. When the frame fails its check after
    the head went out, the body stops short of its Content-Length and the connection is
    closed: the client sees a broken transfer, never a whole wrong body."""

    def __init__(self, forwarded: Forwarded, media_type: str, reservation: Reservation,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.forwarded = forwarded
        self.raw_headers = _head(media_type, forwarded.length, headers)
        self.reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            head = scope["method"] == "HEAD"
            try:
                async for piece in self.forwarded.pieces():
                    if not head:  # (a HEAD still lets the read finish and be cached)
                        await send({"type": "http.response.body", "body": piece,
                                    "more_body": True})
            except ForwardBroken as exc:
                # returning unfinished makes the server close the connection short of the
                # Content-Length (ASGI has no other way to say "abort")
                log.warning("cut off a forwarded cutout (%s %s): %s", scope["method"],
                            scope["path"], exc)
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.forwarded.close()
            self.reservation.release()
