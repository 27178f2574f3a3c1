"""Which source answers for a name, and what names exist.

Sources are matched in config order; the first whose collection / experiment / channel
patterns match wins ("*" matches any name). Listings show the names the config spells out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import SourceSettings
from .errors import ResourceNotFound
from .upstreams.base import ChannelInfo, ChannelRef, Registry, Upstream

__all__ = ["Catalog", "Channel"]


@dataclass(frozen=True, slots=True)
class Channel:
    ref: ChannelRef
    source: SourceSettings
    upstream: Upstream
    info: ChannelInfo


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n != "*"))


class Catalog:
    def __init__(self, sources: Sequence[SourceSettings], registry: Registry) -> None:
        self._entries = [(source, registry.create(source)) for source in sources]

    @property
    def upstreams(self) -> list[Upstream]:
        return [upstream for _, upstream in self._entries]

    def collections(self) -> list[str]:
        return _unique([s.collection for s, _ in self._entries])

    def experiments(self, collection: str) -> list[str]:
        self._require(collection)
        return _unique(
            [s.experiment for s, _ in self._entries if s.collection in ("*", collection)]
        )

    def channels(self, collection: str, experiment: str) -> list[str]:
        self._require(collection, experiment)
        return _unique(
            [
                s.channel
                for s, _ in self._entries
                if s.collection in ("*", collection) and s.experiment in ("*", experiment)
            ]
        )

    def _require(self, collection: str, experiment: str | None = None) -> None:
        """Raise the BossDB-shaped 404 for the first name no source can answer for."""
        if not any(s.collection in ("*", collection) for s, _ in self._entries):
            raise ResourceNotFound(f"Collection {collection} not found")
        if experiment is not None and not any(
            s.collection in ("*", collection) and s.experiment in ("*", experiment)
            for s, _ in self._entries
        ):
            raise ResourceNotFound(f"Experiment {experiment} not found")

    async def channel(self, ref: ChannelRef) -> Channel:
        for source, upstream in self._entries:
            if source.matches(ref.collection, ref.experiment, ref.channel):
                return Channel(ref, source, upstream, await upstream.channel_info(ref))
        self._require(ref.collection, ref.experiment)
        raise ResourceNotFound(f"Channel {ref.channel} not found")

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
