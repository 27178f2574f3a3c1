"""Routes of BossDB's object services (``relay.objects``): ``/v1/ids/…``, ``/v1/boundingbox/…``,
``/v1/reserve/…``."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import dialect
from ..budget import ByteBudget
from ..cutout import CutoutService
from ..errors import BadRequest, CutoutTypeError, ObjectNotFound
from ..objects import ObjectService, require_annotation
from ..state import MAX_ID
from ..writes import WriteService
from .boss import channel_level, check_size, cutout_nbytes, cutout_target
from .common import caller_token, channel_for, check_write_token
from .routing import Router, add_route

__all__ = ["router"]

router = Router()

_REGION = "/{resolution}/{x_range}/{y_range}/{z_range}/"
#: a whole number as a URL spells it (str.isdigit would let "²" through, which int refuses)
_WHOLE = re.compile(r"[0-9]{1,20}")


async def get_ids(request: Request, collection: str, experiment: str, channel: str,
                  resolution: str, x_range: str, y_range: str, z_range: str,
                  t_range: str | None = None) -> JSONResponse:
    """``{"ids": ["1", "25"]}``: the nonzero labels of the region, ascending, as decimal
    strings (BossDB's answer; ids up to 2^64 - 1 do not fit a JSON number)."""
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    require_annotation(chan, "Ids")
    service: ObjectService = request.app.state.objects
    if service.indexed(chan, times):  # a cell at a time, each reserving its own bytes
        labels = await service.ids(chan, res, box, times, caller_token(request))
        return JSONResponse({"ids": [str(int(label)) for label in labels]})
    nbytes = cutout_nbytes(box, len(times) if times is not None else 1, chan.info.dtype)
    check_size(request, nbytes)
    # the region's voxels, np.unique's sorted copy, and any derived cuboids made for them
    peak = 2 * nbytes + CutoutService.working_bytes(chan, res, box)
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        labels = await service.ids(chan, res, box, times, caller_token(request))
    finally:
        reservation.release()
    return JSONResponse({"ids": [str(int(label)) for label in labels]})


for _path in ("/ids/{collection}/{experiment}/{channel}" + _REGION,
              "/ids/{collection}/{experiment}/{channel}" + _REGION + "{t_range}/"):
    add_route(router, _path, get_ids, slash_optional=True)


async def reserve_ids(request: Request, collection: str, experiment: str, channel: str,
                      num_ids: str) -> JSONResponse:
    """``{"start_id": 1021, "count": "20"}``: ids ``[start_id, start_id + count)`` are the
    caller's, never handed out again by this relay, its fleet or its chain (BossDB's answer:
    ``count`` is the URL's string). A write: it needs a write token and a writable source."""
    check_write_token(request)
    if not _WHOLE.fullmatch(num_ids) or int(num_ids) > MAX_ID:
        raise CutoutTypeError(f"The number of ids to reserve must be a whole number, not "
                              f"{num_ids[:40]!r}")
    chan = await channel_for(request, collection, experiment, channel)
    require_annotation(chan, "Reserve ids")
    if not chan.source.writable:
        WriteService.check(chan, 0)  # the read-only source's 405, as a cutout POST gets
    service: ObjectService = request.app.state.objects
    start = await service.reserve(chan, int(num_ids), caller_token(request))
    return JSONResponse({"start_id": start, "count": num_ids})


add_route(router, "/reserve/{collection}/{experiment}/{channel}/{num_ids}/", reserve_ids,
          slash_optional=True)


async def get_bounding_box(request: Request, collection: str, experiment: str, channel: str,
                           resolution: str, label: str) -> JSONResponse:
    """``{"x_range": [a, b], "y_range": …, "z_range": …, "t_range": [0, 1]}``, half-open, at
    that resolution: ``?type=tight`` the id's exact voxel bounds; ``loose`` (the default) the
    cuboids that hold it, on the grid ``/downsample`` advertises (``cuboid_size``), anchored at
    0 and not clipped to the frame (BossDB's answer). An id no voxel holds is 404/4004."""
    kind = request.query_params.get("type", "loose")
    if kind not in ("loose", "tight"):
        raise BadRequest(f"Invalid bounding box type {kind[:20]!r}: loose or tight")
    if not _WHOLE.fullmatch(label) or int(label) > MAX_ID:
        raise CutoutTypeError(f"Invalid id {label[:40]!r}: a whole number below 2^64")
    chan, res = await channel_level(request, collection, experiment, channel, resolution)
    require_annotation(chan, "Bounding box")
    token = caller_token(request)
    catalog = request.app.state.catalog
    speaker = catalog.speaks_boss(chan.upstream)
    if speaker is not None:  # its own answer, never cached: a write moves it
        ref = chan.ref
        return JSONResponse(await speaker.boss_call("GET", dialect.boundingbox(
            ref.collection, ref.experiment, ref.channel, res, int(label), kind), token))
    service: ObjectService = request.app.state.objects
    found = await service.extent(chan, res, int(label), token)
    if found is None:
        raise ObjectNotFound(f"The id does not exist. {int(label)}")
    low, high = found
    if kind == "tight":
        ranges = [[lo, hi + 1] for lo, hi in zip(low, high, strict=True)]
    else:
        cuboid = chan.info.levels[res].cuboid
        ranges = [[lo // c * c, (hi // c + 1) * c] for lo, hi, c in zip(low, high, cuboid,
                                                                           strict=True)]
    return JSONResponse({"x_range": ranges[0], "y_range": ranges[1], "z_range": ranges[2],
                         "t_range": [0, 1]})


add_route(router, "/boundingbox/{collection}/{experiment}/{channel}/{resolution}/{label}/",
          get_bounding_box, slash_optional=True)
