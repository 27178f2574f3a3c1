"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol, with every connection
bounded.

- **Request heads are bounded** in size: httptools has no limit of its own (uvicorn
  accumulates the URL and the header list for as long as a client sends them: 64 MiB of one
  header cost 64 MiB of memory). nginx refuses heads past 4 × 8 KiB; we allow 64 KiB (a
  neuroglancer state in a query string can be long) and answer 431 after that.
- **and in time**: a connection that has not sent a complete head ``header_timeout`` seconds
  after it opened (or after the first byte of its next request) gets 408 and is closed. uvicorn
  times out only idle keep-alive connections, so thousands of silent or slow-loris connections
  would otherwise stay open for good.
- **Connections are capped** below the descriptor limit (``max_connections``): one more is
  answered 503 at once and closed, which frees its descriptor; without the cap, the process
  runs out of descriptors, stops accepting, and every client waits.
- **A client that is gone cancels its request**: uvicorn lets the handler run on after a
  disconnect (reading upstream, assembling, encoding for nobody). Here the request's task is
  cancelled; shared upstream reads other requests wait on carry on (``relay.singleflight``).
- **A response nobody reads is dropped**: when the client has taken nothing of it for
  ``send_timeout`` seconds (nginx's ``send_timeout``: no progress, not total time) the
  connection is aborted, which frees the body the transport holds.
- Requests that cannot be parsed get BossDB JSON, not uvicorn's plain text.

Limits and counters come from the app (``ConnectionPolicy``, handed over in the lifespan
state), so each worker process of ``--workers N`` applies them to its own connections. Every
overload is counted in ``/metrics`` and logged once per episode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from asyncio import TimerHandle
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import BadRequest, Overloaded, RelayError, RequestHeadTooLarge, RequestTimeout
from .metrics import Metrics

__all__ = ["MAX_HEAD_BYTES", "POLICY_KEY", "BoundedHttpToolsProtocol", "ConnectionPolicy",
           "default_max_connections"]

log = logging.getLogger("relay")

MAX_HEAD_BYTES = 64 * 1024
#: where the app's lifespan state carries the policy (uvicorn hands that state to protocols)
POLICY_KEY = "relay.connection_policy"


def default_max_connections() -> int:
    """The descriptor limit less a reserve (an eighth, at least 128) for everything else a
    process opens: cache files, upstream connections, store files, its own libraries."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return max(16, limit - max(128, limit // 8))


@dataclass
class ConnectionPolicy:
    header_timeout: float = 10.0
    send_timeout: float = 60.0
    max_connections: int = field(default_factory=default_max_connections)
    metrics: Metrics = field(default_factory=Metrics)
    open: int = 0  # connections open now (a gauge in /metrics)
    _overloaded: bool = False

    def overload(self) -> None:
        self.metrics.inc("connections_refused_total")
        if not self._overloaded:
            self._overloaded = True
            log.warning("%d connections open (server.max_connections): refusing new ones "
                        "with 503 until some close", self.max_connections)

    def recovered(self, open_connections: int) -> None:
        if self._overloaded and open_connections < self.max_connections * 9 // 10:
            self._overloaded = False
            log.info("connections are back under server.max_connections")


_DEFAULT_POLICY = ConnectionPolicy()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # bytes received since the current request began, while its head is still incomplete
    _head_bytes = 0
    _head_tail = b""  # the last bytes of the head so far, for an end split across two reads
    _in_head = True
    _head_timer: TimerHandle | None = None
    _send_timer: TimerHandle | None = None
    _send_left = 0
    _request_task: asyncio.Task[Any] | None = None
    _hung_up: asyncio.Task[Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy: ConnectionPolicy = self.app_state.get(POLICY_KEY, _DEFAULT_POLICY)
        app = self.app

        async def run(scope: Any, receive: Any, send: Any) -> None:
            await self._run_cancellable(app, scope, receive, send)

        self.app = run

    # --- connections -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.policy.open += 1
        if len(self.connections) > self.policy.max_connections:
            self.policy.overload()
            self._refuse(Overloaded("The relay is at its connection limit "
                                    "(server.max_connections); retry shortly"))
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        task = self._request_task
        if (task is not None and not task.done() and self.cycle is not None
                and not self.cycle.response_complete):
            self._hung_up = task
            task.cancel()
            self.policy.metrics.inc("requests_abandoned_total")
        for timer in (self._head_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = None
        super().connection_lost(exc)
        self.policy.open -= 1
        self.policy.recovered(len(self.connections))

    async def _run_cancellable(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        """Run one request so that the client hanging up cancels it (quietly: uvicorn would
        log a cancelled request as an error)."""
        task = asyncio.current_task()
        self._request_task = task
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if task is None or self._hung_up is not task:
                raise
            task.uncancel()
        finally:
            if self._request_task is task:
                self._request_task = None

    # --- the request head ------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.policy.header_timeout,
                                                self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined head while the previous response is still being sent: its time
            # starts once that response is done (a 408 now would land inside that body)
            self._arm_head_timer()
            return
        if self._in_head:
            self.policy.metrics.inc("header_timeouts_total")
            self._refuse(RequestTimeout(
                f"No complete request head within {self.policy.header_timeout:g} s "
                "(server.header_timeout)"))

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_timer is None:  # the first bytes of the next request
                self._arm_head_timer()
            # only the head's own bytes count: a POST's body may arrive in the same read
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_tail = window[-3:]
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(RequestHeadTooLarge(
                    f"Request line and headers are over {MAX_HEAD_BYTES} bytes"))
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # a pipelined request may follow
        self._in_head, self._head_bytes, self._head_tail = True, 0, b""

    # --- the response ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_send(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _watch_send(self, left: int) -> None:
        self._send_left = left
        self._send_timer = self.loop.call_later(self.policy.send_timeout, self._send_check)

    def _send_check(self) -> None:
        self._send_timer = None
        if self.transport.is_closing() or not self.flow.write_paused:
            return
        left = self.transport.get_write_buffer_size()
        if left < self._send_left:  # the client took some: keep going
            self._watch_send(left)
            return
        self.policy.metrics.inc("send_timeouts_total")
        log.info("dropped a response the client did not read for %g s (server.send_timeout)",
                 self.policy.send_timeout)
        self.transport.abort()

    # --- refusals --------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._refuse(BadRequest(msg))

    def _refuse(self, error: RelayError) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps(error.to_json()).encode()
        extra = "".join(f"{k.lower()}: {v}\r\n" for k, v in error.headers().items()).encode()
        self.transport.write(b"".join([
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()
