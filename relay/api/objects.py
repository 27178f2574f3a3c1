"""Routes of BossDB's object services (``relay.objects``): ``/v1/ids/…``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..budget import ByteBudget
from ..cutout import CutoutService
from ..objects import ObjectService, require_annotation
from .boss import check_size, cutout_nbytes, cutout_target
from .common import caller_token
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
