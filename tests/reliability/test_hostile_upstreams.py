"""Upstreams are distrusted and isolated: every body has a cap, a Blosc frame's header is
checked before it is inflated, the geometry an upstream describes is validated before it is
used (in plans and in URLs), and a hung store cannot starve the relay's other sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume

from relay.app import create_app
from relay.config import Settings
from relay.errors import RelayError

from ..faults import DOWNSAMPLE, EXPERIMENT, FaultServer, voxels_for
from ..servers import StaticFileServer, ThreadedServer
from .conftest import RssPeak
from .test_http_faults import SECRET, Relay

MiB = 2**20


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as fault_server:
        yield fault_server


@pytest.mark.parametrize(("script", "status"), [
    (["endless"], 502),   # chunked, no length, never ends
    (["huge"], 502),      # announces 10 GB
    (["bomb"], 502),      # 8 MiB of Blosc that inflates to 2 GiB
])
async def test_a_hostile_cutout_body_costs_little_memory_and_is_an_error(
        server: FaultServer, script: list[str], status: int) -> None:
    if script == ["bomb"]:
        from ..faults import bomb

        bomb()  # made before the measurement starts
    server.script.extend(script)
    relay = Relay(server.url, timeout=30.0, read_timeout=10.0, retries=0)
    try:
        started = time.monotonic()
        with RssPeak() as rss, pytest.raises(RelayError) as info:
            await relay.read()
        elapsed = time.monotonic() - started
    finally:
        await relay.aclose()
    assert info.value.status == status, info.value.message
    assert "larger than expected" in info.value.message or "Blosc frame" in info.value.message
    assert rss.grew < 1.5 * 2**30, rss.grew
    assert elapsed < 10
    assert relay.memory.keys() == []  # nothing cached
    print(f"{script[0]}: RSS grew {rss.grew / MiB:.0f} MiB, upstream wrote {server.sent} bytes")


async def test_endless_metadata_is_an_error(server: FaultServer) -> None:
    server.metadata["/v1/collection/c/experiment/e/channel/ch/"] = "endless"
    relay = Relay(server.url, retries=0)
    try:
        with RssPeak() as rss, pytest.raises(RelayError) as info:
            await relay.read()
    finally:
        await relay.aclose()
    assert info.value.status == 502 and "larger than expected" in info.value.message
    assert rss.grew < 1.5 * 2**30


async def test_a_one_voxel_cuboid_grid_is_read_in_whole_cuboids(server: FaultServer) -> None:
    """An upstream that claims a 1×1×1 cuboid would make a 64×64×8 read 32,768 GETs."""
    server.metadata["/v1/downsample/c/e/ch/"] = {**DOWNSAMPLE,
                                                 "cuboid_size": {"0": [1, 1, 1]}}
    relay = Relay(server.url)
    try:
        np.testing.assert_array_equal(await relay.read(), voxels_for(f"Token {SECRET}"))
    finally:
        await relay.aclose()
    assert server.cutouts == 1


@pytest.mark.parametrize("override", [
    ("/v1/downsample/c/e/ch/", {**DOWNSAMPLE, "cuboid_size": {"0": [0, 0, 0]}}),
    ("/v1/downsample/c/e/ch/", {**DOWNSAMPLE, "cuboid_size": {"0": [-512, 512, 16]}}),
    ("/v1/downsample/c/e/ch/", {**DOWNSAMPLE, "cuboid_size": {"0": [2**20, 2**20, 2**20]}}),
    ("/v1/downsample/c/e/ch/", {**DOWNSAMPLE, "cuboid_size": {"0": "big"}}),
    ("/v1/coord/cf/", {"name": "cf", "x_start": 0, "x_stop": 2**50, "y_start": 0,
                       "y_stop": 64, "z_start": 0, "z_stop": 8, "x_voxel_size": 4,
                       "y_voxel_size": 4, "z_voxel_size": 40, "voxel_unit": "nanometers"}),
    ("/v1/coord/cf/", {"name": "cf", "x_start": 10, "x_stop": 0, "y_start": 0, "y_stop": 64,
                       "z_start": 0, "z_stop": 8, "x_voxel_size": 4, "y_voxel_size": 4,
                       "z_voxel_size": 0, "voxel_unit": "nanometers"}),
    ("/v1/collection/c/experiment/e/", {**EXPERIMENT,
                                        "coord_frame": "../../internal/admin?x="}),
    ("/v1/collection/c/experiment/e/", {**EXPERIMENT, "num_time_samples": 10**9}),
])
async def test_unusable_geometry_is_a_502_and_never_reaches_a_url(
        server: FaultServer, override: tuple[str, Any]) -> None:
    path, body = override
    server.metadata[path] = body
    relay = Relay(server.url)
    try:
        with pytest.raises(RelayError) as info:
            await relay.read()
    finally:
        await relay.aclose()
    assert info.value.status == 502, info.value.message
    assert "unusable" in info.value.message
    assert server.cutouts == 0
    assert not any("internal" in target for target in server.targets)


# --- a hung store ------------------------------------------------------------------------------


def _precomputed(root: Path) -> np.ndarray:
    data = np.random.default_rng(9).integers(0, 256, (64, 256, 256), dtype=np.uint8)
    info = CloudVolume.create_new_info(num_channels=1, layer_type="image", data_type="uint8",
                                       encoding="raw", resolution=[4, 4, 40],
                                       voxel_offset=[0, 0, 0], volume_size=[256, 256, 64],
                                       chunk_size=[64, 64, 16])
    volume = CloudVolume(root.as_uri(), info=info, progress=False, compress=False)
    volume.commit_info()
    volume[:, :, :] = data.transpose(2, 1, 0)
    return data


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A precomputed volume and a zarr array behind a static HTTP server that answers their
    metadata but hangs on every chunk; and a healthy zarr array on local disk."""
    root = tmp_path_factory.mktemp("hung")
    _precomputed(root / "pre")
    data = np.random.default_rng(10).integers(0, 256, (64, 256, 256), dtype=np.uint8)
    for name in ("remote.zarr", "healthy.zarr"):
        array = zarr.create_array(str(root / name), shape=data.shape, chunks=(16, 64, 64),
                                  dtype="uint8", zarr_format=3)
        array[...] = data

    def hang(path: str) -> bool:
        return "/4_4_40/" in path or "/c/" in path  # chunks, not info or zarr.json

    with StaticFileServer(root, hang=hang) as http:
        yield {"url": http.url, "root": root, "data": data}


