"""Security: clients cannot steer the relay to hosts the config does not name, and CORS origins
are configurable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings

from ..faults import FaultServer
from ..servers import ThreadedServer


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


@pytest.mark.parametrize("path", [
    "/v1/collection/evil.example.org/experiment/e/channel/ch/",
    "/v1/collection/user@evil.example.org/experiment/",
    "/v1/cutout/c/e/http:%2F%2Fevil.example.org/0/0:1/0:1/0:1/",
    "/v1/cutout/c/e/ch/0/0:1/0:1/0:1/?url=http://evil.example.org/",
    "/v1/coord/..%2F..%2Fadmin",
    "/v1/collection/%2F%2Fevil.example.org%2Fx/experiment/",
    "/precomputed/c/e/%40evil/info",
])
async def test_names_and_queries_never_reach_another_host(upstream: FaultServer,
                                                          path: str) -> None:
    """Only the configured upstream is ever contacted. There is no network here, so an attempt
    to reach any other host would end in a 502/503/504; instead hostile names are refused (or
    answered by the configured upstream), and nothing of them or of the query reaches it."""
    settings = Settings(sources=[{"collection": "*", "kind": "boss",
                                  "url": upstream.url, "retries": 0}],
                        cache={"disk_dir": None})
    with ThreadedServer(create_app(settings)) as relay:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            response = await client.get(path)
    assert response.status_code in (200, 400, 404), response.text
    assert not any("evil" in target or "url=" in target for target in upstream.targets)


def test_cors_origins_are_configurable(fixture_sources: list[dict[str, Any]]) -> None:
    settings = Settings(sources=fixture_sources, cache={"disk_dir": None},
                        server={"cors_origins": ["https://viewer.example.org"]})
    url = "/v1/collection/col1/experiment/exp1/channel/ch1/"
    with TestClient(create_app(settings)) as client:
        allowed = client.get(url, headers={"Origin": "https://viewer.example.org"})
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.example.org"
        assert "Origin" in allowed.headers["vary"]
        other = client.get(url, headers={"Origin": "https://elsewhere.example.org"})
        assert "access-control-allow-origin" not in other.headers
        preflight = client.options(url, headers={"Origin": "https://elsewhere.example.org",
                                                 "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers
