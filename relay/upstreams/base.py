"""The upstream interface, its value objects, and the registry of kinds.

An upstream maps a channel (collection, experiment, channel) onto a store and answers two
questions, both async: what the channel looks like (``channel_info``) and what voxels one box
at one level holds (``read`` → a Z,Y,X array, or ``None`` when the store knows it holds no data
there). Upstreams never cache; the relay's cache sits in front of them.

Kinds are found by name: the built-ins below (imported on first use, so an optional dependency
is only needed by those who use that kind) merged with the entry-point group
``relay.upstreams``. A second registration of a name is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np

from ..errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ..geometry import Box, Vec3
from ._http import HttpPool, HttpSettings, describe
from ._isolation import SourceWorker

if TYPE_CHECKING:
    from ..cache.memo import MetadataMemo
    from ..config import SourceSettings

__all__ = [
    "BOSS_CUBOID",
    "ChannelInfo",
    "ChannelRef",
    "Level",
    "Registry",
    "Upstream",
    "UpstreamContext",
    "checked_info",
    "default_cuboid",
    "registry",
    "token_digest",
]

log = logging.getLogger(__name__)

#: BossDB's storage cuboid at every resolution (x, y, z).
BOSS_CUBOID = Vec3(512, 512, 16)

#: Seconds a store that could not be reached is left alone (the HTTP seam does the same for
#: hosts it cannot connect to).
DOWN_FOR = 5.0

ChannelType = Literal["image", "annotation"]


@dataclass(frozen=True, slots=True)
class ChannelRef:
    collection: str
    experiment: str
    channel: str

    def __str__(self) -> str:
        return f"{self.collection}/{self.experiment}/{self.channel}"


@dataclass(frozen=True, slots=True)
class Level:
    """One resolution level of a channel."""

    voxel_size: tuple[float, float, float]  # x, y, z in the channel's voxel_unit
    bounds: Box                             # the voxels that exist at this level
    cuboid: Vec3                            # the cache's unit: a multiple of the store's chunk
    origin: Vec3                            # where the cuboid grid starts (a chunk corner)


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    dtype: np.dtype[np.generic]
    type: ChannelType
    levels: tuple[Level, ...]
    voxel_unit: str = "nanometers"
    num_time_samples: int = 1
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON form (persisted with the disk tier: offline after a restart)."""
        return {
            "dtype": self.dtype.str, "type": self.type, "voxel_unit": self.voxel_unit,
            "num_time_samples": self.num_time_samples, "description": self.description,
            "levels": [{"voxel_size": list(level.voxel_size),
                        "bounds": [list(level.bounds.start), list(level.bounds.stop)],
                        "cuboid": list(level.cuboid), "origin": list(level.origin)}
                       for level in self.levels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelInfo:
        """Inverse of ``to_json``; KeyError, TypeError or ValueError on anything else."""
        kind = data["type"]
        if kind not in ("image", "annotation"):
            raise ValueError(f"channel type {kind!r}")

        def level(item: dict[str, Any]) -> Level:
            voxel, (start, stop) = item["voxel_size"], item["bounds"]
            return Level(voxel_size=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
                         bounds=Box(Vec3(*map(int, start)), Vec3(*map(int, stop))),
                         cuboid=Vec3(*map(int, item["cuboid"])),
                         origin=Vec3(*map(int, item["origin"])))

        return cls(dtype=np.dtype(str(data["dtype"])), type=kind,
                   levels=tuple(level(item) for item in data["levels"]),
                   voxel_unit=str(data["voxel_unit"]),
                   num_time_samples=int(data["num_time_samples"]),
                   description=str(data["description"]))


#: Bounds on what an upstream may describe: coordinates within ±2^40 voxels, at most 20
#: levels, a cuboid of 1 to 65,536 voxels a side and at most 256 MiB, at most a million time
#: samples. Anything past them is a store's (or a hostile peer's) mistake, refused with 502
#: before it can make the relay plan millions of reads or allocate terabytes.
MAX_COORDINATE = 2**40
MAX_LEVELS = 20
MAX_CUBOID_SIDE = 2**16
MAX_CUBOID_BYTES = 256 * 2**20
MAX_TIME_SAMPLES = 1_000_000


def checked_info(info: ChannelInfo, where: str) -> ChannelInfo:
    """``info`` if its geometry is usable, else ``UpstreamError`` saying what is wrong."""

    def bad(what: str) -> UpstreamError:
        return UpstreamError(f"{where} describes an unusable channel: {what}")

    if not 1 <= len(info.levels) <= MAX_LEVELS:
        raise bad(f"{len(info.levels)} resolution levels")
    if not 1 <= info.num_time_samples <= MAX_TIME_SAMPLES:
        raise bad(f"{info.num_time_samples} time samples")
    for r, level in enumerate(info.levels):
        if not all(math.isfinite(v) and v > 0 for v in level.voxel_size):
            raise bad(f"level {r} voxel size {level.voxel_size}")
        start, stop = level.bounds.start, level.bounds.stop
        if not all(-MAX_COORDINATE <= a < b <= MAX_COORDINATE
                   for a, b in zip(start, stop, strict=True)):
            raise bad(f"level {r} extent {start} to {stop}")
        if not all(abs(o) <= MAX_COORDINATE for o in level.origin):
            raise bad(f"level {r} grid origin {level.origin}")
        cuboid = level.cuboid
        if (not all(1 <= c <= MAX_CUBOID_SIDE for c in cuboid)
                or cuboid.prod() * info.dtype.itemsize > MAX_CUBOID_BYTES):
            raise bad(f"level {r} cuboid {cuboid.x}×{cuboid.y}×{cuboid.z}")
    return info


def token_digest(token: str | None) -> str:
    """A short, one-way name for a credential: safe in cache keys and logs."""
    if not token:
        return "anon"
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def default_cuboid(chunk: tuple[int, int, int], target: Vec3 = BOSS_CUBOID) -> Vec3:
    """The largest multiple of ``chunk`` per axis that fits ``target`` (at least one chunk).

    Small store chunks (64³, say) would make one cache entry per tiny file; growing them toward
    Boss's 512×512×16 keeps entries big enough to amortise a lookup, while staying aligned.
    """
    return Vec3(*(c * max(1, t // c) for c, t in zip(chunk, target, strict=True)))


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
    #: True when the upstream speaks the BossDB dialect itself, so its metadata JSON is passed
    #: through verbatim (``boss_json``) instead of being synthesised from ``channel_info``
    passthrough: ClassVar[bool] = False

    def __init__(self, source: SourceSettings, context: UpstreamContext | None = None) -> None:
        self.source = source
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

    #: Source options that change the bytes a read returns or what they mean: part of the
    #: identity, so changing any of them (and restarting on the same disk) never serves bytes
    #: cached under the old value.
    BYTE_OPTIONS: ClassVar[tuple[str, ...]] = (
        "channel_index", "axes", "fill_missing", "type", "voxel_size", "voxel_unit", "instance",
    )

    @functools.cached_property
    def _options(self) -> str:
        # cached: settings are frozen, and identity is asked for every cache key
        return ",".join(f"{name}={getattr(self.source, name)!r}" for name in self.BYTE_OPTIONS)

    @property
    def identity(self) -> str:
        """What makes this store's bytes this store's: part of every cache key."""
        return f"{self.kind}:{self.store_identity}:{self._options}"

    @functools.cached_property
    def memo_prefix(self) -> str:
        """Where this source's metadata is remembered (``context.memo``): the source as
        configured (a DVID branch, not the node it led to, which is itself remembered)."""
        src = self.source
        raw = f"{self.kind}:{src.url}:{src.uuid}:{self._options}"
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
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> tuple[np.ndarray | None, bytes | None]:
        """``read``, plus the upstream's own Blosc1 frame of exactly those voxels when it sent
        one (already checked to decode to them), so the cache can keep the frame instead of
        compressing the voxels again. By default there is no frame."""
        return await self.read(ref, level, box, t, token), None

    async def boss_json(self, path: str, token: str | None = None) -> Any:
        """BossDB metadata at ``/v1/{path}`` (passthrough upstreams only)."""
        raise NotImplementedError

    #: until when the store is left alone after it could not be reached, and the error then
    _down: tuple[float, UpstreamError] | None = None

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


class Registry:
    """Upstream kinds by name: built-ins plus the ``relay.upstreams`` entry-point group."""

    BUILTINS: ClassVar[dict[str, str]] = {
        "zarr": "relay.upstreams.zarr:ZarrUpstream",
        "precomputed": "relay.upstreams.precomputed:PrecomputedUpstream",
        "boss": "relay.upstreams.boss:BossUpstream",
        "dvid": "relay.upstreams.dvid:DvidUpstream",
    }
    GROUP: ClassVar[str] = "relay.upstreams"

    def __init__(self) -> None:
        self._targets: dict[str, str | type[Upstream]] = dict(self.BUILTINS)
        self._entry_points_loaded = False

    def register(self, name: str, target: str | type[Upstream], *, replace: bool = False) -> None:
        """Add a kind; ``target`` is a class or a ``"module:Class"`` path."""
        self._load_entry_points()
        self._add(name, target, replace=replace)

    def _add(self, name: str, target: str | type[Upstream], *, replace: bool) -> None:
        if name in self._targets and not replace:
            raise ValueError(f"upstream kind {name!r} is already registered")
        self._targets[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.GROUP):
            try:
                self._add(ep.name, ep.value, replace=False)
            except ValueError:
                log.warning(
                    "ignoring entry point %s = %s: kind %r is already registered",
                    ep.name, ep.value, ep.name,
                )

    def kinds(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def get(self, name: str) -> type[Upstream]:
        self._load_entry_points()
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            module = importlib.import_module(module_name)
            target = getattr(module, attr)
            assert isinstance(target, type) and issubclass(target, Upstream), target
            self._targets[name] = target
        return target

    def create(self, source: SourceSettings, context: UpstreamContext | None = None) -> Upstream:
        return self.get(source.kind)(source, context)


registry = Registry()
