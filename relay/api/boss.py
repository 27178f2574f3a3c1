"""The BossDB REST dialect (the routes of jhuapl-boss/boss ``django/boss/urls.py``, as intern and
neuroglancer call them): metadata and cutouts.

Mounted under both ``/v1`` and ``/latest`` (neuroglancer uses ``/latest``); every route answers
with and without a trailing slash. Path parameters arrive as plain strings and are validated
here, so every malformed request gets BossDB's own status and code rather than a framework
error.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..budget import ByteBudget
from ..catalog import Channel
from ..codecs import (
    MediaType,
    blosc_sizes,
    check_encodable,
    decode_upload,
    encode,
    encoding_bytes,
    negotiate,
    upload_media,
)
from ..cutout import CutoutRequest, CutoutService
from ..errors import (
    CutoutTypeError,
    DatatypeNotSupported,
    InvalidCutoutArgs,
    InvalidResolution,
    InvalidUrl,
    NotFound,
    RequestTooLarge,
)
from ..forwarding import Forwarded
from ..geometry import Box, Vec3
from ..meshes import MeshService
from ..metadata import BossMetadata, experiment_view
from ..offload import offload
from ..writes import WriteRequest, WriteService
from .common import (
    caller_token,
    catalog_of,
    channel_for,
    check_names,
    check_write_token,
    cutout_headers,
    segmentation_for,
    show,
)
from .rendered import Rendered
from .responses import BodyResponse, ForwardedResponse
from .routing import Router, add_route
from .validators import data_headers, not_modified

__all__ = ["channel_level", "check_size", "cutout_nbytes", "cutout_target", "refresh_requested",
           "router"]

# ASCII digits only: \d also matches other scripts' digits, which int() then accepts
_RANGE = re.compile(r"([0-9]{1,10}):([0-9]{1,10})")
_RESOLUTION = re.compile(r"[0-9]")
_ID = re.compile(r"[0-9]{1,20}")

router = Router()


def _route(path: str, endpoint: Callable[..., Any]) -> None:
    """Serve ``path`` with and without its trailing slash."""
    add_route(router, path, endpoint, slash_optional=True)


# --- resources: parsed here, answered by relay.metadata.BossMetadata ------------------------


def _metadata(request: Request) -> BossMetadata:
    service: BossMetadata = request.app.state.metadata
    return service


def _rendered(request: Request, make: Callable[[], Awaitable[Any]]) -> Awaitable[Response]:
    rendered: Rendered = request.app.state.rendered
    return rendered.answer(request, make)


async def list_collections(request: Request) -> Response:
    return await _rendered(request, lambda: _metadata(request).collections(
        caller_token(request)))


async def get_collection(request: Request, collection: str) -> Response:
    check_names(("Collection", collection))
    return await _rendered(request, lambda: _metadata(request).collection(
        collection, caller_token(request)))


async def list_experiments(request: Request, collection: str) -> Response:
    check_names(("Collection", collection))
    return await _rendered(request, lambda: _metadata(request).experiments(
        collection, caller_token(request)))


async def get_experiment(request: Request, collection: str, experiment: str) -> Response:
    check_names(("Collection", collection), ("Experiment", experiment))
    return await _rendered(request, lambda: _metadata(request).experiment(
        collection, experiment, caller_token(request)))


async def list_channels(request: Request, collection: str, experiment: str) -> Response:
    check_names(("Collection", collection), ("Experiment", experiment))
    return await _rendered(request, lambda: _metadata(request).channels(
        collection, experiment, caller_token(request)))


async def get_channel(request: Request, collection: str, experiment: str,
                      channel: str) -> Response:
    check_names(("Collection", collection), ("Experiment", experiment), ("Channel", channel))
    return await _rendered(request, lambda: _metadata(request).channel(
        collection, experiment, channel, caller_token(request)))


async def list_coords(request: Request) -> Response:
    return await _rendered(request, lambda: _metadata(request).coords(caller_token(request)))


async def get_coord(request: Request, coord: str) -> Response:
    check_names(("Coordinate frame", coord))
    return await _rendered(request, lambda: _metadata(request).coord(
        coord, caller_token(request)))


async def get_downsample(request: Request, collection: str, experiment: str,
                         channel: str) -> Response:
    check_names(("Collection", collection), ("Experiment", experiment), ("Channel", channel))
    if "iso" in request.query_params:
        _check_iso(request, await channel_for(request, collection, experiment, channel))
    return await _rendered(request, lambda: _metadata(request).downsample(
        collection, experiment, channel, caller_token(request)))


async def ping(request: Request) -> dict[str, Any]:
    return {"ip": request.client.host if request.client else ""}


_route("/collection/", list_collections)
_route("/collection/{collection}/", get_collection)
_route("/collection/{collection}/experiment/", list_experiments)
_route("/collection/{collection}/experiment/{experiment}/", get_experiment)
_route("/collection/{collection}/experiment/{experiment}/channel/", list_channels)
_route("/collection/{collection}/experiment/{experiment}/channel/{channel}/", get_channel)
_route("/coord/", list_coords)
_route("/coord/{coord}/", get_coord)
_route("/downsample/{collection}/{experiment}/{channel}/", get_downsample)
_route("/ping/", ping)


# --- cutouts --------------------------------------------------------------------------------


def cutout_nbytes(box: Box, times: int, dtype: np.dtype[Any]) -> int:
    """The uncompressed size of a cutout, every byte of the dtype counted (BossDB counts a
    quarter of a 64-bit cutout's bytes, which let a 2 GiB uint64 answer through its limit)."""
    return box.voxels * times * dtype.itemsize


def check_size(request: Request, nbytes: int) -> None:
    """413 (code 2000) past ``server.max_cutout_bytes``, before anything is read."""
    limit = int(request.app.state.settings.server.max_cutout_bytes)
    if nbytes > limit:
        raise RequestTooLarge(
            f"Cutout request is over {limit // 2**20} MiB when uncompressed ({nbytes} bytes; "
            "server.max_cutout_bytes). Reduce cutout dimensions.")


def _range(text: str, what: str) -> tuple[int, int]:
    match = _RANGE.fullmatch(text)
    if match is None:
        raise CutoutTypeError(f"Type error in cutout argument {what}: {show(text)}")
    return int(match[1]), int(match[2])


def refresh_requested(request: Request) -> bool:
    """``access-mode=raw`` or ``Cache-Control: no-cache`` re-read upstream; intern's default
    ``access-mode=no-cache`` concerns BossDB's own cache and does not bypass this one."""
    params = request.query_params
    mode = params.get("access-mode")
    legacy = params.get("no-cache")
    if mode is not None and legacy is not None:
        raise InvalidCutoutArgs("Use either access-mode or no-cache, not both")
    if legacy is not None and legacy.lower() not in ("true", "false"):
        raise InvalidCutoutArgs("no-cache must be true or false")
    if mode is not None and mode not in ("cache", "no-cache", "no_cache", "raw"):
        raise InvalidCutoutArgs("access-mode must be one of cache, no-cache, raw")
    control = request.headers.get("cache-control", "").lower()
    return mode == "raw" or "no-cache" in (part.strip() for part in control.split(","))


def _filter_ids(request: Request, channel: Channel) -> np.ndarray | None:
    raw = request.query_params.get("filter")
    if raw is None:
        return None
    if channel.info.type != "annotation":
        raise DatatypeNotSupported(
            f"The channel in request has type {channel.info.type}. "
            "Filter is only valid for annotation channels"
        )
    parts = raw.split(",")
    if len(parts) > 100_000 or not all(_ID.fullmatch(p) and int(p) < 2**64 for p in parts):
        raise InvalidCutoutArgs("filter must be a comma-separated list of uint64 ids")
    return np.array([int(p) for p in parts], dtype=np.uint64)


def _check_iso(request: Request, channel: Channel) -> None:
    """BossDB's ``iso`` (cutouts, to_black, downsample): ``iso=true`` asks for the isotropic
    pyramid BossDB keeps above an anisotropic channel's isotropic level. It is served where
    it is the same voxels as the one asked without it — a channel whose voxels are isotropic
    (z less than twice x and y), where BossDB's two pyramids coincide — and refused with a 400
    that says so otherwise, never ignored (the answer would be other voxels)."""
    iso = request.query_params.get("iso")
    if iso is None or iso.lower() == "false":
        return
    if iso.lower() != "true":
        raise InvalidUrl(f"iso must be true or false, not {show(iso)}")
    x, y, z = channel.info.levels[0].voxel_size
    if z >= 2 * max(x, y):
        raise InvalidUrl(
            "iso=true asks for BossDB's isotropic pyramid of an anisotropic channel "
            f"({x:g} × {y:g} × {z:g} {channel.info.voxel_unit} voxels), which this relay does "
            "not serve; ask without iso for its levels (listed by /v1/downsample)")


def _within(box: Box, frame: Box, level: Box) -> bool:
    lowest = Vec3(*(min(a, b) for a, b in zip(frame.start, level.start, strict=True)))
    return Box(lowest, frame.stop).contains(box)


async def channel_level(request: Request, collection: str, experiment: str, channel: str,
                        resolution: str) -> tuple[Channel, int]:
    """The channel and resolution of a URL, checked in BossDB's order (and ``iso``)."""
    if not _RESOLUTION.fullmatch(resolution):
        raise NotFound(f"Invalid resolution {show(resolution)}: one digit expected")
    chan = await channel_for(request, collection, experiment, channel)
    _check_iso(request, chan)
    res = int(resolution)
    if res >= len(chan.info.levels):
        raise InvalidResolution(
            f"Invalid resolution {res}. The resolution has to be within 0 and "
            f"{len(chan.info.levels) - 1}"
        )
    return chan, res


async def cutout_target(request: Request, collection: str, experiment: str, channel: str,
                  resolution: str, x_range: str, y_range: str, z_range: str,
                  t_range: str | None) -> tuple[Channel, int, Box, range | None]:
    """A cutout URL checked in BossDB's order: the channel, the resolution, the ranges (against
    the resolution-0 frame) and the time range; what a GET and a POST both address."""
    chan, res = await channel_level(request, collection, experiment, channel, resolution)
    info = chan.info
    (x0, x1), (y0, y1), (z0, z1) = (
        _range(x_range, "x"), _range(y_range, "y"), _range(z_range, "z")
    )
    box = Box(Vec3(x0, y0, z0), Vec3(x1, y1, z1))
    # Like BossDB, ranges are checked against the resolution-0 frame at every resolution, and
    # what lies beyond a coarser level's extent reads as zeros. Unlike BossDB (whose source
    # calls this check wrong), a level whose first voxel lies below the frame's start (a frame
    # not starting at 0, halved) may be read from that first voxel.
    frame, level = info.levels[0].bounds, info.levels[res].bounds
    if box.is_empty() or not _within(box, frame, level):
        # the experiment's frame is every channel's extent together (``relay.metadata``): a
        # relay downstream reads this channel anywhere in it, and gets zeros where the
        # channel holds nothing, as from BossDB (whose channels, and another relay's, already
        # span their frame: no need to ask for every channel of the experiment then)
        catalog = catalog_of(request)
        if box.is_empty() or catalog.speaks_boss(chan.upstream) is not None or not _within(
                box, (await experiment_view(catalog, collection, experiment,
                                            caller_token(request))).frame, level):
            raise InvalidCutoutArgs(
                f"Incorrect cutout arguments {res}/{x_range}/{y_range}/{z_range}")
    times: range | None = None
    if t_range is not None:
        t0, t1 = _range(t_range, "t")
        if not t0 < t1 <= info.num_time_samples:
            raise InvalidUrl(
                f"Invalid time range {t0}:{t1}; the channel has {info.num_time_samples} "
                "time samples"
            )
        times = range(t0, t1)
    return chan, res, box, times


async def cutout(
    request: Request,
    collection: str,
    experiment: str,
    channel: str,
    resolution: str,
    x_range: str,
    y_range: str,
    z_range: str,
    t_range: str | None = None,
) -> Response:
    media = negotiate(request.headers.get("accept"))
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    info = chan.info
    ids = _filter_ids(request, chan)
    ntimes = len(times) if times is not None else 1
    nbytes = cutout_nbytes(box, ntimes, info.dtype)
    check_size(request, nbytes)
    check_encodable(media, info.dtype, ((ntimes,) if times is not None else ()) + box.shape_zyx)
    # the peak: the assembled voxels, the filter's mask and copy, the encoding's copies and body
    peak = nbytes + encoding_bytes(media, nbytes)
    if ids is not None:
        peak += nbytes + box.voxels * ntimes
    peak += CutoutService.working_bytes(chan, res, box, ntimes)  # derived cuboids being made
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        body, headers = await _cutout_body(request, chan, res, box, times, media, ids)
        if body is None:  # the caller has this version
            reservation.release()
            return Response(status_code=304, headers=headers)
        if isinstance(body, Forwarded):
            reservation.shrink(body.length)
            return ForwardedResponse(body, media.value, reservation, headers)
        reservation.shrink(len(body))
    except BaseException:
        reservation.release()
        raise
    return BodyResponse(body, media.value, reservation, headers)


async def post_cutout(
    request: Request,
    collection: str,
    experiment: str,
    channel: str,
    resolution: str,
    x_range: str,
    y_range: str,
    z_range: str,
    t_range: str | None = None,
) -> Response:
    """A cutout written to the store of a ``writable`` source (``relay.writes``): BossDB's
    checks and codes, 201 with an empty body once the store holds it."""
    check_write_token(request)
    media = upload_media(request.headers.get("content-type"))
    chan, res, box, times = await _write_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    info = chan.info
    ntimes = len(times) if times is not None else 1
    nbytes = cutout_nbytes(box, ntimes, info.dtype)
    # A Blosc frame is its voxels and a little framing at most (a pickle a little more).
    # Voxels of the widest dtype are let in, so a body of the wrong dtype is told as such
    # (2001), not as too large; never more than the largest cutout.
    widest = min(box.voxels * ntimes * 8, int(request.app.state.settings.server.max_cutout_bytes))
    limit = max(nbytes, widest) + max(nbytes, widest) // 16 + 64 * 1024
    # one reservation for the peak (a second one asked beside a first could wait for the
    # first for ever): the body, the voxels, and for a pickle what it inflates to (at most the
    # body's limit: ``decode_upload`` checks the frame's header first), which its voxels are a
    # copy of part of
    peak = limit + nbytes + (limit if media is MediaType.BLOSC_PYTHON else 0)
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        body = await _body(request, limit)
        inflated = (blosc_sizes(body) or (0, 0))[0]
        shape = ((ntimes,) if times is not None else ()) + box.shape_zyx
        data = await offload(decode_upload, body, media, info.dtype, shape,
                             nbytes=max(nbytes, inflated))
        del body
        await _write(request, chan, res, box, times, data.reshape((ntimes, *box.shape_zyx)))
    finally:
        reservation.release()
    return Response(status_code=201)


async def put_to_black(
    request: Request,
    collection: str,
    experiment: str,
    channel: str,
    resolution: str,
    x_range: str,
    y_range: str,
    z_range: str,
    t_range: str | None = None,
) -> Response:
    """BossDB's ``to_black``: zeros written over the box, as a POST of zeros would (the same
    checks, tokens, invalidation across a chain and a fleet); 200 with an empty body."""
    check_write_token(request)
    chan, res, box, times = await _write_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    ntimes = len(times) if times is not None else 1
    nbytes = cutout_nbytes(box, ntimes, chan.info.dtype)
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(nbytes) or await budget.reserve(nbytes)
    try:
        zeros = np.zeros((ntimes, *box.shape_zyx), chan.info.dtype)
        await _write(request, chan, res, box, times, zeros)
    finally:
        reservation.release()
    return Response(status_code=200)


async def _write_target(request: Request, collection: str, experiment: str, channel: str,
                        resolution: str, x_range: str, y_range: str, z_range: str,
                        t_range: str | None) -> tuple[Channel, int, Box, range | None]:
    """What a write addresses, checked as a read's is, and then as a write: a source that
    takes writes at that level, a box inside the stored extent, within the size limit."""
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    WriteService.check(chan, res)
    info = chan.info
    if not info.levels[res].bounds.contains(box):  # a store holds its own extent, no more
        raise InvalidCutoutArgs(
            f"Incorrect cutout arguments {res}/{x_range}/{y_range}/{z_range}: the channel "
            f"holds {info.levels[res].bounds} at resolution {res}")
    check_size(request, cutout_nbytes(box, len(times) if times is not None else 1, info.dtype))
    return chan, res, box, times


async def _write(request: Request, chan: Channel, res: int, box: Box, times: range | None,
                 data: np.ndarray) -> None:
    service: WriteService = request.app.state.writes
    try:
        await service.write(WriteRequest(chan, res, box, data,
                                          times if times is not None else range(
                                              chan.info.default_time_sample,
                                              chan.info.default_time_sample + 1),
                                          caller_token(request)))
    finally:
        # what the store says of itself may change with a write (DVID's extents grow)
        rendered: Rendered = request.app.state.rendered
        rendered.clear()


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"The body announces {length} bytes; a cutout of this box is "
                              f"at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The body passed {limit} bytes, the most a cutout of this "
                                  "box can take")
        chunks.append(chunk)
    return b"".join(chunks)


