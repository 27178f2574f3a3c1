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
"""

from __future__ import annotations

import contextvars
import secrets

from .errors import LoopDetected

__all__ = ["Hops", "incoming_via", "new_relay_id"]

#: The ``Via`` a request being handled arrived with (None: none, or outside a request).
incoming_via: contextvars.ContextVar[str | None] = contextvars.ContextVar("incoming_via",
                                                                          default=None)


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
