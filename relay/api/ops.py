"""Operations routes: health, Prometheus metrics, cache statistics."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse

from .routing import Router, add_route

__all__ = ["router"]

router = Router()


def _gauges(request: Request) -> dict[str, int]:
    state = request.app.state
    cutouts = state.cutouts
    budget, policy = state.budget, state.connection_policy
    gauges: dict[str, int] = {"inflight_cuboid_fetches": len(cutouts.flights),
                              "decoded_bytes": cutouts.decoded.bytes,
                              "decoded_entries": len(cutouts.decoded),
                              "inflight_bytes": budget.used,
                              "inflight_budget_bytes": budget.total,
                              "inflight_waiting": budget.waiting,
                              "connections_open": policy.open,
                              "connections_max": policy.max_connections}
    cache = state.cache
    if cache is not None:
        gauges["cache_pending_writes"] = cache.pending_writes
        for name, value in cache.counters.items():
            gauges[f"cache_{name}_total"] = value
        for tier, stats in cache.tier_stats().items():
            for name, value in stats.items():
                gauges[f"cache_{tier}_{name}"] = value
    return gauges


async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok"}


async def metrics(request: Request) -> PlainTextResponse:
    text = request.app.state.metrics.render(_gauges(request))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def stats(request: Request) -> dict[str, Any]:
    return {"counters": dict(request.app.state.metrics.counters), "gauges": _gauges(request)}


add_route(router, "/healthz", healthz)
add_route(router, "/metrics", metrics)
add_route(router, "/stats", stats)
