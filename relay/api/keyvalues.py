"""Routes of BossDB's metadata service (``relay.keyvalues``): ``/v1/meta/{c}[/{e}[/{ch}]]/``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..keyvalues import KeyValues
from .common import caller_token, check_write_token
from .routing import Router, add_route

__all__ = ["router"]

router = Router()


async def meta(request: Request, collection: str, experiment: str | None = None,
               channel: str | None = None) -> Response:
    """GET: ``{"keys": [...]}``, or ``{"key": k, "value": v}`` with ``?key=k``; POST
    ``?key=k&value=v`` creates (201), PUT updates (200), DELETE ``?key=k`` removes (204). A
    missing key (or, for POST, one already there) is 400/1003, as at BossDB."""
    if request.method != "GET":
        check_write_token(request)
    names = tuple(name for name in (collection, experiment, channel) if name is not None)
    service: KeyValues = request.app.state.keyvalues
    status, body = await service.call(request.method, names, request.query_params.get("key"),
                                      request.query_params.get("value"), caller_token(request))
    if body is None:
        return Response(status_code=status)
    return JSONResponse(body, status_code=status)


for _path in ("/meta/{collection}/", "/meta/{collection}/{experiment}/",
              "/meta/{collection}/{experiment}/{channel}/"):
    add_route(router, _path, meta, ("GET", "POST", "PUT", "DELETE"), slash_optional=True)
