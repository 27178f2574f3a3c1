"""Counted upstream reads and cache bounds, through real relay subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import zarr

from ..servers import RelayProcess, wait_for, write_config
from ..volumes import truth

CUBOID_BYTES = 512 * 512 * 16  # uint8


def decode(body: bytes, shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    return np.frombuffer(blosc.decompress(body), dtype=dtype).reshape(shape)


async def test_50_concurrent_cold_requests_read_each_cuboid_once(
    fixture_sources: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "relay.yaml", fixture_sources, tmp_path / "cache")
    url = "/v1/cutout/col1/exp1/ch1/0/300:900/200:700/10:30/"  # 2 × 2 × 2 = 8 cuboids
    with RelayProcess(["--config", str(config)]) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
            responses = await asyncio.gather(*(client.get(url) for _ in range(50)))
        assert {r.status_code for r in responses} == {200}
        expected = truth("ch1", 0, (300, 200, 10), (900, 700, 30))
        for response in responses:
            np.testing.assert_array_equal(decode(response.content, (20, 500, 600)), expected)
        assert relay.upstream_reads() == 8


def test_restart_on_the_same_disk_reads_nothing_upstream(
    fixture_sources: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "relay.yaml", fixture_sources, tmp_path / "cache")
    urls = ["/v1/cutout/col1/exp1/ch1/0/0:1000/0:600/0:20/",
            "/v1/cutout/col1/exp1/anno/1/0:300/0:300/0:16/",
            "/v1/cutout/col1/exp1/ch16/2/100:400/0:200/40:60/"]
    with RelayProcess(["--config", str(config)]) as relay:
        first = [httpx.get(relay.url + u, timeout=60).content for u in urls]
        assert relay.upstream_reads() > 0
    with RelayProcess(["--config", str(config)]) as relay:
        second = [httpx.get(relay.url + u, timeout=60).content for u in urls]
        assert relay.upstream_reads() == 0
        assert relay.metrics()["relay_cache_disk_hits_total"] > 0
    assert [blosc.decompress(b) for b in first] == [blosc.decompress(b) for b in second]


def test_a_source_pointed_at_another_store_never_serves_the_old_bytes(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from relay.app import create_app

    from ..conftest import make_settings

    url = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"
    for seed in (1, 2):
        data = np.random.default_rng(seed).integers(0, 256, (8, 64, 64), dtype=np.uint8)
        store = tmp_path / f"store{seed}.zarr"
        array = zarr.create_array(str(store), shape=data.shape, chunks=(8, 32, 32),
                                  dtype="uint8")
        array[...] = data
        sources = [{"collection": "c", "experiment": "e", "channel": "ch", "kind": "zarr",
                    "url": str(store)}]
        # the same names and the same disk cache directory, a different store
        with TestClient(create_app(make_settings(sources, tmp_path / "cache")),
                        base_url="http://localhost") as client:
            np.testing.assert_array_equal(decode(client.get(url).content, (8, 64, 64)), data)


async def test_eviction_while_responses_stream_never_shortens_a_body(tmp_path: Path) -> None:
    """A memory tier that holds one cuboid, no disk tier, and 4 clients each reading a different
    warm cuboid over and over: entries are evicted while others are being sent, and every body
    is whole and right."""
    data = np.random.default_rng(4).integers(0, 256, (16, 1024, 1024), dtype=np.uint8)
    store = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape,
                              chunks=(16, 512, 512), dtype="uint8")
    store[...] = data
    sources = [{"collection": "c", "experiment": "e", "channel": "v", "kind": "zarr",
                "url": str(tmp_path / "v.zarr")}]
    config = write_config(tmp_path / "relay.yaml", sources, None,
                          memory_bytes=CUBOID_BYTES + 1024, decoded_bytes=0)
    boxes = [(x, y) for x in (0, 512) for y in (0, 512)]
    with RelayProcess(["--config", str(config)]) as relay:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:

            async def reader(x: int, y: int) -> int:
                url = f"/v1/cutout/c/e/v/0/{x}:{x + 512}/{y}:{y + 512}/0:16/"
                for _ in range(15):
                    response = await client.get(url)
                    assert response.status_code == 200
                    np.testing.assert_array_equal(decode(response.content, (16, 512, 512)),
                                                  data[:, y:y + 512, x:x + 512])
                return 15

            assert sum(await asyncio.gather(*(reader(x, y) for x, y in boxes))) == 60
        metrics = relay.metrics()
    assert metrics["relay_cache_memory_evictions_total"] > 0  # evictions did happen meanwhile


def test_a_thousand_aborted_requests_leak_no_tasks_or_descriptors(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    """1,000 clients that send a cutout request and hang up before the answer: afterwards the
    relay holds no more file descriptors than before (± a few), has no request or fetch in
    progress, and still answers correctly."""
    import socket

    config = write_config(tmp_path / "relay.yaml", fixture_sources, tmp_path / "cache")
    with RelayProcess(["--config", str(config)]) as relay:
        assert relay.process is not None
        fds = Path(f"/proc/{relay.process.pid}/fd")
        url = "/v1/cutout/col1/exp1/ch1/0/0:1024/0:1000/0:40/"
        httpx.get(relay.url + url, timeout=60)  # warm: the relay has its files and pools open
        before = len(list(fds.iterdir()))
        for i in range(1000):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
                box = f"/v1/cutout/col1/exp1/ch1/0/{i % 900}:{i % 900 + 100}/0:1000/0:40/"
                sock.sendall(f"GET {box} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                # close without reading: the relay's answer goes to a closed socket
        response = httpx.get(relay.url + url, timeout=60)  # the relay is still well
        assert response.status_code == 200
        np.testing.assert_array_equal(decode(response.content, (40, 1000, 1024)),
                                      truth("ch1", 0, (0, 0, 0), (1024, 1000, 40)))
        # aborted requests may still be finishing
        with contextlib.suppress(RuntimeError):  # the asserts below say what is left
            wait_for(lambda: relay.metrics()["relay_inflight_cuboid_fetches"] == 0
                     and len(list(fds.iterdir())) <= before + 4, 30, "the relay to settle")
        assert relay.metrics()["relay_inflight_cuboid_fetches"] == 0
        assert len(list(fds.iterdir())) <= before + 4


def test_damaged_disk_entries_are_never_served_after_a_restart(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    """Warm a disk cache, stop the relay, flip a byte in half the cached files and truncate the
    other half, restart: every answer still equals the store, each damaged entry is counted,
    dropped and read upstream again, and the cache works on (a third pass reads nothing)."""
    config = write_config(tmp_path / "relay.yaml", fixture_sources, tmp_path / "cache",
                          memory_bytes=0, decoded_bytes=0)  # every read goes through the disk
    url = "/v1/cutout/col1/exp1/ch16/0/0:1024/0:1000/0:32/"  # 2 × 2 × 2 = 8 cuboids
    expected = truth("ch16", 0, (0, 0, 0), (1024, 1000, 32))

    def read(relay: RelayProcess) -> None:
        response = httpx.get(relay.url + url, timeout=60)
        assert response.status_code == 200
        np.testing.assert_array_equal(decode(response.content, (32, 1000, 1024), "uint16"),
                                      expected)

    with RelayProcess(["--config", str(config)]) as relay:
        read(relay)
    files = sorted((tmp_path / "cache").rglob("*.val"))
    assert len(files) == 8
    for i, path in enumerate(files):
        data = bytearray(path.read_bytes())
        if i % 2:
            data[len(data) // 3] ^= 0x5A
            path.write_bytes(bytes(data))
        else:
            path.write_bytes(bytes(data[: len(data) // 2]))
    with RelayProcess(["--config", str(config)]) as relay:
        read(relay)
        assert relay.upstream_reads() == 8
        assert relay.metrics()["relay_cache_disk_corrupt_total"] == 8
        read(relay)
        assert relay.upstream_reads() == 8  # re-cached whole: the third pass reads nothing
