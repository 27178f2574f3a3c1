"""``kind: precomputed`` — neuroglancer precomputed volumes, read with cloud-volume.

Every mip in ``info`` is a resolution level (voxel size and offset from its scale). The store
must be precomputed: its URL is opened as ``precomputed://…``, so a missing ``info`` is a clear
error rather than cloud-volume's silent fallback to reading the path as zarr (which served
wrong voxels or zeros). Missing chunk files read as zeros (``fill_missing``), which is what
precomputed writers mean when they skip all-black chunks; ``fill_missing: false`` makes it an
error instead. cloud-volume's own disk cache is off: the relay has a bounded one in front.

cloud-volume blocks, so every call runs on the source's own threads (``SourceWorker``) and ends
within the source's ``timeout``: a hung store stalls its own requests, not the others'. Over
http(s) cloud-volume uses cloud-files' one ``requests`` adapter, which has no timeout and reads
any body whole; it is replaced, process-wide, by one that has both (``_BoundedAdapter``), so a
hung server frees its thread after the read timeout and an endless body is cut off.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from cloudfiles import CloudFiles
from cloudfiles.interfaces import EXT_TEST_SEQUENCE, HttpInterface
from cloudvolume import Bbox, CloudVolume
from cloudvolume.exceptions import InfoUnavailableError

from ..errors import ConfigError, MethodNotAllowed, UpstreamError, UpstreamUnavailable
from ..geometry import Box, Vec3
from ..model import ChannelInfo, ChannelRef
from ._levels import FileOptions, file_info, make_level, overridden
from .base import Upstream, UpstreamContext

__all__ = ["PrecomputedUpstream"]

_PREFIX = "precomputed://"
#: how written chunks are compressed (cloud-volume's own default for raw chunks), and the
#: name suffix that gives them
_WRITTEN, _WRITTEN_EXT = "gzip", ".gz"
#: chunk encodings a write reads back exactly
_LOSSLESS = frozenset({"raw", "compressed_segmentation", "png", "compresso", "crackle",
                       "fpzip"})


class _BoundedAdapter(requests.adapters.HTTPAdapter):
    """cloud-files' HTTP adapter with a default timeout (connect, read) and a cap on bodies
    (a precomputed chunk or info file is megabytes; a shard is read by ranges)."""

    timeout: tuple[float, float] = (5.0, 30.0)
    max_bytes = 256 * 2**20

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: float | tuple[float | None, float | None] | None = None,
             verify: bool | str = True, cert: str | tuple[str, str] | None = None,
             proxies: dict[str, str] | None = None) -> requests.Response:
        response = super().send(request, stream=stream, timeout=timeout or self.timeout,
                                verify=verify, cert=cert, proxies=proxies)
        length = response.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise OSError(f"{request.url} announced {length} bytes, past {self.max_bytes}")
        raw, cap = response.raw, self.max_bytes
        read = raw.read

        def bounded_read(amt: int | None = None, *args: Any, **kw: Any) -> bytes:
            if amt is not None and amt <= cap:
                return bytes(read(amt, *args, **kw))
            data = bytes(read(cap + 1, *args, **kw))  # urllib3 reads up to amt, or to the end
            if len(data) > cap:
                response.close()
                raise OSError(f"{request.url} sent more than {cap} bytes")
            return data

        raw.read = bounded_read
        return response

    @classmethod
    def widen(cls, connect: float, read: float) -> None:
        """Adopt a source's timeouts where they are longer (the adapter is shared)."""
        cls.timeout = (max(cls.timeout[0], connect), max(cls.timeout[1], read))


HttpInterface.adaptor = _BoundedAdapter(pool_maxsize=64)


class PrecomputedOptions(FileOptions):
    #: a missing chunk file reads as zeros (sparse volumes skip all-black chunks); false makes
    #: it an error, so a misconfigured URL cannot pass for black voxels
    fill_missing: bool = True


