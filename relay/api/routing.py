"""Registering a handler: served by a plain Starlette route, documented by FastAPI.

FastAPI's per-request machinery (its router's matching, dependency solving, parameter
validation, response serialisation) cost more than the relay's own work on small requests, and
every parameter here is a string validated by the handler anyway. So each handler is kept
twice on its router: as a plain Starlette ``Route``, which ``relay.app`` serves from a plain
Starlette application, and as a FastAPI route that only feeds the OpenAPI document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["add_route", "served_routes"]


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
    async def documented(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never served
        return await endpoint(*args, **kwargs)

    router.add_api_route(paths[0], documented, methods=list(methods), response_model=None)


def served_routes(router: APIRouter, prefix: str = "") -> list[BaseRoute]:
    """The plain routes of ``router``, under ``prefix``: what the relay actually serves."""
    return [Route(prefix + route.path, route.endpoint, methods=sorted(route.methods or ()))
            for route in router.routes
            if isinstance(route, Route) and not isinstance(route, APIRoute)]
