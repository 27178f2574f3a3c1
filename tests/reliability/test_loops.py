"""Chains know themselves: every relay adds itself to ``Via`` upstream, a request that comes
back round a loop is refused at once with 508 naming the relays, and a hop limit guards
against loops that ``Via`` cannot see."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from relay.app import create_app
from relay.config import Settings

from ..faults import FaultServer
from ..servers import ThreadedServer

CHANNEL = "/v1/collection/c/experiment/e/channel/ch/"
CUTOUT = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"


def _relay(upstream: str, relay_id: str) -> Starlette:
    return create_app(Settings(
        server={"relay_id": relay_id},
        cache={"disk_dir": None},
        sources=[{"collection": "*", "kind": "boss", "url": upstream, "timeout": 30}],
    ))


def _requests(app: Starlette) -> int:
    """Requests that reached the relay: served, or refused at its edge as a loop."""
    counters = app.state.metrics.counters
    return int(counters["requests_total"] + counters["loops_refused_total"])


@pytest.mark.parametrize("path", [CHANNEL, CUTOUT, "/v1/collection/"])
def test_a_two_relay_loop_is_refused_at_once_and_named(path: str) -> None:
    """A's only source is B and B's only source is A (two ``kind: boss`` sources pointing at
    each other): without Via the first request would circle until a timeout."""
    # the sockets are bound first, so each relay can be configured with the other's address
    a_server = ThreadedServer(None)
    b_server = ThreadedServer(None)
    a_app, b_app = _relay(b_server.url, "lab-a"), _relay(a_server.url, "lab-b")
    a_server.server.config.app, b_server.server.config.app = a_app, b_app
    with a_server, b_server:
        started = time.monotonic()
        response = httpx.get(a_server.url + path, timeout=60)
        elapsed = time.monotonic() - started
        counts = _requests(a_app), _requests(b_app)
    assert response.status_code == 508, response.text
    body = response.json()
    assert body["code"] == 5008
    assert "relay-lab-a → relay-lab-b → relay-lab-a" in body["message"]
    assert elapsed < 5
    assert max(counts) <= 4, counts


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def test_each_hop_adds_itself_to_via(upstream: FaultServer) -> None:
    inner = _relay(upstream.url, "inner")
    with ThreadedServer(inner) as inner_server:
        front = _relay(inner_server.url, "front")
        with ThreadedServer(front) as front_server:
            async with httpx.AsyncClient(base_url=front_server.url, timeout=60) as client:
                response = await client.get(CUTOUT, headers={"Via": "1.1 proxy.example.org"})
    assert response.status_code == 200
    assert upstream.vias
    assert set(upstream.vias) == {"1.1 proxy.example.org, 1.1 relay-front, 1.1 relay-inner"}


async def test_past_the_hop_limit_a_request_is_refused(upstream: FaultServer) -> None:
    app = create_app(Settings(server={"max_hops": 3}, cache={"disk_dir": None},
                              sources=[{"collection": "*", "kind": "boss",
                                        "url": upstream.url}]))
    with ThreadedServer(app) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
            via = ", ".join(f"1.1 proxy{i}" for i in range(3))
            refused = await client.get(CHANNEL, headers={"Via": via})
            allowed = await client.get(CHANNEL, headers={"Via": "1.1 proxy0, 1.1 proxy1"})
    assert refused.status_code == 508 and "server.max_hops" in refused.json()["message"]
    assert allowed.status_code == 200
