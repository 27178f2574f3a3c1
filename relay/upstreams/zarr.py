"""``kind: zarr`` — zarr v2/v3 arrays and OME-Zarr multiscale groups, via zarr-python's async API.

- An OME-Zarr group (NGFF 0.4 ``multiscales`` in the attributes, 0.5 under ``ome``): each dataset
  is a resolution level, voxel sizes and offsets come from its coordinateTransformations, and
  the ``axes`` order is honoured (``t`` → time samples, ``c`` → ``channel_index``).
- A plain array: one level; axes from ``axes:`` in the source (default by rank: zyx, czyx,
  tczyx), voxel size from ``voxel_size:``.
The sync zarr API would block the event loop, so only the async API is used here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr.api.asynchronous as zarr_async
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup
from zarr.storage import FsspecStore, LocalStore

from ..errors import ConfigError, ResourceNotFound, UpstreamError
from ..geometry import Box
from ._levels import boss_dtype, channel_type, make_level, voxel_unit
from .base import ChannelInfo, ChannelRef, Level, Upstream

__all__ = ["ZarrUpstream"]

_DEFAULT_AXES = {3: "zyx", 4: "czyx", 5: "tczyx"}


@dataclass(frozen=True, slots=True)
class _Opened:
    info: ChannelInfo
    arrays: tuple[AsyncArray[Any], ...]
    axes: str  # the arrays' axis names, in their own order


def _store(url: str) -> LocalStore | FsspecStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else url, read_only=True)
    # fsspec caches filesystem instances process-wide, and an HTTP filesystem holds an aiohttp
    # session bound to the event loop that made it: each upstream gets its own.
    return FsspecStore.from_url(url, read_only=True,
                                storage_options={"skip_instance_cache": True})


class ZarrUpstream(Upstream):
    kind = "zarr"

    _opened: _Opened | None = None
    _lock: asyncio.Lock | None = None
    _store: LocalStore | FsspecStore | None = None

    async def _open(self) -> _Opened:
        if self._opened is not None:
            return self._opened
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._opened is None:
                self._opened = await self._open_store()
        return self._opened

    async def _open_store(self) -> _Opened:
        url = self.source.url
        self._store = _store(url)
        try:
            node = await zarr_async.open(store=self._store, mode="r")
        except FileNotFoundError as exc:
            raise UpstreamError(f"no zarr array or group at {url}") from exc
        except Exception as exc:
            raise UpstreamError(f"cannot open zarr store {url}: {exc}") from exc
        if isinstance(node, AsyncGroup):
            return await self._open_multiscale(node)
        return self._open_plain(node)

    def _open_plain(self, array: AsyncArray[Any]) -> _Opened:
        src = self.source
        axes = src.axes or _DEFAULT_AXES.get(array.ndim, "")
        self._check_axes(axes, array.ndim)
        voxel = src.voxel_size or (1.0, 1.0, 1.0)
        level = self._level(array, axes, voxel, (0.0, 0.0, 0.0))
        return self._finish((array,), axes, (level,), None)

    async def _open_multiscale(self, group: AsyncGroup) -> _Opened:
        url = self.source.url
        attrs = dict(group.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise ConfigError(f"{url}: a zarr group without OME-Zarr 'multiscales' metadata")
        ms = multiscales[0]
        axes_meta = ms.get("axes") or []
        names = "".join(a["name"] if isinstance(a, dict) else str(a) for a in axes_meta)
        units = {
            a["name"]: a.get("unit") for a in axes_meta if isinstance(a, dict)
        }
        outer_scale, _ = _transforms(ms.get("coordinateTransformations"), len(names))
        arrays: list[AsyncArray[Any]] = []
        levels: list[Level] = []
        base_voxel: tuple[float, ...] | None = None
        for dataset in ms["datasets"]:
            node = await group.getitem(dataset["path"])
            if not isinstance(node, AsyncArray):
                raise ConfigError(f"{url}: dataset {dataset['path']!r} is not an array")
            axes = names or _DEFAULT_AXES.get(node.ndim, "")
            self._check_axes(axes, node.ndim)
            scale, translation = _transforms(dataset.get("coordinateTransformations"), node.ndim)
            scale = [s * o for s, o in zip(scale, outer_scale, strict=True)]
            voxel = tuple(scale[axes.index(a)] for a in "xyz")
            offset = tuple(translation[axes.index(a)] for a in "xyz")
            if base_voxel is None:
                base_voxel = voxel
            if self.source.voxel_size is not None:
                # configured voxel size overrides the store's; keep the store's level ratios
                voxel = tuple(
                    v / b * c
                    for v, b, c in zip(voxel, base_voxel, self.source.voxel_size, strict=True)
                )
            arrays.append(node)
            levels.append(self._level(node, axes, voxel, offset))
        return self._finish(tuple(arrays), axes, tuple(levels), units.get("x"))

    def _level(
        self,
        array: AsyncArray[Any],
        axes: str,
        voxel: tuple[float, ...],
        offset: tuple[float, ...],
    ) -> Level:
        shape = tuple(array.shape[axes.index(a)] for a in "xyz")
        chunk = tuple(array.chunks[axes.index(a)] for a in "xyz")
        start = tuple(round(o / v) for o, v in zip(offset, voxel, strict=True))
        return make_level(voxel, start, shape, chunk, self.source.cuboid)

    def _check_axes(self, axes: str, ndim: int) -> None:
        if len(axes) != ndim or set("xyz") - set(axes) or not set(axes) <= set("tczyx"):
            raise ConfigError(
                f"{self.source.url}: cannot map axes {axes!r} of a {ndim}-D array onto x, y, z; "
                "set 'axes:' in the source (e.g. zyx or czyx)"
            )

    def _finish(
        self,
        arrays: tuple[AsyncArray[Any], ...],
        axes: str,
        levels: tuple[Level, ...],
        unit: str | None,
    ) -> _Opened:
        src = self.source
        first = arrays[0]
        dtype = boss_dtype(first.dtype, src.url)
        if "c" in axes and src.channel_index >= first.shape[axes.index("c")]:
            raise ConfigError(f"{src.url}: channel_index {src.channel_index} out of range")
        info = ChannelInfo(
            dtype=dtype,
            type=channel_type(dtype, src.type),
            levels=levels,
            voxel_unit=voxel_unit(unit, src.voxel_unit),
            num_time_samples=first.shape[axes.index("t")] if "t" in axes else 1,
            description=src.description,
        )
        return _Opened(info=info, arrays=arrays, axes=axes)

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        return (await self._open()).info

    async def aclose(self) -> None:
        # an HTTP store holds an aiohttp session; close it on the loop that opened it
        session = getattr(getattr(self._store, "fs", None), "_session", None)
        if session is not None:
            await session.close()
        await super().aclose()

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        opened = await self._open()
        if not 0 <= level < len(opened.arrays):
            raise ResourceNotFound(f"resolution {level} not found")
        local = Box(box.start - opened.info.levels[level].origin,
                    box.stop - opened.info.levels[level].origin)
        z, y, x = local.zyx_slices()
        picks: dict[str, int | slice] = {"t": t, "c": self.source.channel_index, "z": z, "y": y,
                                          "x": x}
        selection = tuple(picks[a] for a in opened.axes)
        try:
            got = await opened.arrays[level].getitem(selection)
        except Exception as exc:
            raise UpstreamError(f"zarr read failed for {ref}: {exc}") from exc
        spatial = [a for a in opened.axes if a in "zyx"]
        data = np.asarray(got).transpose([spatial.index(a) for a in "zyx"])
        return np.ascontiguousarray(data, dtype=opened.info.dtype)


def _transforms(
    transforms: list[dict[str, Any]] | None, ndim: int
) -> tuple[list[float], list[float]]:
    scale = [1.0] * ndim
    translation = [0.0] * ndim
    for transform in transforms or []:
        if transform.get("type") == "scale" and "scale" in transform:
            scale = [float(s) for s in transform["scale"]]
        elif transform.get("type") == "translation" and "translation" in transform:
            translation = [float(s) for s in transform["translation"]]
    return scale, translation