class PrecomputedUpstream(Upstream):
    kind = "precomputed"
    writes = True
    Options = PrecomputedOptions
    options: PrecomputedOptions


    def __init__(self, source: Any, context: UpstreamContext | None = None) -> None:
        super().__init__(source, context)
        _BoundedAdapter.widen(source.connect_timeout, source.read_timeout)
        url = source.url
        self._cloudpath = url if url.startswith(_PREFIX) else _PREFIX + url
        parts = urlsplit(url.removeprefix(_PREFIX))
        self._local_info = (os.path.join(parts.path, "info")
                            if parts.scheme in ("", "file") else None)

    async def _open(self) -> tuple[tuple[Any, ...], ChannelInfo]:
        return await self.open_once(lambda: self.worker.call(self._open_blocking))

    def _open_blocking(self) -> tuple[tuple[Any, ...], ChannelInfo]:
        src = self.options

        def open_mip(mip: int, info: Any = None) -> Any:
            # One instance per mip: download(mip=m) on a mip-0 instance checks the box
            # against mip 0's bounds. The info fetched once is handed to the others. A write
            # of a box that covers chunks in part reads and rewrites them whole
            # (non_aligned_writes), gzip-compressed as cloud-volume writes raw chunks.
            return CloudVolume(self._cloudpath, mip=mip, info=info, cache=False,
                               progress=False, fill_missing=src.fill_missing, bounded=True,
                               parallel=1, non_aligned_writes=True, compress=_WRITTEN)

        try:
            volume = open_mip(0)
            volumes = (volume,) + tuple(
                open_mip(m, volume.info) for m in range(1, len(volume.info["scales"]))
            )
        except InfoUnavailableError as exc:
            raise ConfigError(
                f"{self.where}: no precomputed 'info' file there; if the store is zarr or "
                "OME-Zarr, use kind: zarr") from exc
        except Exception as exc:
            raise UpstreamError(f"{self.where}: cannot open it as precomputed: {exc}") from exc
        levels = []
        base = [float(v) for v in volume.info["scales"][0]["resolution"]]
        for scale in volume.info["scales"]:
            voxel = [float(v) for v in scale["resolution"]]
            voxel = list(overridden(voxel, base, src.voxel_size))
            levels.append(
                make_level(
                    voxel,
                    scale["voxel_offset"],
                    scale["size"],
                    scale["chunk_sizes"][0],
                    self.source.cuboid,
                )
            )
        return volumes, file_info(
            self.where, src, self.source.description, dtype=volume.dtype,
            channels=volume.num_channels, levels=levels, unit="nanometer",
            store_type=_boss_type(volume.layer_type))

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        return (await self._open())[1]

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        volumes, info = await self._open()
        self.check_level(level, len(info.levels))
        channel = self.options.channel_index

        def download() -> np.ndarray:
            # missing chunks read as zeros (fill_missing): a local volume that has gone away
            # (a share unmounted) would read as zeros. Its info file says it is still there.
            if self._local_info is not None and not os.path.isfile(self._local_info):
                raise UpstreamUnavailable(f"{self.where}: the volume is gone (unmounted?)")
            cutout = volumes[level].download(Bbox(tuple(box.start), tuple(box.stop)))
            return np.ascontiguousarray(np.asarray(cutout)[..., channel].transpose(2, 1, 0))

        data = await self.guarded(lambda: self.worker.call(download), f"read failed for {ref}")
        return data.astype(info.dtype, copy=False)

    async def check_write(self, ref: ChannelRef, level: int) -> None:
        volumes, info = await self._open()
        self.check_level(level, len(info.levels))
        if urlsplit(self._cloudpath.removeprefix(_PREFIX)).scheme in ("http", "https"):
            raise MethodNotAllowed(f"{self.where} is read over HTTP, which has no way to write "
                                   "chunks; point url: at a local path, gs:// or s3:// to write")
        meta = volumes[level].meta
        encoding = meta.encoding(level)
        if encoding not in _LOSSLESS:
            raise MethodNotAllowed(f"{self.where}: level {level} is {encoding}-encoded, which "
                                   "is lossy: a write would not read back as written")
        if meta.sharding(level):
            raise MethodNotAllowed(f"{self.where}: level {level} is sharded; cutout writes go "
                                   "to unsharded precomputed volumes only")

    async def write(self, ref: ChannelRef, level: int, box: Box, data: np.ndarray, t: int = 0,
                    token: str | None = None) -> None:
        await self.check_write(ref, level)
        volumes, info = await self._open()
        volume = volumes[level]
        channel = self.options.channel_index
        bbox = Bbox(tuple(box.start), tuple(box.stop))
        xyz = data.transpose(2, 1, 0)

        def upload() -> None:
            if volume.num_channels == 1:
                volume[bbox] = xyz[..., np.newaxis]
            else:  # the other channels of the box are written back as they are
                held = np.array(volume.download(bbox))
                held[..., channel] = xyz
                volume[bbox] = held
            if self._local_info is not None:
                _drop_other_variants(os.path.dirname(self._local_info), volume, level, box,
                                     info.levels[level].bounds)

        await self.guarded(lambda: self.worker.call(upload), f"write failed for {ref}")

    async def mesh_directory(self, ref: ChannelRef) -> str | None:
        volumes, _ = await self._open()
        mesh = volumes[0].info.get("mesh")
        # a string names the directory (the format's own); anything else is no mesh here
        return mesh if isinstance(mesh, str) and mesh and ".." not in mesh else None

    async def mesh_file(self, ref: ChannelRef, name: str) -> bytes | None:
        directory = await self.mesh_directory(ref)
        if directory is None or "/" in name or ".." in name:
            return None
        volumes, _ = await self._open()

        def get() -> bytes | None:
            # cloud-files undoes the gzip that mesh writers (igneous) apply to fragments
            body = CloudFiles(volumes[0].meta.cloudpath).get(f"{directory}/{name}")
            return None if body is None else bytes(body)

        return await self.guarded(lambda: self.worker.call(get), f"mesh file {name} failed")


def _drop_other_variants(directory: str, volume: Any, level: int, box: Box, bounds: Box) -> None:
    """Remove the chunk files a write replaced under another name. On a local disk cloud-files
    keeps a chunk's compression in its name (``c``, ``c.gz``, ``c.br``…) and reads whichever
    variant it found last, so an uncompressed file left beside the new ``.gz`` could be read
    instead of it. (In a bucket, compression is the object's metadata: one name only.)"""
    chunk = Vec3(*(int(c) for c in volume.meta.chunk_size(level)))
    offset = Vec3(*(int(o) for o in volume.meta.voxel_offset(level)))
    ranges = [range(offset[a] + (box.start[a] - offset[a]) // chunk[a] * chunk[a], box.stop[a],
                    chunk[a]) for a in range(3)]
    for z in ranges[2]:
        for y in ranges[1]:
            for x in ranges[0]:
                start = Vec3(x, y, z)
                stop = Vec3(*(min(s + c, b) for s, c, b in zip(start, chunk, bounds.stop,
                                                               strict=True)))
                name = os.path.join(directory, volume.meta.key(level),
                                    f"{start.x}-{stop.x}_{start.y}-{stop.y}_{start.z}-{stop.z}")
                for ext, _ in EXT_TEST_SEQUENCE:
                    if ext != _WRITTEN_EXT:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(name + ext)


def _boss_type(layer_type: str) -> Any:
    return "annotation" if layer_type == "segmentation" else None
