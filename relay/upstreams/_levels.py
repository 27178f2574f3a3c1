"""Helpers the file-format upstreams share: BossDB datatypes and level construction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from ..codecs import DTYPES
from ..errors import ConfigError
from ..geometry import Box, Vec3
from ..model import (
    ChannelInfo,
    ChannelType,
    Level,
    PositiveXYZ,
    VoxelUnit,
    checked_info,
    default_cuboid,
)
from .base import NoOptions

__all__ = ["FileOptions", "boss_dtype", "channel_type", "file_info", "make_level", "overridden",
           "voxel_unit"]

class FileOptions(NoOptions):
    """Options of the kinds that read a file format (zarr, precomputed)."""

    #: x, y, z; overrides the store's (its level ratios are kept)
    voxel_size: PositiveXYZ[float] | None = None
    voxel_unit: VoxelUnit | None = None
    #: default: uint64 → annotation, else image
    type: ChannelType | None = None
    #: for multi-channel stores: which channel of the store this source serves
    channel_index: int = Field(0, ge=0)


_UNITS = {
    "nanometer": "nanometers",
    "nm": "nanometers",
    "micrometer": "micrometers",
    "micron": "micrometers",
    "um": "micrometers",
    "millimeter": "millimeters",
    "mm": "millimeters",
    "centimeter": "centimeters",
    "cm": "centimeters",
}


def boss_dtype(dtype: np.dtype[np.generic], where: str) -> np.dtype[np.generic]:
    """The little-endian BossDB datatype for a store's dtype, or a ConfigError."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(
            f"{where}: datatype {name} has no BossDB equivalent (uint8, uint16, uint64)"
        )
    return DTYPES[name]


def channel_type(dtype: np.dtype[np.generic], configured: ChannelType | None) -> ChannelType:
    if configured is not None:
        return configured
    return "annotation" if dtype == np.uint64 else "image"


def voxel_unit(unit: str | None, configured: str | None) -> str:
    if configured is not None:
        return configured
    if not unit:
        return "nanometers"
    unit = unit.lower()
    return _UNITS.get(unit, unit if unit in _UNITS.values() else "nanometers")


def overridden(voxel: Sequence[float], base: Sequence[float],
               configured: Sequence[float] | None) -> tuple[float, ...]:
    """A level's voxel size with the source's ``voxel_size`` in place of the store's level-0
    one: the store's ratios between levels are kept."""
    if configured is None:
        return tuple(voxel)
    return tuple(v / b * c for v, b, c in zip(voxel, base, configured, strict=True))


def make_level(
    voxel_size: Sequence[float],
    start: Sequence[int],
    shape_xyz: Sequence[int],
    chunk_xyz: Sequence[int],
    cuboid: tuple[int, int, int] | None,
) -> Level:
    """A level whose cuboid grid starts at the store's chunk origin (``start``); every vector
    is x, y, z (stores hand them over as lists or tuples of any numeric type)."""
    origin = Vec3(*(int(v) for v in start))
    chunk = Vec3(*(int(v) for v in chunk_xyz))
    grid = Vec3(*cuboid) if cuboid is not None else default_cuboid(chunk)
    return Level(
        voxel_size=(float(voxel_size[0]), float(voxel_size[1]), float(voxel_size[2])),
        bounds=Box(origin, origin + Vec3(*(int(v) for v in shape_xyz))),
        cuboid=grid,
        origin=origin,
    )


def file_info(where: str, options: FileOptions, description: str, *,
              dtype: np.dtype[np.generic], channels: int, levels: Sequence[Level],
              unit: str | None, store_type: ChannelType | None = None,
              time_samples: int = 1) -> ChannelInfo:
    """A file-format store's channel as the relay serves it: its dtype as BossDB's, the
    configured one of its ``channels``, the source's type and unit in place of the store's
    (``store_type``, ``unit``), checked."""
    boss = boss_dtype(dtype, where)
    if not 0 <= options.channel_index < channels:
        raise ConfigError(f"{where}: channel_index {options.channel_index} is out of range: the "
                          f"store has {channels} channel(s), 0 to {channels - 1}")
    info = ChannelInfo(
        dtype=boss,
        type=channel_type(boss, options.type or store_type),
        levels=tuple(levels),
        voxel_unit=voxel_unit(unit, options.voxel_unit),
        num_time_samples=time_samples,
        description=description,
    )
    return checked_info(info, where)
