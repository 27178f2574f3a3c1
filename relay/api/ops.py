"""Operations routes: health, Prometheus metrics, cache statistics."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..metrics import CONTENT_TYPE, LiveValue
from .routing import Router, add_route

__all__ = ["live_values", "router"]

router = Router()


#: tier statistics that are sizes or states (gauges); every other one counts events
_TIER_GAUGES = frozenset({"bytes", "budget_bytes", "entries", "down"})


def live_values(state: Any) -> list[LiveValue]:
    """The app's live state for /metrics and /stats: sizes and states as gauges, what only
    ever grows (each cache tier's hits, errors, evictions…) as counters."""
    cutouts = state.cutouts
    budget, policy = state.budget, state.connection_policy
    values: list[LiveValue] = [
        ("inflight_cuboid_fetches", "gauge", "Cuboid reads in flight", len(cutouts.flights)),
        ("decoded_bytes", "gauge", "Bytes of cuboids held decoded", cutouts.decoded.bytes),
        ("decoded_entries", "gauge", "Cuboids held decoded", len(cutouts.decoded)),
        ("inflight_bytes", "gauge", "Bytes reserved by responses in flight", budget.used),
        ("inflight_budget_bytes", "gauge", "server.max_inflight_bytes", budget.total),
        ("inflight_waiting", "gauge", "Requests waiting for the in-flight budget",
         budget.waiting),
        ("connections_open", "gauge", "Connections open", policy.open),
        ("connections_max", "gauge", "server.max_connections", policy.max_connections),
    ]
    cache = state.cache
    if cache is not None:
        values.append(("cache_pending_writes", "gauge", "Writes on their way to slower tiers",
                       cache.pending_writes))
        for name, value in cache.counters.items():
            values.append((f"cache_{name}_total", "counter", f"Cache {name}", value))
        for tier, stats in cache.tier_stats().items():
            for name, value in stats.items():
                if name in _TIER_GAUGES:
                    values.append((f"cache_{tier}_{name}", "gauge", f"{tier} tier {name}",
                                   value))
                else:
                    values.append((f"cache_{tier}_{name}_total", "counter",
                                   f"{tier} tier {name}", value))
    return values


async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok"}


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def stats(request: Request) -> dict[str, Any]:
    live = live_values(request.app.state)
    counters = dict(request.app.state.metrics.counters)
    counters.update({name: value for name, kind, _, value in live if kind == "counter"})
    return {"counters": counters,
            "gauges": {name: value for name, kind, _, value in live if kind == "gauge"}}


add_route(router, "/healthz", healthz)
add_route(router, "/metrics", metrics)
add_route(router, "/stats", stats)