async def _cutout_body(request: Request, chan: Channel, res: int, box: Box,
                       times: range | None, media: MediaType, ids: np.ndarray | None
                       ) -> tuple[bytes | memoryview | Forwarded | None, dict[str, str]]:
    """The body and headers of a cutout (a body still arriving from an upstream relay, to
    forward); no body when the request's ``If-None-Match`` names this version (nothing is
    encoded then)."""
    service: CutoutService = request.app.state.cutouts
    cutout = CutoutRequest(chan, res, box, times=times, refresh=refresh_requested(request),
                           token=caller_token(request))
    # a plain Blosc answer of exactly one cuboid is that cuboid's stored frame, sent as it is
    result = await service.answer(cutout, frame_ok=media is MediaType.BLOSC and ids is None)
    headers = {**cutout_headers(request, result),
               **data_headers(request, chan, result, media.value, vary=("Accept",))}
    if not_modified(request, headers) is not None:
        if result.forwarded is not None:
            result.forwarded.close()
        return None, headers
    if result.forwarded is not None:
        return result.forwarded, headers
    if result.frame is not None:
        return result.frame, headers
    data = result.voxels
    if ids is not None:
        data = np.where(np.isin(data, ids), data, 0).astype(chan.info.dtype, copy=False)
    return await offload(encode, data, media, nbytes=data.nbytes), headers


