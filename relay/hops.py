"""Where a request has been: the ``Via`` header a chain of relays builds (RFC 9110 §7.6.3).

Each relay has an id (``server.relay_id``, random at start unless configured) and adds
``1.1 relay-<id>`` to the ``Via`` of every request it sends upstream on a client's behalf. A
request that arrives already naming this relay has come round in a loop (A → B → A, an easy
misconfiguration of two ``kind: boss`` sources): it is refused at once with 508, naming the
relays it passed through, instead of circling until a timeout. A hop limit is the second
guard, for loops through proxies that add ``Via`` but are not relays.

The edge (``api.middleware.EdgeMiddleware``) checks an incoming ``Via`` with ``Hops.check``
and keeps it in ``incoming_via`` while the request is handled; the HTTP seam
(``upstreams.http``) sends ``Hops.upstream_via()`` with every upstream request. Work shared
between requests (one upstream read several requests wait for) carries the ``Via`` of the
request that started it.

A request is also followed by its id: ``X-Request-Id`` as it arrived (when it is a plain token
of at most 128 characters) or a new one, kept in ``request_id`` while the request is handled,
sent upstream with every request it causes, echoed on the response and written in the access
log; a W3C ``traceparent`` that arrived is forwarded as it is. One request can so be found in
the log of every relay of a chain.
"""

from __future__ import annotations

import contextvars
import re
import secrets

from .errors import LoopDetected

__all__ = ["Hops", "accepted_id", "accepted_traceparent", "incoming_via", "new_relay_id",
           "request_id", "traceparent"]

#: The ``Via`` a request being handled arrived with (None: none, or outside a request).
incoming_via: contextvars.ContextVar[str | None] = contextvars.ContextVar("incoming_via",
                                                                          default=None)


#: The id of the request being handled, and the ``traceparent`` it arrived with.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)
traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent",
                                                                         default=None)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def accepted_id(given: str | None) -> str:
    """The request's id: the one it came with if that is a plain token, else a new one (a
    header a client chose goes into logs and upstream requests: nothing else is passed on)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(8)


def accepted_traceparent(given: str | None) -> str | None:
    return given if given is not None and _TRACEPARENT.fullmatch(given) else None


def new_relay_id() -> str:
    return secrets.token_hex(4)


def _received_by(entry: str) -> str:
    """``relay-ab12`` of ``1.1 relay-ab12 (comment)``."""
    parts = entry.split()
    return parts[1] if len(parts) > 1 else parts[0] if parts else ""


class Hops:
    """This relay's place in a chain."""

    def __init__(self, relay_id: str, max_hops: int) -> None:
        self.name = f"relay-{relay_id}"
        self.entry = f"1.1 {self.name}"
        self.max_hops = max_hops

    def check(self, via: str) -> None:
        """``LoopDetected`` when a request that came ``via`` these proxies has been here
        before, or has passed too many."""
        entries = [entry.strip() for entry in via.split(",") if entry.strip()]
        if any(_received_by(entry) == self.name for entry in entries):
            path = " → ".join([*(_received_by(e) for e in entries), self.name])
            raise LoopDetected(f"Request loop: it has already passed through this relay "
                               f"({path}); a source's url leads back here")
        if len(entries) >= self.max_hops:
            raise LoopDetected(f"Request passed {len(entries)} proxies (server.max_hops is "
                               f"{self.max_hops}): a loop, or a chain too long")

    def upstream_via(self) -> str:
        """The ``Via`` for an upstream request made on behalf of the current request."""
        via = incoming_via.get()
        return f"{via}, {self.entry}" if via else self.entry

    def upstream_headers(self) -> dict[str, str]:
        """What an upstream request made on behalf of the current one carries of it: ``Via``,
        its ``X-Request-Id`` and its ``traceparent``."""
        headers = {"Via": self.upstream_via()}
        if (rid := request_id.get()) is not None:
            headers["X-Request-Id"] = rid
        if (parent := traceparent.get()) is not None:
            headers["traceparent"] = parent
        return headers
