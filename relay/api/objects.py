"""Routes of BossDB's object services (``relay.objects``): ``/v1/ids/…``, ``/v1/reserve/…``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..budget import ByteBudget
from ..cutout import CutoutService
from ..errors import CutoutTypeError
from ..objects import ObjectService, require_annotation
from ..state import MAX_ID
from ..writes import WriteService
from .boss import check_size, cutout_nbytes, cutout_target
from .common import caller_token, channel_for, check_write_token
from .routing import Router, add_route

__all__ = ["router"]

router = Router()

_REGION = "/{resolution}/{x_range}/{y_range}/{z_range}/"


async def get_ids(request: Request, collection: str, experiment: str, channel: str,
                  resolution: str, x_range: str, y_range: str, z_range: str,
                  t_range: str | None = None) -> JSONResponse:
    """``{"ids": ["1", "25"]}``: the nonzero labels of the region, ascending, as decimal
    strings (BossDB's answer; ids up to 2^64 - 1 do not fit a JSON number)."""
    chan, res, box, times = await cutout_target(request, collection, experiment, channel,
                                                resolution, x_range, y_range, z_range, t_range)
    require_annotation(chan, "Ids")
    nbytes = cutout_nbytes(box, len(times) if times is not None else 1, chan.info.dtype)
    check_size(request, nbytes)
    # the region's voxels, np.unique's sorted copy, and any derived cuboids made for them
    peak = 2 * nbytes + CutoutService.working_bytes(chan, res, box)
    budget: ByteBudget = request.app.state.budget
    reservation = budget.try_reserve(peak) or await budget.reserve(peak)
    try:
        service: ObjectService = request.app.state.objects
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
    if not num_ids.isdigit() or int(num_ids) > MAX_ID:
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