_CUTOUT = "/cutout/{collection}/{experiment}/{channel}/{resolution}/{x_range}/{y_range}/{z_range}/"
async def get_mesh(request: Request, collection: str, experiment: str, channel: str,
                   segment: str) -> Response:
    """A segment's whole mesh (its fragments merged): ``?format=obj`` (the default, Wavefront
    OBJ in nanometres) or ``precomputed`` (neuroglancer's legacy single-mesh bytes)."""
    if not _ID.fullmatch(segment) or not 0 < int(segment) < 2**64:
        raise InvalidUrl(f"{show(segment)} is not a segment id (1 to 2^64 - 1)")
    shape = request.query_params.get("format", "obj")
    if shape not in ("obj", "precomputed"):
        raise InvalidUrl(f"format {show(shape)}: obj or precomputed")
    chan = await segmentation_for(request, collection, experiment, channel)
    service: MeshService = request.app.state.meshes
    mesh = await service.mesh(chan, int(segment), caller_token(request))
    size = mesh.vertices.nbytes + mesh.faces.nbytes
    if shape == "obj":
        return Response(await offload(lambda: bytes(mesh.to_obj()), nbytes=size),
                        media_type="model/obj")
    return Response(await offload(lambda: bytes(mesh.to_precomputed()), nbytes=size),
                    media_type="application/octet-stream")


_route("/mesh/{collection}/{experiment}/{channel}/{segment}/", get_mesh)
_route(_CUTOUT, cutout)
_route(_CUTOUT + "{t_range}/", cutout)
for _path in (_CUTOUT, _CUTOUT + "{t_range}/"):
    add_route(router, _path, post_cutout, methods=("POST",), slash_optional=True)
    add_route(router, _path.replace("/cutout/", "/cutout/to_black/"), put_to_black,
              methods=("PUT",), slash_optional=True)

