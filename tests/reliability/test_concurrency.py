"""Request coalescing, counted at the store itself (nginx ``proxy_cache_lock.t`` and varnish
waiting-list analogues): 100 identical cold requests read each chunk once; overlapping boxes
share the cuboids they have in common; a failing leader releases every waiter with its error,
and the next request starts afresh."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

from relay.app import create_app
from relay.config import Settings

from ..faults import SHAPE_XYZ, FaultServer, voxels_for
from ..servers import StaticFileServer, ThreadedServer
from .conftest import NoiseStore, decode


def _chunk_reads(server: StaticFileServer) -> Counter[str]:
    """GETs of chunk files (not metadata) at the store, by path."""
    return Counter(p for p in server.requested if "/c/" in p)


@pytest.fixture
def served(noise: NoiseStore) -> StaticFileServer:
    return StaticFileServer(Path(noise.source["url"]).parent)


def _relay_over_http(noise: NoiseStore, store: StaticFileServer) -> ThreadedServer:
    source = {**noise.source, "url": f"{store.url}/{Path(noise.source['url']).name}"}
    return ThreadedServer(create_app(Settings(sources=[source], cache={"disk_dir": None})))


async def test_a_hundred_identical_cold_requests_read_the_store_once(
        noise: NoiseStore, served: StaticFileServer) -> None:
    corner = noise.cuboid_boxes()[5]
    with served, _relay_over_http(noise, served) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60,
                                     limits=httpx.Limits(max_connections=100)) as client:
            responses = await asyncio.gather(*(client.get(noise.url(corner))
                                               for _ in range(100)))
    bodies = {blosc.decompress(r.content) for r in responses}
    assert {r.status_code for r in responses} == {200}
    assert len(bodies) == 1  # 100 identical answers
    np.testing.assert_array_equal(decode(responses[0].content), noise.truth(corner))
    reads = _chunk_reads(served)
    assert len(reads) == 4 and set(reads.values()) == {1}  # a cuboid is 2 × 2 chunks, each once


async def test_overlapping_boxes_share_the_cuboids_they_have_in_common(
        noise: NoiseStore, served: StaticFileServer) -> None:
    # two boxes of 2 × 1 × 1 cuboids each, overlapping in the middle column of a 3-wide strip
    # (x 0:128 | 128:256 at 128-voxel cuboids: a box 64:192 touches both; 0:128 and 128:256
    # are each one)
    urls = ["/v1/cutout/rel/noise/img/0/64:192/0:128/0:16/",
            "/v1/cutout/rel/noise/img/0/0:128/0:128/0:16/",
            "/v1/cutout/rel/noise/img/0/128:256/0:128/0:16/"]
    with served, _relay_over_http(noise, served) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
            responses = await asyncio.gather(*(client.get(u) for u in urls for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    data = np.frombuffer(blosc.decompress(responses[0].content), np.uint8).reshape(16, 128, 128)
    np.testing.assert_array_equal(data, noise.data[0:16, 0:128, 64:192])
    reads = _chunk_reads(served)
    assert len(reads) == 8 and set(reads.values()) == {1}  # 2 cuboids × 4 chunks, once each


@pytest.fixture
async def boss() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def test_a_failing_leader_releases_every_waiter_and_the_next_request_retries(
        boss: FaultServer) -> None:
    settings = Settings(sources=[{"collection": "*", "kind": "boss", "url": boss.url,
                                  "token": "t", "retries": 0}], cache={"disk_dir": None})
    url = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"
    boss.script.append("slow-500")  # the one fetch fails after 1.5 s: every request joins it
    with ThreadedServer(create_app(settings)) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=30,
                                     limits=httpx.Limits(max_connections=50)) as client:
            failing = await asyncio.wait_for(
                asyncio.gather(*(client.get(url) for _ in range(50))), 20)
            assert boss.cutouts == 1  # one leader fetch ...
            assert [r.status_code for r in failing] == [502] * 50  # ... its error for all
            assert {r.json()["code"] for r in failing} == {5000}
            after = await client.get(url)  # the failure is not remembered
    assert boss.cutouts == 2
    assert after.status_code == 200
    z, y, x = SHAPE_XYZ[2], SHAPE_XYZ[1], SHAPE_XYZ[0]
    np.testing.assert_array_equal(
        np.frombuffer(blosc.decompress(after.content), np.uint8).reshape(z, y, x),
        voxels_for("Token t"))
