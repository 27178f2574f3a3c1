"""Inbound token allowlist, and forwarded tokens that keep callers' cached data apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings

from .servers import ThreadedServer
from .volumes import truth

GOOD, OTHER = "good-token-1", "other-token-2"
ROUTES = [
    "/v1/collection/",
    "/v1/collection/col1",
    "/v1/collection/col1/experiment/",
    "/v1/collection/col1/experiment/exp1",
    "/v1/collection/col1/experiment/exp1/channel/",
    "/v1/collection/col1/experiment/exp1/channel/ch1/",
    "/v1/coord/",
    "/v1/coord/col1_exp1",
    "/v1/downsample/col1/exp1/ch1",
    "/v1/cutout/col1/exp1/ch1/0/0:10/0:10/0:10/",
    "/latest/cutout/col1/exp1/ch1/0/0:10/0:10/0:10/",
    "/metrics",
    "/stats",
    "/v1/nothing/here",
]


def _settings(sources: list[dict[str, Any]], tokens: list[str] | None = None) -> Settings:
    return Settings(sources=sources, cache={"disk_dir": None},
                    server={"tokens": tokens})


@pytest.fixture
def guarded(fixture_sources: list[dict[str, Any]]) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(fixture_sources, [GOOD, OTHER])),
                    base_url="http://localhost") as client:
        yield client


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("authorization", [None, "Token wrong", "Token ", "Basic Z29vZA==",
                                           f"Token {GOOD}x", GOOD, f"Token{GOOD}"])
def test_every_route_needs_a_listed_token(guarded: TestClient, route: str,
                                          authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = guarded.get(route, headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == 401 and response.json()["code"] == 3004
    assert response.headers["access-control-allow-origin"] == "*"
    assert GOOD not in response.text


@pytest.mark.parametrize("route", ROUTES[:-1])
@pytest.mark.parametrize("scheme", ["Token", "token", "Bearer"])
def test_listed_tokens_pass(guarded: TestClient, route: str, scheme: str) -> None:
    assert guarded.get(route, headers={"Authorization": f"{scheme} {OTHER}"}).status_code == 200


def test_health_ping_and_preflight_stay_open(guarded: TestClient) -> None:
    assert guarded.get("/healthz").status_code == 200
    for ping in ("/ping/", "/ping"):  # BossDB's, at the root: no token, as BossDB
        answer = guarded.get(ping)
        assert answer.status_code == 200 and "ip" in answer.json()
    assert guarded.get("/v1/ping/").status_code == 401
    preflight = guarded.options("/v1/cutout/col1/exp1/ch1/0/0:10/0:10/0:10/", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204


def test_forwarded_tokens_never_share_cached_entries(fixture_sources: list[dict[str, Any]],
                                                     tmp_path: Path) -> None:
    """Front relay (forwarding each caller's token, with a disk cache) → inner relay that
    only admits GOOD. After GOOD warms the front's cache, callers without GOOD still get the
    inner relay's 401, not GOOD's cached voxels."""
    inner = create_app(_settings(fixture_sources, [GOOD]))
    with ThreadedServer(inner) as server:
        front = Settings(
            sources=[{"collection": "*", "kind": "boss", "url": server.url,
                      "forward_client_token": True, "retries": 0}],
            cache={"disk_dir": tmp_path / "cache"},
        )
        url = "/v1/cutout/col1/exp1/ch1/0/0:100/0:50/0:10/"
        with TestClient(create_app(front), base_url="http://localhost") as client:
            ok = client.get(url, headers={"Authorization": f"Token {GOOD}"})
            assert ok.status_code == 200
            data = np.frombuffer(blosc.decompress(ok.content), np.uint8).reshape(10, 50, 100)
            np.testing.assert_array_equal(data, truth("ch1", 0, (0, 0, 0), (100, 50, 10)))
            for other in (None, f"Token {OTHER}", "Token guess"):
                headers = {"Authorization": other} if other else {}
                denied = client.get(url, headers=headers)
                assert denied.status_code == 401, denied.text
                assert denied.json()["code"] == 3004
                metadata = client.get("/v1/collection/col1/experiment/exp1/channel/ch1/",
                                      headers=headers)
                assert metadata.status_code == 401
            again = client.get(url, headers={"Authorization": f"Token {GOOD}"})
            assert again.status_code == 200
            reads = client.app.state.metrics.counters["upstream_reads_total"]  # type: ignore[attr-defined]
            # GOOD's cuboid was read once; the others were refused upstream at their (separately
            # cached) metadata, before any cuboid: GOOD's metadata was not shared either
            assert reads == 1
