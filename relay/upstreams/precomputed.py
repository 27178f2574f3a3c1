"""``kind: precomputed`` — neuroglancer precomputed volumes, read with cloud-volume.

Every mip in ``info`` is a resolution level (voxel size and offset from its scale). cloud-volume
is blocking, so every call runs in a worker thread; its own disk cache is off because the relay
has a bounded one in front. Missing chunk files read as zeros (``fill_missing``), which is what
precomputed writers mean when they skip all-black chunks; ``fill_missing: false`` makes it an
error instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from cloudvolume import Bbox, CloudVolume

from ..errors import ResourceNotFound, UpstreamError
from ..geometry import Box
from ._levels import boss_dtype, channel_type, make_level, voxel_unit
from .base import ChannelInfo, ChannelRef, Upstream

__all__ = ["PrecomputedUpstream"]


class PrecomputedUpstream(Upstream):
    kind = "precomputed"

    _volumes: tuple[Any, ...] = ()
    _info: ChannelInfo | None = None
    _lock: asyncio.Lock | None = None

    async def _open(self) -> tuple[tuple[Any, ...], ChannelInfo]:
        if self._info is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._info is None:
                    self._volumes, self._info = await asyncio.to_thread(self._open_blocking)
        assert self._info is not None
        return self._volumes, self._info

    def _open_blocking(self) -> tuple[tuple[Any, ...], ChannelInfo]:
        src = self.source

        def open_mip(mip: int, info: Any = None) -> Any:
            # One instance per mip: download(mip=m) on a mip-0 instance checks the box
            # against mip 0's bounds. The info fetched once is handed to the others.
            return CloudVolume(src.url, mip=mip, info=info, cache=False, progress=False,
                               fill_missing=src.fill_missing, bounded=True, parallel=1)

        try:
            volume = open_mip(0)
            volumes = (volume,) + tuple(
                open_mip(m, volume.info) for m in range(1, len(volume.info["scales"]))
            )
        except Exception as exc:
            raise UpstreamError(f"cannot open precomputed volume {src.url}: {exc}") from exc
        dtype = boss_dtype(volume.dtype, src.url)
        levels = []
        base = [float(v) for v in volume.info["scales"][0]["resolution"]]
        for scale in volume.info["scales"]:
            voxel = [float(v) for v in scale["resolution"]]
            if src.voxel_size is not None:
                voxel = [v / b * c for v, b, c in zip(voxel, base, src.voxel_size, strict=True)]
            levels.append(
                make_level(
                    voxel,
                    scale["voxel_offset"],
                    scale["size"],
                    scale["chunk_sizes"][0],
                    src.cuboid,
                )
            )
        info = ChannelInfo(
            dtype=dtype,
            type=channel_type(dtype, src.type or _boss_type(volume.layer_type)),
            levels=tuple(levels),
            voxel_unit=voxel_unit("nanometer", src.voxel_unit),
            description=src.description,
        )
        return volumes, info

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        return (await self._open())[1]

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        volumes, info = await self._open()
        if not 0 <= level < len(info.levels):
            raise ResourceNotFound(f"resolution {level} not found")
        channel = self.source.channel_index

        def download() -> np.ndarray:
            cutout = volumes[level].download(Bbox(tuple(box.start), tuple(box.stop)))
            return np.ascontiguousarray(np.asarray(cutout)[..., channel].transpose(2, 1, 0))

        try:
            data = await asyncio.to_thread(download)
        except Exception as exc:
            raise UpstreamError(f"precomputed read failed for {ref}: {exc}") from exc
        return data.astype(info.dtype, copy=False)


def _boss_type(layer_type: str) -> Any:
    return "annotation" if layer_type == "segmentation" else None
