"""Routes of BossDB's image services (``relay.images``): ``/v1/image/…`` and ``/v1/tile/…``."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from ..budget import ByteBudget
from ..catalog import Channel
from ..cutout import CutoutRequest, CutoutService
from ..errors import CutoutTypeError, InvalidUrl
from ..geometry import Box
from ..images import ORIENTATIONS, Orientation, picture, picture_media, tile_box
from ..offload import offload
from .boss import check_size, cutout_nbytes, cutout_target, refresh_requested
from .common import caller_token
from .routing import Router, add_route
from .validators import data_headers, not_modified

__all__ = ["router"]

router = Router()

_NUMBER = re.compile(r"[0-9]{1,12}")
#: a picture's working memory beside its voxels: np.unique's sorted copy and inverse, and the
#: RGBA pixels of a label picture (8 + 8 + 4 bytes a voxel), and its encoding
_PICTURE_BYTES_PER_VOXEL = 24


def _orientation(text: str) -> Orientation:
    for orientation in ORIENTATIONS:
        if text == orientation:
            return orientation
    raise InvalidUrl(f"Invalid orientation {text[:20]!r}: xy, xz or yz")


def _number(text: str, what: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise CutoutTypeError(f"Type error in the image service: {what} is one number here, "
                              f"not {text[:30]!r}")
    return int(text)


def _single(text: str, what: str) -> str:
    """The one-voxel range ``n:n+1`` of a coordinate the plane is at."""
    number = _number(text, what)
    return f"{number}:{number + 1}"


async def _draw(request: Request, chan: Channel, res: int, box: Box, times: range | None,
                orientation: Orientation) -> Response:
    media = picture_media(request.headers.get("accept"), chan.info.dtype)
    nbytes = cutout_nbytes(box, 1, chan.info.dtype)
    check_size(request, nbytes)
    peak = (nbytes + box.voxels * _PICTURE_BYTES_PER_VOXEL
            + CutoutService.working_bytes(chan, res, box))
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        cutouts: CutoutService = request.app.state.cutouts
        read = await cutouts.read_cutout(CutoutRequest(chan, res, box, times=times,
                                                       refresh=refresh_requested(request),
                                                       token=caller_token(request)))
        headers = data_headers(request, chan, read, media, vary=("Accept",))
        if (unchanged := not_modified(request, headers)) is not None:
            return unchanged
        voxels = read.voxels.reshape(box.shape_zyx)
        body = await offload(picture, voxels, orientation, media, nbytes=nbytes)
    finally:
        reservation.release()
    return Response(body, media_type=media, headers=headers)


async def get_image(request: Request, collection: str, experiment: str, channel: str,
                    orientation: str, resolution: str, x_arg: str, y_arg: str, z_arg: str,
                    t_arg: str | None = None) -> Response:
    """One plane as a PNG (or a JPEG for ``Accept: image/jpeg``): ``xy`` takes ranges of x and
    y and one z, ``xz`` one y, ``yz`` one x; ``t`` is one time sample (BossDB's image
    service). Ranges are checked as a cutout's are."""
    plane = _orientation(orientation)
    fixed = {"xy": "z", "xz": "y", "yz": "x"}[plane]
    args = {"x": x_arg, "y": y_arg, "z": z_arg}
    args[fixed] = _single(args[fixed], fixed)
    t_range = _single(t_arg, "t") if t_arg is not None else None
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, args["x"], args["y"], args["z"],
                                                t_range)
    return await _draw(request, chan, res, box, times, plane)


async def get_tile(request: Request, collection: str, experiment: str, channel: str,
                   orientation: str, tile_size: str, resolution: str, x_index: str,
                   y_index: str, z_index: str, t_arg: str | None = None) -> Response:
    """Tile (x, y, z) of a plane cut in squares of ``tile_size``: the plane's two axes count
    tiles, the third voxels (BossDB's tile service). A tile must lie inside the frame."""
    plane = _orientation(orientation)
    box = tile_box(plane, *(_number(text, what) for text, what in (
        (tile_size, "the tile size"), (x_index, "x"), (y_index, "y"), (z_index, "z"))))
    t_range = _single(t_arg, "t") if t_arg is not None else None
    x_range, y_range, z_range = (f"{lo}:{hi}" for lo, hi in zip(box.start, box.stop,
                                                                 strict=True))
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    return await _draw(request, chan, res, box, times, plane)


_IMAGE = ("/image/{collection}/{experiment}/{channel}/{orientation}/{resolution}/"
          "{x_arg}/{y_arg}/{z_arg}/")
_TILE = ("/tile/{collection}/{experiment}/{channel}/{orientation}/{tile_size}/{resolution}/"
         "{x_index}/{y_index}/{z_index}/")
for _path, _handler in ((_IMAGE, get_image), (_TILE, get_tile)):
    add_route(router, _path, _handler, slash_optional=True)
    add_route(router, _path + "{t_arg}/", _handler, slash_optional=True)
