"""``kind: zarr`` — zarr v2/v3 arrays and OME-Zarr multiscale groups, via zarr-python's async API.

- An OME-Zarr group (NGFF 0.4 ``multiscales`` in the attributes, 0.5 under ``ome``): each dataset
  is a resolution level, voxel sizes and offsets come from its coordinateTransformations, and
  the ``axes`` order is honoured (``t`` → time samples, ``c`` → ``channel_index``). An array
  whose own ``dimension_names`` contradict the group's axes is refused.
- A plain array: one level, voxel size from ``voxel_size:``. Its axis order is, first found:
  ``axes:`` in the source; the array's own zarr v3 ``dimension_names``; the OME axes of the
  group it is a dataset of (``url`` pointing at ``image.ome.zarr/0``); else by rank (zyx, czyx,
  tczyx). ``axes:`` that contradicts the array's own names is refused: a transposed volume is
  wrong voxels, not a detail.
- A store that does not hold what the source says (no such channel index, axes that do not fit,
  a group without multiscales) is a 502 that names the source and the fix.

Every zarr call runs on the source's own event loop and threads (``SourceWorker``): zarr reads
local files and decodes chunks in a thread pool, and an aiohttp session serves a store over
http; a hung store then fills only its own, and every call ends within the source's
``timeout``. Over http each body is capped (a chunk's worth) and the session has the source's
timeouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr.api.asynchronous as zarr_async
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup
from zarr.storage import FsspecStore, LocalStore

from ..errors import ConfigError, MethodNotAllowed, UpstreamError, UpstreamUnavailable
from ..geometry import Box
from ..model import ChannelInfo, ChannelRef, Level
from ._levels import FileOptions, file_info, make_level, overridden
from .base import Upstream
from .http import METADATA_MAX_BYTES, fsspec_client_kwargs

__all__ = ["ZarrUpstream"]

log = logging.getLogger(__name__)

_DEFAULT_AXES = {3: "zyx", 4: "czyx", 5: "tczyx"}
#: dimension names other tools write, mapped onto the relay's one-letter axes
_AXIS_NAMES = {"x": "x", "y": "y", "z": "z", "c": "c", "t": "t", "channel": "c",
               "channels": "c", "time": "t"}
#: the body cap over http before the arrays are known (zarr.json, .zattrs, consolidated
#: metadata), and the least it is afterwards
_METADATA_BODY = 8 * METADATA_MAX_BYTES


@dataclass(frozen=True, slots=True)
class _Opened:
    info: ChannelInfo
    arrays: tuple[AsyncArray[Any], ...]
    axes: str  # the arrays' axis names, in their own order


def _axes_from_names(names: Any) -> str | None:
    """One letter per dimension from zarr v3 ``dimension_names`` (or OME axis names), or None
    when the array does not name all of them."""
    if not names or not all(isinstance(n, str) for n in names):
        return None
    letters = [_AXIS_NAMES.get(n.strip().lower(), "?") for n in names]
    return "".join(letters)


def _parent(url: str) -> tuple[str, str] | None:
    """The URL of the group holding ``url``'s last path element, and that element."""
    head, _, last = url.rstrip("/").rpartition("/")
    if not last or not head or head.endswith(":/") or head.endswith(":"):
        return None
    return head, last


class ZarrOptions(FileOptions):
    #: axis names of a plain array without names of its own, in its order, e.g. zyx or czyx
    axes: str | None = None


