"""``create_app(settings)``: routes, the edge middleware, the lifespan, and the error handlers.

The app that serves is a plain Starlette application over the routes' plain handlers
(``relay.api.routing``); FastAPI only writes the OpenAPI document (``/openapi.json``, ``/docs``),
because its per-request machinery is heavier than the relay's own work on a small request.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import __version__
from .api import boss, images, keyvalues, objects, ops, precomputed
from .api.middleware import AuthMiddleware, CountingMiddleware, EdgeMiddleware, HostFilter
from .api.rendered import Rendered
from .api.routing import served_routes
from .api.viewer import viewer_routes
from .budget import ByteBudget
from .cache import CacheTier, DiskTier, MemoryTier, RedisTier, TieredCache
from .cache.memo import MEMO_BYTES, MetadataMemo
from .cache.tiered import DEFAULT_PENDING_BYTES, MIN_PENDING_BYTES
from .catalog import Catalog
from .config import Settings
from .cutout import CutoutService
from .errors import MethodNotAllowed, NotFound, RelayError, UnsupportedVersion
from .hops import Hops, new_relay_id
from .keyvalues import KeyValues
from .labels import LabelIndex
from .logs import configure as configure_logs
from .meshes import MeshService
from .metadata import BossMetadata
from .metrics import Metrics
from .objects import ObjectService
from .protocol import POLICY_KEY, ConnectionPolicy, default_max_connections
from .state import DurableState
from .upstreams.base import UpstreamContext
from .upstreams.http import HttpPool
from .upstreams.kinds import Registry, registry
from .writes import WriteService

__all__ = ["SETTINGS_ENV", "build_cache", "build_memo", "check_required", "create_app",
           "from_environment", "startup_warnings"]

#: Where ``relay serve --workers N`` hands its validated settings to each worker process.
SETTINGS_ENV = "RELAY_SERVE_SETTINGS_JSON"
#: the log level a worker process logs at (the parent's --log-level)
LOG_LEVEL_ENV = "RELAY_SERVE_LOG_LEVEL"

log = logging.getLogger("relay")


def build_memo(settings: Settings) -> MetadataMemo:
    """The memo of upstream metadata: on disk beside the cuboids (a restarted relay serves
    what it holds while its upstream is down), else in memory."""
    cache = settings.cache
    if cache.disk_dir is not None and cache.disk_bytes > 0:
        return MetadataMemo(DiskTier(cache.disk_dir / "metadata", MEMO_BYTES))
    return MetadataMemo(MemoryTier(MEMO_BYTES))


def build_cache(settings: Settings) -> TieredCache | None:
    tiers: list[CacheTier] = []
    if settings.cache.memory_bytes > 0:
        tiers.append(MemoryTier(int(settings.cache.memory_bytes)))
    if settings.cache.disk_dir is not None and settings.cache.disk_bytes > 0:
        tiers.append(DiskTier(settings.cache.disk_dir, int(settings.cache.disk_bytes)))
    cache = settings.cache
    if cache.redis_url is not None:
        tiers.append(RedisTier(cache.redis_url, cache.redis_prefix, cache.redis_ttl_seconds,
                               cache.redis_lease_seconds, cache.redis_timeout_seconds))
    if not tiers:
        return None
    # the write-behind's backlog is held in memory: never more than the memory tier's own
    # budget (a disk thread starved by a busy machine must not grow the process without bound)
    memory = int(settings.cache.memory_bytes)
    return TieredCache(tiers, max_pending_bytes=min(DEFAULT_PENDING_BYTES,
                                                    max(memory, MIN_PENDING_BYTES)))


def _error(exc: RelayError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers())


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
    try:
        return [f"required source {where} does not answer: {why}"
                for where, why in await catalog.probe()]
    finally:
        await catalog.aclose()
        await http.aclose()


def startup_warnings(settings: Settings) -> list[str]:
    """What a user should hear about before the relay serves: a source that carries a
    credential (``token``, or a user and password in its URL) behind ``cors_origins: ["*"]``
    lets any web page its users open read through that credential."""
    if "*" not in settings.server.cors_origins:
        return []
    lines = []
    for source in settings.sources:
        if source.options.get("token") or urlsplit(source.url).password is not None:
            names = "/".join((source.collection, source.experiment, source.channel))
            lines.append(
                f"source {names} ({source.kind}) sends a credential upstream and "
                "server.cors_origins is '*': any web page a user of this relay opens can read "
                "through it; list the viewers' origins in server.cors_origins instead")
    return lines


def from_environment() -> Starlette:
    """The app of one ``--workers`` process, from the settings its parent validated (and its
    logging as the parent's: a spawned process starts with none)."""
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logs(os.environ.get(LOG_LEVEL_ENV, "info"), settings.server.log_format)
    return create_app(settings)


async def _root_ping(request: Request) -> JSONResponse:
    return JSONResponse(await boss.ping(request))


def _documentation() -> list[BaseRoute]:
    """``/openapi.json`` and ``/docs``, from a FastAPI app that holds the routers' documented
    twins and never serves a request itself. The document is built on first request, not at
    start-up (it takes longer than starting everything else)."""

    @functools.cache
    def schema() -> dict[str, Any]:
        documented = FastAPI(title="relay", version=__version__,
                             description="A caching relay speaking the BossDB REST dialect.")
        documented.include_router(boss.router, prefix="/v1", tags=["boss"])
        documented.include_router(objects.router, prefix="/v1", tags=["boss"])
        documented.include_router(keyvalues.router, prefix="/v1", tags=["boss"])
        documented.include_router(images.router, prefix="/v1", tags=["boss"])
        documented.include_router(precomputed.router, tags=["precomputed"])
        documented.include_router(ops.router, tags=["ops"])
        return documented.openapi()

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema())

    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="relay")

    return [Route("/openapi.json", openapi), Route("/docs", docs)]


