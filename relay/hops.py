"""Where a request has been: the ``Via`` header a chain of relays builds (RFC 9110 §7.6.3).

Each relay has an id (``server.relay_id``, random at start unless configured) and adds
``1.1 relay-<id>`` to the ``Via`` of every request it sends upstream on a client's behalf. A
request that arrives already naming this relay has come round in a loop (A → B → A, an easy
misconfiguration of two ``kind: boss`` sources): it is refused at once with 508, naming the
relays it passed through, instead of circling until a timeout. A hop limit is the second
guard, for loops through relays that do not add ``Via``.

The ``Via`` to send upstream is per request: ``ViaMiddleware`` puts it in a context variable,
and the HTTP seam (``upstreams._http``) adds it to every upstream request made while that
request is handled. Work shared between requests (one upstream read several requests wait for)
carries the ``Via`` of the request that started it.
"""

from __future__ import annotations

import contextvars
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import LoopDetected

__all__ = ["ViaMiddleware", "new_relay_id", "outgoing_via"]

#: The ``Via`` value for upstream requests made on behalf of the current request (None outside
#: a request: start-up checks send none).
outgoing_via: contextvars.ContextVar[str | None] = contextvars.ContextVar("outgoing_via",
                                                                          default=None)

_PREFIX = "relay-"


def new_relay_id() -> str:
    return secrets.token_hex(4)


def _entries(via: str) -> list[str]:
    return [entry.strip() for entry in via.split(",") if entry.strip()]


def _received_by(entry: str) -> str:
    """``relay-ab12`` of ``1.1 relay-ab12 (comment)``."""
    parts = entry.split()
    return parts[1] if len(parts) > 1 else ""


class ViaMiddleware:
    """Refuses a request that has been here before (508) or has passed too many hops; makes the
    ``Via`` for the upstream requests it causes."""

    def __init__(self, app: ASGIApp, relay_id: str, max_hops: int) -> None:
        self.app = app
        self.name = _PREFIX + relay_id
        self.entry = f"1.1 {self.name}"
        self.max_hops = max_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ", ".join(Headers(scope=scope).getlist("via"))
        entries = _entries(incoming)
        error = None
        if any(_received_by(entry) == self.name for entry in entries):
            path = " → ".join([*(_received_by(e) or e for e in entries), self.name])
            error = LoopDetected(f"Request loop: it has already passed through this relay "
                                 f"({path}); a source's url leads back here")
        elif len(entries) >= self.max_hops:
            error = LoopDetected(f"Request passed {len(entries)} proxies (server.max_hops is "
                                 f"{self.max_hops}): a loop, or a chain too long")
        if error is not None:
            await JSONResponse(error.to_json(), status_code=error.status)(scope, receive, send)
            return
        token = outgoing_via.set(f"{incoming}, {self.entry}" if incoming else self.entry)
        try:
            await self.app(scope, receive, send)
        finally:
            outgoing_via.reset(token)