class ZarrUpstream(Upstream):
    kind = "zarr"
    writes = True
    Options = ZarrOptions
    options: ZarrOptions

    _store: LocalStore | FsspecStore | None = None
    _bodies: Any = None  # over http: the response class whose cap is raised once open

    def _make_store(self, url: str, main: bool = True) -> LocalStore | FsspecStore:
        parsed = urlparse(url)
        # a store is opened for writing only when its source takes writes
        read_only = not (self.source.writable and main)
        if parsed.scheme in ("", "file"):
            return LocalStore(parsed.path if parsed.scheme else url, read_only=read_only)
        if parsed.scheme in ("http", "https"):
            read_only = True  # HTTP has no write verb for zarr: ``write`` says so
        options: dict[str, Any] = {"skip_instance_cache": True}
        if parsed.scheme in ("http", "https"):
            client = fsspec_client_kwargs(self.http_settings, _METADATA_BODY)
            if main:
                self._bodies = client["response_class"]
            options["client_kwargs"] = client
        # fsspec caches filesystem instances process-wide, and an HTTP filesystem holds an
        # aiohttp session bound to the event loop that made it: each upstream gets its own,
        # made on the source's own loop.
        return FsspecStore.from_url(url, read_only=read_only, storage_options=options)

    async def _open(self) -> _Opened:
        return await self.open_once(lambda: self.worker.run(self._open_store))

    async def _open_store(self) -> _Opened:
        """On the source's loop: open the array or group at the source's URL."""
        url = self.source.url
        self._store = self._make_store(url)
        try:
            node = await zarr_async.open(store=self._store,
                                         mode="r" if self._store.read_only else "r+")
        except FileNotFoundError as exc:
            raise UpstreamUnavailable(f"{self.where}: no zarr array or group there (a store "
                                      "not mounted, or a wrong url:)") from exc
        except Exception as exc:
            raise UpstreamError(f"{self.where}: cannot open it as zarr: {exc}") from exc
        if isinstance(node, AsyncGroup):
            opened = await self._open_multiscale(node)
        else:
            opened = self._open_plain(node, await self._parent_axes(url))
        if self._bodies is not None:  # a body is at most a chunk (or shard) and its framing
            largest = max(int(np.prod(a.shards or a.chunks)) * a.dtype.itemsize
                          for a in opened.arrays)
            self._bodies.max_bytes = max(_METADATA_BODY, 2 * largest + (1 << 20))
        return opened

    async def _parent_axes(self, url: str) -> str | None:
        """The OME axes of the group ``url`` is a dataset of, if it is one."""
        parent = _parent(url)
        if parent is None or self.options.axes:
            return None
        group_url, path = parent
        store = self._make_store(group_url, main=False)
        try:
            group = await zarr_async.open_group(store=store, mode="r")
            attrs = dict(group.attrs)
        except Exception:  # no group above, or not readable: nothing to learn there
            return None
        finally:
            await _close_session(store)
        multiscales = _multiscales(attrs)
        if not multiscales:
            return None
        ms = multiscales[0]
        if not any(d.get("path") == path for d in ms.get("datasets", [])):
            return None
        return _axes_from_names([a["name"] if isinstance(a, dict) else a
                                 for a in ms.get("axes") or []])

    def _open_plain(self, array: AsyncArray[Any], ome_axes: str | None) -> _Opened:
        src = self.options
        own = _axes_from_names(getattr(array.metadata, "dimension_names", None))
        if src.axes and own and own != src.axes:
            raise ConfigError(
                f"{self.where}: the array names its axes {own!r} but the source says axes: "
                f"{src.axes!r}; remove axes: (the array's own names are used) or correct it")
        axes = src.axes or own or ome_axes or _DEFAULT_AXES.get(array.ndim, "")
        if not (src.axes or own or ome_axes):
            log.info("%s: the array does not name its axes; reading it as %r (set axes: if "
                     "that is wrong)", self.where, axes)
        self._check_axes(axes, array.ndim)
        voxel = src.voxel_size or (1.0, 1.0, 1.0)
        level = self._level(array, axes, voxel, (0.0, 0.0, 0.0))
        return self._finish((array,), axes, (level,), None)

    async def _open_multiscale(self, group: AsyncGroup) -> _Opened:
        multiscales = _multiscales(dict(group.attrs))
        if not multiscales:
            raise ConfigError(f"{self.where}: a zarr group without OME-Zarr 'multiscales' "
                              "metadata; point url: at an array, or at an OME-Zarr image")
        ms = multiscales[0]
        axes_meta = ms.get("axes") or []
        names = _axes_from_names([a["name"] if isinstance(a, dict) else a for a in axes_meta])
        units = {
            a["name"]: a.get("unit") for a in axes_meta if isinstance(a, dict)
        }
        arrays: list[AsyncArray[Any]] = []
        levels: list[Level] = []
        base_voxel: tuple[float, ...] | None = None
        axes = ""
        for dataset in ms.get("datasets") or []:
            try:
                node = await group.getitem(dataset["path"])
            except (KeyError, FileNotFoundError) as exc:
                raise ConfigError(f"{self.where}: the multiscales list dataset "
                                  f"{dataset.get('path')!r}, which is not there") from exc
            if not isinstance(node, AsyncArray):
                raise ConfigError(f"{self.where}: dataset {dataset['path']!r} is not an array")
            own = _axes_from_names(getattr(node.metadata, "dimension_names", None))
            if names and own and own != names:
                raise ConfigError(f"{self.where}: dataset {dataset['path']!r} names its axes "
                                  f"{own!r} but the multiscales say {names!r}")
            axes = self.options.axes or names or own or _DEFAULT_AXES.get(node.ndim, "")
            self._check_axes(axes, node.ndim)
            outer_scale, _ = _transforms(ms.get("coordinateTransformations"), len(axes))
            scale, translation = _transforms(dataset.get("coordinateTransformations"), node.ndim)
            scale = [s * o for s, o in zip(scale, outer_scale, strict=True)]
            voxel = tuple(scale[axes.index(a)] for a in "xyz")
            offset = tuple(translation[axes.index(a)] for a in "xyz")
            if base_voxel is None:
                base_voxel = voxel
            voxel = overridden(voxel, base_voxel, self.options.voxel_size)
            arrays.append(node)
            levels.append(self._level(node, axes, voxel, offset))
        if not arrays:
            raise ConfigError(f"{self.where}: the multiscales list no datasets")
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
        if (len(axes) != ndim or set("xyz") - set(axes) or not set(axes) <= set("tczyx")
                or len(set(axes)) != len(axes)):
            raise ConfigError(
                f"{self.where}: cannot map axes {axes!r} of a {ndim}-D array onto x, y, z; "
                "set axes: in the source to one letter per dimension (e.g. zyx or czyx)"
            )

    def _finish(
        self,
        arrays: tuple[AsyncArray[Any], ...],
        axes: str,
        levels: tuple[Level, ...],
        unit: str | None,
    ) -> _Opened:
        first = arrays[0]
        info = file_info(
            self.where, self.options, self.source.description, dtype=first.dtype,
            channels=first.shape[axes.index("c")] if "c" in axes else 1, levels=levels,
            unit=unit, time_samples=first.shape[axes.index("t")] if "t" in axes else 1)
        return _Opened(info=info, arrays=arrays, axes=axes)

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        return (await self._open()).info

    async def aclose(self) -> None:
        if "worker" in self.__dict__:
            await self.worker.aclose(last=lambda: _close_session(self._store))
        await super().aclose()

    def _selection(self, opened: _Opened, level: int, box: Box, t: int) -> tuple[int | slice,
                                                                                 ...]:
        """``box`` at time ``t`` as an index of the level's array, in the array's axis order."""
        local = Box(box.start - opened.info.levels[level].origin,
                    box.stop - opened.info.levels[level].origin)
        z, y, x = local.zyx_slices()
        picks: dict[str, int | slice] = {"t": t, "c": self.options.channel_index, "z": z, "y": y,
                                          "x": x}
        return tuple(picks[a] for a in opened.axes)

    async def check_write(self, ref: ChannelRef, level: int) -> None:
        opened = await self._open()
        self.check_level(level, len(opened.arrays))
        store = self._store
        if store is None or store.read_only:
            raise MethodNotAllowed(f"{self.where} is read over HTTP, which has no way to write "
                                   "zarr; point url: at a local path, s3:// or gs:// to write")

    async def write(self, ref: ChannelRef, level: int, box: Box, data: np.ndarray, t: int = 0,
                    token: str | None = None) -> None:
        await self.check_write(ref, level)
        opened = await self._open()
        selection = self._selection(opened, level, box, t)
        spatial = [a for a in opened.axes if a in "zyx"]
        value = data.transpose(["zyx".index(a) for a in spatial])
        array = opened.arrays[level]

        async def put() -> None:
            # zarr reads and rewrites the chunks the box covers only in part; each chunk file
            # is replaced whole (a local store writes a temporary file and renames it)
            await array.setitem(selection, value)

        await self.guarded(lambda: self.worker.run(put), f"write failed for {ref}")

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        opened = await self._open()
        self.check_level(level, len(opened.arrays))
        selection = self._selection(opened, level, box, t)
        array = opened.arrays[level]
        store = self._store

        async def get() -> Any:
            # zarr reads a missing chunk as fill: a local store that has gone away (a share
            # unmounted) would read as zeros. Its array's metadata file says it is still there.
            if isinstance(store, LocalStore) and not await store.exists(_metadata_key(array)):
                raise UpstreamUnavailable(f"{self.where}: the store is gone (unmounted?)")
            return await array.getitem(selection)

        got = await self.guarded(lambda: self.worker.run(get), f"read failed for {ref}")
        spatial = [a for a in opened.axes if a in "zyx"]
        data = np.asarray(got).transpose([spatial.index(a) for a in "zyx"])
        return np.ascontiguousarray(data, dtype=opened.info.dtype)


def _metadata_key(array: AsyncArray[Any]) -> str:
    """The store key of an array's own metadata document."""
    name = "zarr.json" if array.metadata.zarr_format == 3 else ".zarray"
    return f"{array.path}/{name}" if array.path else name


async def _close_session(store: LocalStore | FsspecStore | None) -> None:
    """An HTTP store holds an aiohttp session: closed on the loop that opened it."""
    session = getattr(getattr(store, "fs", None), "_session", None)
    if session is not None:
        await session.close()


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """NGFF 0.4 ``multiscales`` in the attributes, or 0.5's under ``ome``."""
    found = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return found if isinstance(found, list) and found else None


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
