"""What the relay has learned about its upstreams, kept on disk beside the cache: offline after
a restart.

A relay that browsed through a lab relay holds warm cuboids on disk; to serve them it also
needs what the upstream said about them (collections, channels, frames, levels). Those answers
are remembered here, as JSON, under keys that name the upstream (kind, URL, byte-changing
options, and the caller's credential when it is forwarded), and recalled when the upstream
cannot be reached — also after a restart. The tier is a ``DiskTier`` of its own (a directory
beside the cuboids, with its own small budget), so cuboid churn never evicts the metadata that
makes the cuboids servable.

Writes happen off the request's path and only when a value differs from the one last
remembered under its key in this process (a request per second to one channel writes nothing).
A value that cannot be read back (damaged, not JSON) is a miss.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .base import CacheTier

__all__ = ["MetadataMemo"]

log = logging.getLogger(__name__)

#: The memo's own budget: metadata is kilobytes per channel.
MEMO_BYTES = 64 * 2**20


class MetadataMemo:
    def __init__(self, tier: CacheTier) -> None:
        self.tier = tier
        self._last: dict[str, Any] = {}  # key → the value last remembered (or recalled)
        self._pending: set[asyncio.Task[None]] = set()

    def remember(self, key: str, value: Any) -> None:
        """Keep ``value`` (JSON-able) under ``key``, unless it is what is kept already."""
        last = self._last.get(key)
        if last is value or (last is not None and last == value):
            return
        self._last[key] = value
        task = asyncio.create_task(self._write(key, json.dumps(value).encode()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: str, data: bytes) -> None:
        try:
            await self.tier.put(key, data)
        except Exception as exc:  # a memo that cannot be written is only a lost memo
            log.warning("could not remember upstream metadata on disk (%s)", exc)

    async def recall(self, key: str) -> Any | None:
        if (known := self._last.get(key)) is not None:
            return known
        try:
            data = await self.tier.get(key)
            value = None if data is None else json.loads(data)
        except Exception as exc:
            log.warning("could not read remembered upstream metadata (%s)", exc)
            return None
        if value is not None:
            self._last[key] = value
        return value

    async def aclose(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.tier.aclose()
