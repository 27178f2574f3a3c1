"""Registering a handler: served by a plain Starlette route, documented by FastAPI.

FastAPI's per-request machinery (matching, dependency solving, validation, serialisation) is
heavier than the relay's own work on a small request, and every parameter here is a string the
handler validates anyway. So each handler is kept twice on its router: as a plain Starlette
``Route``, which ``relay.app`` serves, and as a FastAPI route that only feeds the OpenAPI
document.

Starlette tries served routes one by one, and BossDB paths are answered under ``/v1`` and
``/latest``, with and without their trailing slash. So each handler is served by one route
whose pattern accepts every prefix, and the trailing slash optionally where the handler asks
for it, rather than by a route per spelling.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, compile_path

__all__ = ["Router", "add_route", "served_routes"]

#: A handler module's routes: FastAPI's router, for the documented twins it collects (this and
#: app.py's document builder are the only places FastAPI is used).
Router = APIRouter


class _Plain(Route):
    """A handler's plain route, as registered: ``slash_optional`` serves it without its
    trailing slash too (no redirect: a 307 would cost intern a round trip and break POST)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], methods: Sequence[str],
                 slash_optional: bool) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        self.slash_optional = slash_optional


def add_route(router: Router, path: str, endpoint: Callable[..., Any],
              methods: Sequence[str] = ("GET",), *, slash_optional: bool = False) -> None:
    """Serve ``endpoint(request, **path_params)`` at ``path`` (and documented there). A plain
    JSON result is sent as a JSONResponse."""

    async def dispatch(request: Request) -> Response:
        result = await endpoint(request, **request.path_params)
        return result if isinstance(result, Response) else JSONResponse(result)

    router.routes.append(_Plain(path, dispatch, methods, slash_optional))

    @functools.wraps(endpoint)
    async def documented(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never served
        return await endpoint(*args, **kwargs)

    for method in methods:  # one documented operation per method: each its own operation id
        router.add_api_route(path, documented, methods=[method], response_model=None)


def served_routes(router: Router, prefixes: Sequence[str] = ("",)) -> list[BaseRoute]:
    """The plain routes of ``router``, each under every one of ``prefixes``: what the relay
    actually serves. A route's ``path`` names the first prefix."""
    head = "^(?:" + "|".join(re.escape(prefix) for prefix in prefixes) + ")"
    served: list[BaseRoute] = []
    for route in router.routes:
        if not isinstance(route, _Plain):
            continue
        plain = Route(prefixes[0] + route.path, route.endpoint,
                      methods=sorted(route.methods or ()))
        pattern = compile_path(route.path)[0].pattern.removeprefix("^")
        if route.slash_optional and pattern.endswith("/$"):
            pattern = pattern.removesuffix("/$") + "/?$"
        plain.path_regex = re.compile(head + pattern)
        served.append(plain)
    return served
