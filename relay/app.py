"""``create_app(settings)``: routers, the edge middleware, the lifespan, and one error handler."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .api import boss, ops, precomputed
from .api.middleware import AuthMiddleware, CountingMiddleware, EdgeMiddleware
from .cache import CacheTier, DiskTier, MemoryTier, TieredCache
from .catalog import Catalog
from .config import Settings
from .cutout import CutoutService
from .errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RelayError,
    UnsupportedVersion,
)
from .metrics import Metrics
from .upstreams._http import HttpPool
from .upstreams.base import ChannelRef, Registry, UpstreamContext, registry

__all__ = ["SETTINGS_ENV", "build_cache", "check_required", "create_app", "from_environment"]

#: Where ``relay serve --workers N`` hands its validated settings to each worker process.
SETTINGS_ENV = "RELAY_SERVE_SETTINGS_JSON"

log = logging.getLogger("relay")


def build_cache(settings: Settings) -> TieredCache | None:
    tiers: list[CacheTier] = []
    if settings.cache.memory_bytes > 0:
        tiers.append(MemoryTier(int(settings.cache.memory_bytes)))
    if settings.cache.disk_dir is not None and settings.cache.disk_bytes > 0:
        tiers.append(DiskTier(settings.cache.disk_dir, int(settings.cache.disk_bytes)))
    return TieredCache(tiers) if tiers else None


def _error(exc: RelayError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def _relay_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RelayError)
    return _error(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return _error(MethodNotAllowed())
    if exc.status_code == 404:
        first = request.url.path.lstrip("/").split("/", 1)[0]
        if first.startswith("v0."):
            return _error(UnsupportedVersion())
        return _error(NotFound(f"No such route: {request.method} {request.url.path[:200]}"))
    return JSONResponse(
        {"status": exc.status_code, "code": 1006, "message": str(exc.detail)},
        status_code=exc.status_code,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(BadRequest("Malformed request"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Never a traceback to the client; the log has it.
    log.exception("unhandled error on %s %s", request.method, request.url.path[:200])
    return _error(RelayError())


async def check_required(settings: Settings, upstreams: Registry = registry) -> list[str]:
    """One line per ``required`` source that does not answer now (startup's fail-fast)."""
    required = [source for source in settings.sources if source.required]
    if not required:
        return []
    http = HttpPool()
    catalog = Catalog(required, upstreams, UpstreamContext(http))
    problems = []
    try:
        for source, upstream in catalog.entries:
            names = (source.collection, source.experiment, source.channel)
            where = f"{'/'.join(names)} ({source.kind})"
            try:
                if "*" not in names:
                    await upstream.channel_info(ChannelRef(*names), source.token)
                elif upstream.passthrough:
                    await upstream.boss_json("collection/", source.token)
            except Exception as exc:  # any failure to answer is the one line to print
                why = exc.message if isinstance(exc, RelayError) else f"{exc!r}"[:300]
                problems.append(f"required source {where} does not answer: {why}")
    finally:
        await catalog.aclose()
        await http.aclose()
    return problems


def from_environment() -> FastAPI:
    """The app of one ``--workers`` process, from the settings its parent validated."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))


def create_app(settings: Settings, upstreams: Registry = registry) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cache = build_cache(settings)
        http = HttpPool()
        catalog = Catalog(settings.sources, upstreams, UpstreamContext(http))
        app.state.settings = settings
        app.state.cache = cache
        app.state.catalog = catalog
        app.state.metrics = metrics
        app.state.cutouts = CutoutService(catalog, cache, metrics)
        try:
            yield
        finally:
            if cache is not None:
                await cache.aclose()  # lets write-behind land before the process exits
            await catalog.aclose()
            await http.aclose()

    app = FastAPI(
        title="relay",
        version=__version__,
        description="A caching relay speaking the BossDB REST dialect.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.include_router(boss.router, prefix="/v1", tags=["boss"])
    app.include_router(boss.router, prefix="/latest", tags=["boss"], include_in_schema=False)
    app.include_router(precomputed.router, tags=["precomputed"])
    app.include_router(ops.router, tags=["ops"])
    app.add_exception_handler(RelayError, _relay_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)

    app.add_middleware(CountingMiddleware, metrics=metrics,
                       limit=settings.server.max_concurrency)
    if settings.server.tokens:
        app.add_middleware(AuthMiddleware, tokens=settings.server.tokens)
    # added last, so outermost: its CORS headers reach every response, 401s included
    app.add_middleware(EdgeMiddleware, cors_origins=settings.server.cors_origins)
    return app
