"""Which source answers for a name, and what names exist.

Sources are matched in config order; the first whose collection / experiment / channel
patterns match wins ("*" matches any name). A source that speaks the BossDB dialect itself
(``SpeaksBoss``) answers metadata for the names it claims first with its own JSON, and its
wildcard levels list the upstream's names; other sources are described from
``channel_info``, and list the names the config spells out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import dialect
from .config import SourceSettings
from .errors import ConfigError, RelayError, ResourceNotFound, UpstreamError
from .model import ChannelInfo, ChannelRef, checked_info, is_name, show, token_digest
from .pyramid import Pyramid, derive_levels
from .upstreams.base import SpeaksBoss, Upstream, UpstreamContext
from .upstreams.kinds import Registry

log = logging.getLogger(__name__)

#: How many channel descriptions are tracked for the memo (forwarded tokens make one each).
_TRACKED = 10_000

__all__ = ["Catalog", "Channel"]


@dataclass(frozen=True, slots=True)
class Channel:
    ref: ChannelRef
    source: SourceSettings
    upstream: Upstream
    info: ChannelInfo             # the store's levels, then the derived ones
    pyramid: Pyramid | None = None  # which levels are derived (None: every level is stored)


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n != "*"))


def _as_served(source: SourceSettings, upstream: Upstream) -> SourceSettings:
    """A writable source that caches per caller (each caller's own credential goes upstream)
    is read uncached: a write must drop every copy of what it touched, and the relay cannot
    name the other callers' copies (docs/writes.md)."""
    if source.writable and source.cache and upstream.partitioned:
        log.info("%s: writable and forwarding each caller's token: read uncached",
                 upstream.where)
        return source.model_copy(update={"cache": False})
    return source


class Catalog:
    def __init__(self, sources: Sequence[SourceSettings], registry: Registry,
                 context: UpstreamContext | None = None) -> None:
        self._entries = [(_as_served(source, upstream), upstream) for source, upstream in (
            (source, registry.create(source, context)) for source in sources)]
        # which upstreams speak BossDB, found once: a runtime protocol check costs microseconds
        # (about a tenth of a metadata request) and the answer never changes
        self._speakers: dict[int, SpeaksBoss] = {
            id(upstream): upstream for _, upstream in self._entries
            if isinstance(upstream, SpeaksBoss)}
        self._memo = context.memo if context is not None else None
        self._remembered: dict[str, ChannelInfo] = {}  # memo key → the info last remembered
        self._offline: set[str] = set()  # memo keys served from the memo (logged once each)
        # id(description) → (description, with its derived levels)
        self._derived: dict[int, tuple[ChannelInfo, tuple[ChannelInfo, Pyramid | None]]] = {}

    @property
    def entries(self) -> list[tuple[SourceSettings, Upstream]]:
        return list(self._entries)

    @property
    def upstreams(self) -> list[Upstream]:
        return [upstream for _, upstream in self._entries]

    @property
    def boss_speakers(self) -> list[SpeaksBoss]:
        return list(self._speakers.values())

    def speaks_boss(self, upstream: Upstream) -> SpeaksBoss | None:
        """``upstream`` as a BossDB speaker, or None."""
        return self._speakers.get(id(upstream))

    def claim(self, *names: str) -> tuple[SourceSettings, Upstream] | None:
        """The first source whose patterns match ``names`` (collection[, experiment[, channel]])."""
        for source, upstream in self._entries:
            if source.claims(*names):
                return source, upstream
        return None

    def passthrough(self, *names: str) -> SpeaksBoss | None:
        """The upstream that answers metadata for ``names`` verbatim, if the claimant is one."""
        claimed = self.claim(*names)
        return None if claimed is None else self.speaks_boss(claimed[1])

    async def _listed(self, level: int, path: str, key: str, names: Sequence[str],
                      token: str | None) -> list[str]:
        """Names at ``level`` under ``names``: the names the config spells out, plus the
        upstream's own names from a passthrough wildcard, but only where that upstream is the
        first claimant of ``names`` (a collection the config serves locally is not also
        looked up at BossDB)."""
        first = self.claim(*names) if names else None
        out: list[str] = []
        for source, upstream in self._entries:
            if not source.claims(*names):
                continue
            pattern = (source.collection, source.experiment, source.channel)[level]
            if pattern != "*":
                out.append(pattern)
            elif (speaker := self.speaks_boss(upstream)) is not None and (
                    first is None or first[1] is upstream):
                body = await speaker.boss_json(path, token)
                listed = body.get(key) if isinstance(body, dict) else None
                if not isinstance(listed, list):
                    raise UpstreamError(f"the upstream's {key} are not a list")
                # an upstream's names are checked like a client's: one that is not a name
                # ("../../admin?x=") never reaches a URL of this relay or of its upstream
                names_ok = [name for name in listed if is_name(name)]
                if len(names_ok) < len(listed):
                    log.warning("%s of %s lists %d names that are not names; left out",
                                source.kind, "/".join(names) or "the upstream",
                                len(listed) - len(names_ok))
                out.extend(names_ok)
        return _unique(out)

    async def collections(self, token: str | None = None) -> list[str]:
        return await self._listed(0, dialect.collections(), "collections", (), token)

    async def experiments(self, collection: str, token: str | None = None) -> list[str]:
        self._require(collection)
        return await self._listed(1, dialect.experiments(collection), "experiments",
                                  (collection,), token)

    async def channels(self, collection: str, experiment: str,
                       token: str | None = None) -> list[str]:
        self._require(collection, experiment)
        return await self._listed(2, dialect.channels(collection, experiment), "channels",
                                  (collection, experiment), token)

    def _require(self, collection: str, experiment: str | None = None) -> None:
        """Raise the BossDB-shaped 404 for the first name no source can answer for."""
        if self.claim(collection) is None:
            raise ResourceNotFound(f"Collection {collection} not found")
        if experiment is not None and self.claim(collection, experiment) is None:
            raise ResourceNotFound(f"Experiment {experiment} not found")

    async def channel(self, ref: ChannelRef, token: str | None = None) -> Channel:
        for what, name in (("Collection", ref.collection), ("Experiment", ref.experiment),
                           ("Channel", ref.channel)):
            if not is_name(name):  # whoever asks: never a store's URL
                raise ResourceNotFound(f"{what} {show(name)} not found")
        claimed = self.claim(ref.collection, ref.experiment, ref.channel)
        if claimed is None:
            self._require(ref.collection, ref.experiment)
            raise ResourceNotFound(f"Channel {ref.channel} not found")
        source, upstream = claimed
        info = await self._info(source, upstream, ref, token)
        return Channel(ref, source, upstream, *self._served(source, upstream, info))

    def _served(self, source: SourceSettings, upstream: Upstream, info: ChannelInfo
                ) -> tuple[ChannelInfo, Pyramid | None]:
        """``info`` as served: with the source's ``default_time_sample`` and the derived levels
        it asks for. A BossDB-speaking upstream (BossDB, another relay) keeps its own pyramid:
        its metadata is passed through as it is, and must agree with the levels served.
        Worked out once per description."""
        held = self._derived.get(id(info))
        if held is not None and held[0] is info:
            return held[1]
        served = info
        default = source.default_time_sample
        if default is not None and default != info.default_time_sample:
            if default >= info.num_time_samples:
                raise ConfigError(
                    f"{upstream.where}: default_time_sample {default} is past the channel's "
                    f"{info.num_time_samples} time samples; set it below")
            served = replace(info, default_time_sample=default)
        derived: tuple[ChannelInfo, Pyramid | None] = (served, None)
        if source.downsample != "none" and self.speaks_boss(upstream) is None:
            method = source.downsample_method
            if method == "auto":
                method = "mode" if info.type == "annotation" else "mean"
            derived = derive_levels(served, method, source.levels)
        if len(self._derived) >= _TRACKED:
            self._derived.clear()
        self._derived[id(info)] = (info, derived)
        return derived

    async def _info(self, source: SourceSettings, upstream: Upstream, ref: ChannelRef,
                    token: str | None) -> ChannelInfo:
        """The upstream's description of ``ref``; when the upstream cannot be reached, the one
        it gave last (remembered on disk: it survives a restart). A store that answers with a
        description the config cannot use is not papered over."""
        memo = self._memo
        partition = f"{token_digest(token)}/" if upstream.partitioned else ""
        key = f"{upstream.memo_prefix}/info/{partition}{ref}"
        try:
            info = await upstream.channel_info(ref, token)
        except UpstreamError as exc:
            if memo is None or isinstance(exc, ConfigError):
                raise
            held = await memo.recall(key)
            if held is None:
                raise
            try:
                info = checked_info(ChannelInfo.from_json(held), upstream.where)
            except (KeyError, TypeError, ValueError, UpstreamError):
                raise exc from None
            if key not in self._offline:
                self._offline.add(key)
                log.warning("%s: serving the description remembered for %s (%s)",
                            upstream.where, ref, exc.message)
            return info
        if memo is not None and self._remembered.get(key) is not info:
            if len(self._remembered) >= _TRACKED:
                self._remembered.clear()
            self._remembered[key] = info
            self._offline.discard(key)
            memo.remember(key, info.to_json())
        return info

    async def probe(self) -> list[tuple[str, str]]:
        """(source, why) for each source that does not answer now, with the relay's own
        credential: a named channel must describe itself, a BossDB-speaking wildcard list its
        collections (how ``relay serve`` checks its ``required`` sources)."""
        problems = []
        for source, upstream in self._entries:
            names = (source.collection, source.experiment, source.channel)
            try:
                if "*" not in names:
                    await upstream.channel_info(ChannelRef(*names))
                elif (speaker := self.speaks_boss(upstream)) is not None:
                    await speaker.boss_json(dialect.collections())
            except Exception as exc:  # any failure to answer is the one line to print
                why = exc.message if isinstance(exc, RelayError) else f"{exc!r}"[:300]
                problems.append((f"{'/'.join(names)} ({source.kind})", why))
        return problems

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
