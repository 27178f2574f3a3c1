"""The neuroglancer precomputed dialect (neuroglancer's ``src/datasource/precomputed/volume.md``),
served from the same planner and cache as the BossDB dialect, for neuroglancer, cloud-volume
and tensorstore.

    GET|HEAD /precomputed/{c}/{e}/{ch}/info
    GET|HEAD /precomputed/{c}/{e}/{ch}/{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}

One scale per resolution level (``key`` = the level's index, derived levels included), its chunk
grid = the relay's cuboid grid. ``raw`` encoding: little-endian voxels, x fastest, which is
exactly the bytes of a C-order (z, y, x) array; uint64 segmentation is sent as
``compressed_segmentation`` (8×8×8 blocks) unless the source says ``precomputed_encoding: raw``.
Edge chunks are clipped to the level's bounds, as neuroglancer asks.
A chunk outside the volume is a 404, which viewers draw as empty (a 500 would stall them).
Chunks are gzip-encoded when the client accepts it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..budget import ByteBudget
from ..catalog import Channel
from ..codecs import CSEG_BLOCK, CSEG_DTYPES, encode_compressed_segmentation, gzip_bytes
from ..cutout import CutoutRequest, CutoutService
from ..errors import NotFound
from ..geometry import Box, Vec3
from ..meshes import MeshService
from ..offload import offload
from .boss import check_size
from .common import caller_token, channel_for, cutout_headers, segmentation_for
from .responses import BodyResponse
from .routing import Router, add_route
from .validators import data_headers, not_modified

__all__ = ["chunk_encoding", "info_json", "router"]

router = Router()

# ASCII digits only: \d also takes other scripts' digits, which int() would then accept
_N = "([0-9]{1,10})"
_CHUNK = re.compile(f"{_N}-{_N}_{_N}-{_N}_{_N}-{_N}")
_KEY = re.compile(r"[0-9]{1,2}")
_NANOMETERS = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}


def chunk_encoding(channel: Channel) -> str:
    """The chunks' encoding: compressed_segmentation where the source asks for it (or, by
    default, for a uint64 annotation) and the codec takes the dtype; else raw."""
    wanted = channel.source.precomputed_encoding
    if wanted == "auto":
        wanted = "compressed_segmentation" if channel.info.type == "annotation" else "raw"
    if wanted == "compressed_segmentation" and channel.info.dtype in CSEG_DTYPES:
        return wanted
    return "raw"


def info_json(channel: Channel) -> dict[str, Any]:
    info = channel.info
    to_nm = _NANOMETERS.get(info.voxel_unit, 1.0)
    encoding: dict[str, Any] = {"encoding": chunk_encoding(channel)}
    if encoding["encoding"] == "compressed_segmentation":
        encoding["compressed_segmentation_block_size"] = list(CSEG_BLOCK)
    meshes = {"mesh": "mesh"} if info.type == "annotation" else {}
    return {
        "@type": "neuroglancer_multiscale_volume",
        **meshes,
        "type": "segmentation" if info.type == "annotation" else "image",
        "data_type": info.dtype.name,
        "num_channels": 1,
        "scales": [
            {
                "key": str(r),
                "size": list(level.bounds.size),
                "resolution": [v * to_nm for v in level.voxel_size],
                "voxel_offset": list(level.bounds.start),
                "chunk_sizes": [list(level.cuboid)],
                **encoding,
            }
            for r, level in enumerate(info.levels)
        ],
    }


async def get_info(request: Request, collection: str, experiment: str,
                   channel: str) -> dict[str, Any]:
    return info_json(await channel_for(request, collection, experiment, channel))


async def get_chunk(request: Request, collection: str, experiment: str, channel: str,
                    key: str, chunk: str) -> Response:
    chan = await channel_for(request, collection, experiment, channel)
    match = _CHUNK.fullmatch(chunk)
    if not _KEY.fullmatch(key) or int(key) >= len(chan.info.levels) or match is None:
        raise NotFound(f"No chunk {key[:20]}/{chunk[:80]}")
    x0, x1, y0, y1, z0, z1 = (int(v) for v in match.groups())
    box = Box(Vec3(x0, y0, z0), Vec3(x1, y1, z1))
    level = int(key)
    if box.is_empty() or not chan.info.levels[level].bounds.contains(box):
        raise NotFound(f"Chunk {chunk} lies outside scale {key}")
    headers = {"Content-Type": "application/octet-stream"}
    nbytes = box.voxels * chan.info.dtype.itemsize
    check_size(request, nbytes)
    segmented = chunk_encoding(chan) == "compressed_segmentation"
    if request.method == "HEAD":
        if not segmented:  # an encoded chunk's length is known once it is encoded
            headers["Content-Length"] = str(nbytes)
        return Response(headers=headers)
    gzipped = "gzip" in request.headers.get("accept-encoding", "").lower()
    # the peak: the voxels, a compressed_segmentation copy and body (a block of 512 distinct
    # labels takes a little more than raw), and a gzip body no larger than what it compresses
    budget: ByteBudget = request.app.state.budget
    peak = (nbytes * (3 if segmented else 1) + (nbytes + 4096 if gzipped else 0)
            + CutoutService.working_bytes(chan, level, box))
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        service: CutoutService = request.app.state.cutouts
        result = await service.read_cutout(CutoutRequest(chan, level, box,
                                                         token=caller_token(request)))
        headers.update(cutout_headers(request, result))
        headers.update(data_headers(request, chan, result,
                                    f"{chunk_encoding(chan)}+{'gzip' if gzipped else 'identity'}",
                                    vary=("Accept-Encoding",)))
        if (unchanged := not_modified(request, headers)) is not None:
            reservation.release()
            return unchanged
        # C-order (z, y, x) bytes are precomputed's x-fastest raw layout: sent as they are
        body: bytes | memoryview = np.ascontiguousarray(result.voxels).data.cast("B")
        if segmented:
            body = await offload(encode_compressed_segmentation, result.voxels, nbytes=nbytes)
        if gzipped:
            body = await offload(gzip_bytes, body, nbytes=nbytes)
            headers["Content-Encoding"] = "gzip"
        if segmented or gzipped:
            reservation.shrink(len(body))  # what is held from here on: the body alone
    except BaseException:
        reservation.release()
        raise
    return BodyResponse(body, "application/octet-stream", reservation, headers)


async def get_mesh_info(request: Request, collection: str, experiment: str,
                        channel: str) -> Any:
    chan = await segmentation_for(request, collection, experiment, channel)
    service: MeshService = request.app.state.meshes
    if await service.stored(chan):
        return Response(await service.file(chan, "info", caller_token(request)),
                        media_type="application/json")
    return {"@type": "neuroglancer_legacy_mesh"}


async def get_mesh_file(request: Request, collection: str, experiment: str, channel: str,
                        name: str) -> Response:
    chan = await segmentation_for(request, collection, experiment, channel)
    service: MeshService = request.app.state.meshes
    body = await service.file(chan, name, caller_token(request))
    kind = "application/json" if name.endswith(":0") else "application/octet-stream"
    return Response(body, media_type=kind)


_BASE = "/precomputed/{collection}/{experiment}/{channel}"
add_route(router, _BASE + "/info", get_info)  # Starlette answers HEAD wherever GET is
add_route(router, _BASE + "/mesh/info", get_mesh_info)
add_route(router, _BASE + "/mesh/{name}", get_mesh_file)
add_route(router, _BASE + "/{key}/{chunk}", get_chunk)
