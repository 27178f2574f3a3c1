"""Stale-if-error: off by default (an upstream failure is an error, never old or zero voxels);
when a source turns it on, an expired cuboid is served for a bounded time after its expiry,
marked ``Warning: 110``, for 5xx and timeouts only: an upstream's 4xx is never masked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import relay.cutout
from relay.app import create_app
from relay.config import Settings

from ..faults import SHAPE_XYZ, FaultServer, voxels_for
from ..servers import ThreadedServer

URL = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"
TTL, STALE = 60.0, 600.0
EXPECTED = voxels_for("Token t")


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    now = [1_000_000.0]
    monkeypatch.setattr(relay.cutout, "wall_clock", lambda: now[0])
    yield now


def _relay(upstream: FaultServer, **source: Any) -> ThreadedServer:
    settings = Settings(sources=[{"collection": "*", "kind": "boss", "url": upstream.url,
                                  "token": "t", "retries": 0, "read_timeout": 0.5,
                                  "ttl_seconds": TTL, **source}],
                        cache={"disk_dir": None})
    return ThreadedServer(create_app(settings))


def _voxels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    z, y, x = SHAPE_XYZ[2], SHAPE_XYZ[1], SHAPE_XYZ[0]
    return np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(z, y, x)


async def test_off_by_default_an_upstream_failure_is_an_error(
        upstream: FaultServer, clock: list[float]) -> None:
    with _relay(upstream) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            np.testing.assert_array_equal(_voxels(await client.get(URL)), EXPECTED)
            clock[0] += TTL + 1  # expired
            upstream.script.append("500")
            failed = await client.get(URL)
    assert failed.status_code == 502 and failed.json()["code"] == 5000
    assert "warning" not in failed.headers


async def test_stale_if_error_serves_marked_old_voxels_within_its_window(
        upstream: FaultServer, clock: list[float]) -> None:
    with _relay(upstream, stale_if_error_seconds=STALE) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            fresh = await client.get(URL)
            np.testing.assert_array_equal(_voxels(fresh), EXPECTED)
            assert "warning" not in fresh.headers
            clock[0] += TTL / 2  # fresh: no upstream read at all
            await client.get(URL)
            assert upstream.cutouts == 1

            for fault in ("500", "stall"):  # a 5xx, and a read timeout
                clock[0] += TTL + 10  # expired; the upstream fails
                upstream.script.append(fault)
                stale = await client.get(URL)
                np.testing.assert_array_equal(_voxels(stale), EXPECTED)
                assert stale.headers["warning"] == '110 relay "Response is Stale"'
                assert int(stale.headers["age"]) >= TTL

                # the next request finds the upstream well: fresh again, no warning
                recovered = await client.get(URL)
                np.testing.assert_array_equal(_voxels(recovered), EXPECTED)
                assert "warning" not in recovered.headers

            # a refresh (access-mode=raw) that fails falls back the same way
            upstream.script.append("500")
            refreshed = await client.get(URL + "?access-mode=raw")
            assert refreshed.headers["warning"].startswith("110 ")
            np.testing.assert_array_equal(_voxels(refreshed), EXPECTED)

            # past the window: an error, not old voxels
            clock[0] += TTL + STALE + 1
            upstream.script.append("500")
            too_old = await client.get(URL)
            assert too_old.status_code == 502

            # an upstream 4xx (here Boss's 400) is passed on, never masked by a stale copy
            await client.get(URL)  # fresh again
            clock[0] += TTL + 1
            upstream.script.append("boss-400")
            refused = await client.get(URL)
            assert refused.status_code == 400 and refused.json()["code"] == 1001
