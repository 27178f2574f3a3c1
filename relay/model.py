"""The values every layer shares: a configured source, which channel, what it looks like.

A ``SourceSettings`` is one entry of the config's ``sources`` (the names it answers for, the
kind and URL of its store, the cache policy and the timeouts every kind has); options that only
some kinds take stay in it unchecked until the kind's own ``Options`` model validates them (see
``relay.upstreams.kinds``). A ``ChannelRef`` names a channel as the BossDB URL does; a
``ChannelInfo`` describes it (dtype, type, and one ``Level`` per resolution, each with its
bounds and the cache's cuboid grid). The upstreams produce them, and the catalog, the metadata,
the cutout path and the API read them; this module imports nothing of theirs.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import UpstreamError
from .geometry import Box, Vec3

__all__ = [
    "BOSS_CUBOID",
    "NAME_PATTERN",
    "ChannelInfo",
    "ChannelRef",
    "ChannelType",
    "Level",
    "PositiveXYZ",
    "SourceSettings",
    "VoxelUnit",
    "checked_info",
    "default_cuboid",
    "is_name",
    "set_source_check",
    "show",
    "token_digest",
]

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    """Is ``value`` a collection, experiment or channel name a store may be asked for (what a
    client may send, and what an upstream's listing may hold)?"""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None

def show(name: str) -> str:
    """A client-chosen name, safe to echo in a message."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in name[:64])
    return shown + ("..." if len(name) > 64 else "")


_N = TypeVar("_N", int, float)


def _positive(value: tuple[_N, _N, _N]) -> tuple[_N, _N, _N]:
    if any(v <= 0 for v in value):
        raise ValueError("every component must be positive")
    return value


#: an x, y, z config value whose every component is positive (a size, a voxel size)
PositiveXYZ = Annotated[tuple[_N, _N, _N], AfterValidator(_positive)]

VoxelUnit = Literal["nanometers", "micrometers", "millimeters", "centimeters"]

#: Checks a source's kind and kind options against the registry of kinds: set by
#: ``relay.config`` (this module cannot import the registry, which imports it).
_source_check: Callable[[str, dict[str, Any]], None] | None = None


def set_source_check(check: Callable[[str, dict[str, Any]], None]) -> None:
    global _source_check
    _source_check = check


class SourceSettings(BaseModel):
    """One entry of ``sources``: which names it answers for, and the store behind them.

    The fields here are what every kind has. Anything else in the entry is an option of its
    kind (``axes`` for zarr, ``token`` for boss, ``uuid`` for dvid, …), validated by that kind's
    ``Options`` model; an unknown one is a config error naming the key.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    collection: str
    experiment: str = "*"
    channel: str = "*"
    kind: str
    url: str
    description: str = ""
    #: the cache's cuboid, a multiple of the store's chunk; default: near 512×512×16
    cuboid: PositiveXYZ[int] | None = None
    #: true: ``relay serve`` refuses to start (one line, exit 1) when this source does not
    #: answer at startup; false (the default): it starts anyway and reports errors per request
    required: bool = False
    #: false: every read goes upstream (nothing from this source is cached)
    cache: bool = True
    #: true: cutouts POSTed to this source's channels are written to its store (when its kind
    #: can take writes), and the relay's caches of what they touch are dropped; false (the
    #: default): a POST is 405 (docs/writes.md)
    writable: bool = False
    #: cached cuboids of this source are reused for at most this long (null: the data never
    #: changes, e.g. a BossDB channel or a locked DVID node)
    ttl_seconds: float | None = Field(None, gt=0)
    #: when an upstream read fails (5xx, timeout, unreachable), serve a cached cuboid that has
    #: expired (or is being refreshed) up to this many seconds ago, marked with a ``Warning:
    #: 110`` header; null (the default): such a failure is an error
    stale_if_error_seconds: float | None = Field(None, gt=0)
    #: how long upstream metadata is trusted before it is asked again
    metadata_ttl_seconds: float = Field(60.0, ge=0)
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    #: seconds for one upstream call, retries included (every kind: a store that does not
    #: answer in time is a 504 for this source only)
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    #: threads of this source's own for blocking store work: a hung store fills its own,
    #: never the others'
    max_threads: int = Field(4, ge=1, le=64)
    #: derived levels below the store's own (``relay.pyramid``, docs/services.md): "auto" adds
    #: levels until one fits a single cuboid in x and y; "none" serves the store's levels only
    downsample: Literal["auto", "none"] = "auto"
    #: at most this many levels in all, stored and derived (null: until one fits a cuboid)
    levels: int | None = Field(None, ge=1, le=20)
    #: how a derived voxel is made: "auto" is the mean for images, the most frequent label
    #: for annotations
    downsample_method: Literal["auto", "mean", "mode"] = "auto"
    #: the precomputed dialect's chunk encoding: "auto" is compressed_segmentation for uint64
    #: annotations (typically 10–50× smaller than raw) and raw for everything else
    precomputed_encoding: Literal["auto", "raw", "compressed_segmentation"] = "auto"
    #: the time sample a cutout without a time range reads, as BossDB's channel
    #: ``default_time_sample`` (null: the upstream's own for a boss source, else 0)
    default_time_sample: int | None = Field(None, ge=0)
    #: the level annotation meshes are made at (``relay.meshes``); null: the finest level
    #: whose grid has at most 512 cuboids
    mesh_level: int | None = Field(None, ge=0, le=20)

    @field_validator("collection", "experiment", "channel")
    @classmethod
    def _name(cls, value: str) -> str:
        if value != "*" and not _NAME.match(value):
            raise ValueError(f"{value!r} is not '*' or a name of letters, digits, '_' and '-'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _kind_and_options(cls, data: Any) -> Any:
        # on the entry as written (a source already made is not checked again: a test's own
        # registry may know kinds the global one does not)
        if _source_check is not None and isinstance(data, dict) and isinstance(
                data.get("kind"), str):
            options = {k: v for k, v in data.items() if k not in cls.model_fields}
            _source_check(data["kind"], options)
        return data

    def claims(self, *names: str) -> bool:
        """Do this source's patterns match ``names`` (collection[, experiment[, channel]])?"""
        patterns = (self.collection, self.experiment, self.channel)
        return all(p in ("*", n) for p, n in zip(patterns, names, strict=False))

    @property
    def options(self) -> dict[str, Any]:
        """The entry's kind options, as written (the kind's ``Options`` model checks them)."""
        return dict(self.model_extra or {})

#: BossDB's storage cuboid at every resolution (x, y, z).
BOSS_CUBOID = Vec3(512, 512, 16)

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
    #: the time sample a cutout without a time range reads (BossDB's ``default_time_sample``)
    default_time_sample: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON form (persisted with the disk tier: offline after a restart)."""
        return {
            "dtype": self.dtype.str, "type": self.type, "voxel_unit": self.voxel_unit,
            "num_time_samples": self.num_time_samples, "description": self.description,
            "default_time_sample": self.default_time_sample,
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
                   description=str(data["description"]),
                   default_time_sample=int(data.get("default_time_sample", 0)))


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
    if not 0 <= info.default_time_sample < info.num_time_samples:
        raise bad(f"default time sample {info.default_time_sample} of "
                  f"{info.num_time_samples}")
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
