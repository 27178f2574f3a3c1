"""Metadata answers kept as the bytes sent, per route path and caller, for a while.

intern and neuroglancer ask for the same few metadata documents over and over (a channel's,
its experiment's, the frame's) while the catalog re-reads its sources only every
``metadata_ttl_seconds``: answering from the bytes last rendered skips the catalog lookups,
the JSON building and its encoding. An entry lives for the shortest ``metadata_ttl_seconds`` of
any source (0 keeps nothing), is kept per caller credential (a source that forwards each
caller's token answers each caller its own), and a write clears them all (it may change what a
store says: DVID's extents, BossDB's downsample status). Errors are never kept.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..model import token_digest

__all__ = ["Rendered"]

#: entries kept at most (a forwarded token per caller makes one set of entries each)
_ENTRIES = 10_000


def _render(content: Any) -> bytes:
    # exactly what Starlette's JSONResponse sends
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class Rendered:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def answer(self, request: Request, make: Callable[[], Awaitable[Any]]) -> Response:
        """The JSON ``make()`` returns, as sent the last time within the TTL."""
        if self.ttl <= 0:
            return Response(_render(await make()), media_type="application/json")
        key = (request.scope["path"], token_digest(request.headers.get("authorization")))
        now = time.monotonic()
        held = self._entries.get(key)
        if held is not None and held[0] > now:
            body = held[1]
        else:
            body = _render(await make())
            self._entries[key] = (now + self.ttl, body)
            self._entries.move_to_end(key)
            while len(self._entries) > _ENTRIES:
                self._entries.popitem(last=False)
        return Response(body, media_type="application/json")

    def clear(self) -> None:
        self._entries.clear()