def create_app(settings: Settings, upstreams: Registry = registry) -> Starlette:
    metrics = Metrics()
    hops = Hops(settings.server.relay_id or new_relay_id(), settings.server.max_hops)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        cache = build_cache(settings)
        memo = build_memo(settings)
        http = HttpPool(hops)
        catalog = Catalog(settings.sources, upstreams, UpstreamContext(http, memo))
        app.state.settings = settings
        app.state.cache = cache
        app.state.catalog = catalog
        app.state.metadata = BossMetadata(catalog)
        app.state.rendered = Rendered(min(
            (s.metadata_ttl_seconds for s in settings.sources), default=0.0))
        app.state.metrics = metrics
        app.state.budget = budget = ByteBudget(int(settings.server.max_inflight_bytes),
                                               settings.server.inflight_wait_seconds, metrics)
        app.state.cutouts = CutoutService(catalog, cache, metrics,
                                          decoded_bytes=int(settings.cache.decoded_bytes))
        app.state.labels = LabelIndex(app.state.cutouts, cache, metrics, budget)
        app.state.meshes = MeshService(app.state.cutouts, cache, metrics, app.state.labels,
                                       budget, int(settings.server.max_mesh_bytes))
        app.state.writes = WriteService(app.state.cutouts, metrics, app.state.labels)
        state = DurableState(settings.server.state_dir)
        app.state.objects = ObjectService(app.state.cutouts, catalog, app.state.labels, state,
                                          budget, int(settings.server.max_index_bytes))
        app.state.keyvalues = KeyValues(catalog, app.state.metadata, state)
        policy = ConnectionPolicy(
            header_timeout=settings.server.header_timeout,
            send_timeout=settings.server.send_timeout,
            max_connections=settings.server.max_connections or default_max_connections(),
            metrics=metrics)
        app.state.connection_policy = policy
        metrics.live(lambda: ops.live_values(app.state))
        try:
            yield {POLICY_KEY: policy}  # uvicorn hands the lifespan state to each connection
        finally:
            if cache is not None:
                await cache.aclose()  # lets write-behind land before the process exits
            await catalog.aclose()
            await memo.aclose()
            await http.aclose()

    routes = [
        *served_routes(boss.router, ("/v1", "/latest")),
        *served_routes(objects.router, ("/v1", "/latest")),
        *served_routes(keyvalues.router, ("/v1", "/latest")),
        *served_routes(images.router, ("/v1", "/latest")),
        *served_routes(precomputed.router),
        *served_routes(ops.router),
        *_documentation(),
        *viewer_routes(),
        # BossDB answers its ping at the root (no token needed), as well as the relay under /v1
        Route("/ping/", _root_ping), Route("/ping", _root_ping),
    ]
    # Routes match in order: the voxel routes go first, so the requests that come by the
    # thousand (cuboids) are not tried against twenty metadata paths. The precomputed mesh
    # paths go just before them (a chunk's {key}/{chunk} would take mesh/{name}).
    routes.sort(key=lambda route: not isinstance(route, Route) or (
        "/cutout/" not in route.path and "{chunk}" not in route.path
        and "/mesh/" not in route.path))
    # outermost first: the edge's CORS headers reach every response, 401s and 503s included
    server = settings.server
    middleware = [Middleware(EdgeMiddleware, cors_origins=server.cors_origins,
                             hosts=HostFilter(server.allowed_hosts, server.host), hops=hops,
                             metrics=metrics)]
    if settings.server.tokens:
        # a write token opens the door too (what it may write is decided by the write route)
        middleware.append(Middleware(AuthMiddleware, tokens=(
            *settings.server.tokens, *(settings.server.write_tokens or ()))))
    middleware.append(Middleware(CountingMiddleware, metrics=metrics,
                                 limit=settings.server.max_concurrency))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={RelayError: _relay_error, StarletteHTTPException: _http_error,
                            Exception: _unexpected},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # BossDB paths end in "/"; no 307 dance
    return app
