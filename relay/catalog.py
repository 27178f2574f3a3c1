"""Which source answers for a name, and what names exist.

Sources are matched in config order; the first whose collection / experiment / channel
patterns match wins ("*" matches any name). A source that speaks the BossDB dialect itself
(``Upstream.passthrough``) answers metadata for the names it claims first with its own JSON,
and its wildcard levels list the upstream's names; other sources are described from
``channel_info``, and list the names the config spells out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import SourceSettings
from .errors import ResourceNotFound
from .upstreams.base import ChannelInfo, ChannelRef, Registry, Upstream, UpstreamContext

__all__ = ["Catalog", "Channel"]


@dataclass(frozen=True, slots=True)
class Channel:
    ref: ChannelRef
    source: SourceSettings
    upstream: Upstream
    info: ChannelInfo


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n != "*"))


def _claims(source: SourceSettings, names: Sequence[str]) -> bool:
    patterns = (source.collection, source.experiment, source.channel)
    return all(p in ("*", n) for p, n in zip(patterns, names, strict=False))


class Catalog:
    def __init__(self, sources: Sequence[SourceSettings], registry: Registry,
                 context: UpstreamContext | None = None) -> None:
        self._entries = [(source, registry.create(source, context)) for source in sources]

    @property
    def entries(self) -> list[tuple[SourceSettings, Upstream]]:
        return list(self._entries)

    @property
    def upstreams(self) -> list[Upstream]:
        return [upstream for _, upstream in self._entries]

    @property
    def passthrough_upstreams(self) -> list[Upstream]:
        return [upstream for upstream in self.upstreams if upstream.passthrough]

    def claim(self, *names: str) -> tuple[SourceSettings, Upstream] | None:
        """The first source whose patterns match ``names`` (collection[, experiment[, channel]])."""
        for source, upstream in self._entries:
            if _claims(source, names):
                return source, upstream
        return None

    def passthrough(self, *names: str) -> Upstream | None:
        """The upstream that answers metadata for ``names`` verbatim, if the claimant is one."""
        claimed = self.claim(*names)
        return claimed[1] if claimed is not None and claimed[1].passthrough else None

    async def _listed(self, level: int, path: str, key: str, names: Sequence[str],
                      token: str | None) -> list[str]:
        """Names at ``level`` under ``names``: the names the config spells out, plus the
        upstream's own names from a passthrough wildcard, but only where that upstream is the
        first claimant of ``names`` (a collection the config serves locally is not also
        looked up at BossDB)."""
        first = self.claim(*names) if names else None
        out: list[str] = []
        for source, upstream in self._entries:
            if not _claims(source, names):
                continue
            pattern = (source.collection, source.experiment, source.channel)[level]
            if pattern != "*":
                out.append(pattern)
            elif upstream.passthrough and (first is None or first[1] is upstream):
                out.extend((await upstream.boss_json(path, token))[key])
        return _unique(out)

    async def collections(self, token: str | None = None) -> list[str]:
        return await self._listed(0, "collection/", "collections", (), token)

    async def experiments(self, collection: str, token: str | None = None) -> list[str]:
        self._require(collection)
        return await self._listed(1, f"collection/{collection}/experiment/", "experiments",
                                  (collection,), token)

    async def channels(self, collection: str, experiment: str,
                       token: str | None = None) -> list[str]:
        self._require(collection, experiment)
        return await self._listed(
            2, f"collection/{collection}/experiment/{experiment}/channel/", "channels",
            (collection, experiment), token,
        )

    def _require(self, collection: str, experiment: str | None = None) -> None:
        """Raise the BossDB-shaped 404 for the first name no source can answer for."""
        if self.claim(collection) is None:
            raise ResourceNotFound(f"Collection {collection} not found")
        if experiment is not None and self.claim(collection, experiment) is None:
            raise ResourceNotFound(f"Experiment {experiment} not found")

    async def channel(self, ref: ChannelRef, token: str | None = None) -> Channel:
        claimed = self.claim(ref.collection, ref.experiment, ref.channel)
        if claimed is None:
            self._require(ref.collection, ref.experiment)
            raise ResourceNotFound(f"Channel {ref.channel} not found")
        source, upstream = claimed
        return Channel(ref, source, upstream, await upstream.channel_info(ref, token))

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
