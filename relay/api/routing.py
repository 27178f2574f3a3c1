"""Registering a handler: dispatched by a plain Starlette route, documented by FastAPI.

FastAPI's per-request machinery (dependency solving, parameter validation, response
serialisation) cost more than the relay's own work on small requests, and every parameter here
is a string validated by the handler anyway. So each handler is registered twice on the same
router: first as a plain Starlette ``Route``, which matches and runs it, then as a FastAPI
route that only feeds the OpenAPI document (it is never reached: routes match in order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Route

__all__ = ["add_route"]


def add_route(router: APIRouter, paths: Sequence[str], endpoint: Callable[..., Any],
              methods: Sequence[str] = ("GET",)) -> None:
    """Serve ``endpoint(request, **path_params)`` at every path in ``paths`` (the first is the
    documented one). A plain JSON result is sent as a JSONResponse."""

    async def dispatch(request: Request) -> Response:
        result = await endpoint(request, **request.path_params)
        return result if isinstance(result, Response) else JSONResponse(result)

    for path in paths:
        router.routes.append(Route(path, dispatch, methods=list(methods)))

    @functools.wraps(endpoint)
    async def documented(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never routed
        return await endpoint(*args, **kwargs)

    router.add_api_route(paths[0], documented, methods=list(methods), response_model=None)
