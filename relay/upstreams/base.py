"""The upstream interface.

An upstream maps a channel (collection, experiment, channel) onto a store and answers two
questions, both async: what the channel looks like (``channel_info``) and what voxels one box
at one level holds (``read`` → a Z,Y,X array, or ``None`` when the store knows it holds no data
there). Upstreams never cache; the relay's cache sits in front of them.

A kind is a subclass of ``Upstream`` with its ``Options`` model (``NoOptions``), registered under
the ``relay.upstreams`` entry point (``relay.upstreams.kinds``); the values it produces
(``ChannelInfo``, ``Level``) and is asked about (``ChannelRef``) are ``relay.model``'s.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast, runtime_checkable
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import (
    MethodNotAllowed,
    ResourceNotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..forwarding import FrameSink
from ..geometry import Box
from ..model import ChannelInfo, ChannelRef
from ..singleflight import SingleFlight
from ._isolation import SourceWorker
from .http import HttpPool, HttpSettings, describe

if TYPE_CHECKING:
    from ..cache.memo import MetadataMemo
    from ..model import SourceSettings

__all__ = ["DOWN_FOR", "NoOptions", "SpeaksBoss", "Upstream", "UpstreamContext"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a store that could not be reached is left alone (the HTTP seam does the same for
#: hosts it cannot connect to).
DOWN_FOR = 5.0

@runtime_checkable
class SpeaksBoss(Protocol):
    """An upstream that speaks the BossDB dialect itself (BossDB, another relay): its metadata
    JSON is passed through as it is instead of being made from ``channel_info``."""

    async def boss_json(self, path: str, token: str | None = None) -> Any:
        """BossDB metadata at ``/v1/{path}`` (a path from ``relay.dialect``)."""

    async def boss_call(self, method: str, path: str, token: str | None = None) -> Any:
        """``method`` on ``/v1/{path}``, uncached: its JSON answer, or None for no body."""


class NoOptions(BaseModel):
    """A kind's own options: a pydantic model, every field with a default (or required), no
    other key allowed. A kind subclasses this to declare its options; the source entry's keys
    beyond the ones every source has are validated against it at load (``Registry.problem``)
    and handed to the upstream as ``self.options``. ``secret`` fields stay out of the cache
    identity (a changed token does not make cached bytes someone else's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secret: ClassVar[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True)
class UpstreamContext:
    """What the app shares with every upstream: the pooled HTTP clients, and the memo of
    upstream metadata kept on disk (None without a disk tier)."""

    http: HttpPool
    memo: MetadataMemo | None = None


class Upstream(ABC):
    """One configured source. Subclasses are named ``<Kind>Upstream``.

    ``token`` arguments carry the caller's ``Authorization`` header value; only upstreams that
    forward it (a boss source with ``forward_client_token``) look at it.
    """

    kind: ClassVar[str]

    #: the kind's own options (a subclass names its model here, and narrows ``options``)
    Options: ClassVar[type[NoOptions]] = NoOptions
    options: NoOptions

    @property
    def partitioned(self) -> bool:
        """True when each caller's own credential goes upstream, so what is cached is kept
        apart per caller (by a hash of the credential)."""
        return False

    def __init__(self, source: SourceSettings, context: UpstreamContext | None = None) -> None:
        self.source = source
        self.options = self.Options.model_validate(source.options)
        self._owns_http = context is None
        self.context = context or UpstreamContext(HttpPool())

    @functools.cached_property
    def where(self) -> str:
        """The store, for messages: its path, or its host for a remote one (never a URL that
        may carry credentials)."""
        src = self.source
        names = "/".join((src.collection, src.experiment, src.channel))
        parts = urlsplit(src.url)
        if parts.scheme in ("", "file"):
            return f"{self.kind} source {names} at {parts.path or src.url}"
        return describe(src.url, f"{self.kind} source {names} at")

    @functools.cached_property
    def worker(self) -> SourceWorker:
        """The source's own threads (and event loop) for blocking store work."""
        src = self.source
        return SourceWorker(f"{self.kind}-{src.collection}-{src.experiment}-{src.channel}",
                            src.max_threads, src.timeout, self.where)

    @property
    def http_settings(self) -> HttpSettings:
        src = self.source
        return HttpSettings(connect=src.connect_timeout, read=src.read_timeout, total=src.timeout,
                            retries=src.retries)

    @functools.cached_property
    def _options(self) -> str:
        # every option of the kind but its secrets: an option that changes the bytes a read
        # returns, or what they mean, must change the identity (and so every cache key); cached
        # because settings are frozen and the identity is asked for every cache key
        return self.options.model_dump_json(exclude=set(self.Options.secret))

    @property
    def identity(self) -> str:
        """What makes this store's bytes this store's: part of every cache key."""
        return f"{self.kind}:{self.store_identity}:{self._options}"

    @functools.cached_property
    def memo_prefix(self) -> str:
        """Where this source's metadata is remembered (``context.memo``): the source as
        configured (a DVID branch, not the node it led to, which is itself remembered)."""
        raw = f"{self.kind}:{self.source.url}:{self._options}"
        return f"meta1/{self.kind}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"

    @property
    def store_identity(self) -> str:
        """The store itself (its URL; kinds with versions add the version read)."""
        return self.source.url

    @property
    def identity_digest(self) -> str:
        """``identity`` hashed, for cache keys: it may hold a URL with credentials. Memoised
        per identity (a DVID source's identity changes when its branch moves on)."""
        identity = self.identity
        if getattr(self, "_digest_of", None) != identity:
            self._digest_of = identity
            self._digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self._digest

    @abstractmethod
    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        """Describe ``ref``; raise ``ResourceNotFound`` when the store has no such channel."""

    @abstractmethod
    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        """The Z,Y,X voxels of ``box`` (inside the level's bounds) at time ``t``."""

    async def read_encoded(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None,
        sink: FrameSink | None = None,
    ) -> tuple[np.ndarray | None, bytes | memoryview | None]:
        """``read``, plus the upstream's own Blosc1 frame of exactly those voxels when it sent
        one (already checked to decode to them), so the cache can keep the frame instead of
        compressing the voxels again. By default there is no frame.

        A kind that ``forwards`` feeds the frame to ``sink`` as it arrives and hands it the
        whole frame once checked (``relay.forwarding``); the others never get a sink."""
        return await self.read(ref, level, box, t, token), None

    #: does ``read_encoded`` feed a sink (cut-through forwarding of an upstream's frames)?
    forwards: ClassVar[bool] = False

    #: can this kind write cutouts into its store (``write``)?
    writes: ClassVar[bool] = False

    async def check_write(self, ref: ChannelRef, level: int) -> None:
        """Raise (405, or the store's own refusal) when a write to ``level`` would be refused
        for what the store is (read over HTTP, lossy, a locked DVID node…): asked before the
        relay drops anything it caches, so such a refusal changes nothing. ``write`` refuses
        the same (what a store says of itself, DVID's lock, it may leave to the store's own
        answer to the write)."""
        if not self.writes:
            raise MethodNotAllowed(f"a {self.kind} source cannot take writes")

    async def write(self, ref: ChannelRef, level: int, box: Box, data: np.ndarray, t: int = 0,
                    token: str | None = None) -> None:
        """Write the Z,Y,X voxels ``data`` (the channel's dtype, ``box``'s shape; the box is
        inside the level's bounds but need not be aligned to anything) at time ``t``; return
        once the store holds them. A store that refuses says why with a ``RelayError``."""
        await self.check_write(ref, level)
        raise MethodNotAllowed(f"a {self.kind} source cannot take writes")

    def forget(self, ref: ChannelRef) -> None:  # noqa: B027 - optional hook
        """Drop what is held of ``ref``'s description: a write may have changed it (DVID's
        extents grow by whole blocks; BossDB marks a written channel not downsampled)."""

    async def reserve_ids(self, ref: ChannelRef, count: int) -> int | None:
        """The first of ``count`` new label ids the store itself hands out (``count`` 0: the
        next one, consuming nothing), or None where the store keeps no such counter (the
        relay then keeps one: ``relay.objects``)."""
        return None

    async def mesh_directory(self, ref: ChannelRef) -> str | None:
        """The store's own mesh directory for ``ref`` (precomputed's ``mesh``), or None when
        it has none (the relay then makes meshes itself)."""
        return None

    async def mesh_file(self, ref: ChannelRef, name: str) -> bytes | None:
        """A file of the store's mesh directory (``name`` is checked: no slash), or None when
        it is not there."""
        return None

    #: until when the store is left alone after it could not be reached, and the error then
    _down: tuple[float, UpstreamError] | None = None
    _store_opened: Any = None
    _opening: SingleFlight[str, Any] | None = None

    async def open_once(self, open_store: Callable[[], Awaitable[T]], key: str = "") -> T:
        """What ``open_store`` made (the opened store), made once: concurrent first callers
        share one opening; a failure is not kept, but a store that could not be reached is
        left alone for a while (``mark_down``)."""
        opened = self._store_opened if not key else None
        if opened is not None:
            return cast(T, opened)
        self.check_down()
        if self._opening is None:
            self._opening = SingleFlight()

        async def attempt() -> T:
            try:
                made = await open_store()
            except UpstreamError as exc:
                self.mark_down(exc)
                raise
            if not key:
                self._store_opened = made
            return made

        return cast(T, await self._opening.do(key, attempt))

    async def guarded(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """``await call()`` unless the store is being left alone (``check_down``); a store it
        finds unreachable is left alone (``mark_down``), and any other failure is an
        ``UpstreamError`` that starts with ``what`` ("read failed for …")."""
        self.check_down()
        try:
            return await call()
        except UpstreamError as exc:
            self.mark_down(exc)
            raise
        except Exception as exc:
            raise UpstreamError(f"{self.where}: {what}: {exc}") from exc

    @staticmethod
    def check_level(level: int, count: int) -> None:
        if not 0 <= level < count:
            raise ResourceNotFound(f"resolution {level} not found")

    def check_down(self) -> None:
        """Fail at once while the store is being left alone (see ``mark_down``)."""
        if self._down is not None:
            until, error = self._down
            if time.monotonic() < until:
                raise type(error)(error.message)
            self._down = None

    def mark_down(self, error: UpstreamError) -> None:
        """Remember for ``DOWN_FOR`` seconds that the store could not be reached (gone, or no
        answer in time), so requests meanwhile fail at once instead of each waiting for it."""
        if isinstance(error, UpstreamUnavailable | UpstreamTimeout):
            self._down = (time.monotonic() + DOWN_FOR, error)

    async def aclose(self) -> None:
        """Release connections, threads and files."""
        if "worker" in self.__dict__:
            await self.worker.aclose()
        if self._owns_http:
            await self.context.http.aclose()