def _hung_app(stores: dict[str, Any]) -> Any:
    base = {"collection": "c", "experiment": "e", "timeout": 3.0, "read_timeout": 3.0,
            "retries": 0, "max_threads": 2}
    return create_app(Settings(cache={"disk_dir": None}, sources=[
        {**base, "channel": "pre", "kind": "precomputed", "url": f"{stores['url']}/pre"},
        {**base, "channel": "remote", "kind": "zarr", "url": f"{stores['url']}/remote.zarr"},
        {**base, "channel": "ok", "kind": "zarr", "url": str(stores["root"] / "healthy.zarr"),
         "timeout": 60.0},
    ]))


async def test_a_hung_store_ends_its_own_requests_and_stalls_no_other(
        stores: dict[str, Any]) -> None:
    """Eight reads of a hung precomputed store and eight of a hung zarr store over http are in
    flight (more than every default thread pool holds); cold reads of a healthy store still
    come back at once, and the hung ones end with 504 within their timeout."""
    with ThreadedServer(_hung_app(stores)) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:

            async def timed(path: str) -> tuple[int, float]:
                started = time.monotonic()
                response = await client.get(path)
                return response.status_code, time.monotonic() - started

            hung = [asyncio.create_task(timed(f"/v1/cutout/c/e/{channel}/0/{x}:{x + 64}/0:64/"
                                              "0:16/"))
                    for channel in ("pre", "remote") for x in range(0, 192, 24)]
            await asyncio.sleep(0.5)  # let them reach the stores (a measurement, not a sync)
            healthy = [await timed(f"/v1/cutout/c/e/ok/0/{x}:{x + 64}/{y}:{y + 64}/16:32/")
                       for x in (0, 128) for y in (0, 128)]
            results = await asyncio.gather(*hung)
    assert all(status == 200 for status, _ in healthy)
    assert max(elapsed for _, elapsed in healthy) < 5, healthy
    assert {status for status, _ in results} == {504}, results
    # each ends within its timeout (queued behind the source's own two threads at worst)
    assert max(elapsed for _, elapsed in results) < 3.0 * 4 + 2, results
