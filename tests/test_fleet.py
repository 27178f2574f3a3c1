"""Relays sharing a real Redis (a single server, then a 3-master Cluster), as separate
processes over one zarr store served by HTTP, where every chunk read is counted at the store:
what one relay read, another serves without reading; concurrent cold readers read each chunk
once fleet-wide; a Redis killed, restarted empty or filled with garbage never costs a request
or a voxel; a relay killed while it holds a lease keeps the others waiting no longer than the
lease."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from intern.remote.boss import BossRemote

from .servers import (
    NginxBalancer,
    RedisServer,
    RelayProcess,
    StaticFileServer,
    wait_for,
    write_config,
)

SHAPE_ZYX = (32, 256, 256)
CHUNK_ZYX = (8, 64, 64)
DATA = np.random.default_rng(14).integers(0, 2**16, SHAPE_ZYX, dtype=np.uint16)
LEASE = 2.0


def write_store(root: Path) -> Path:
    store = root / "vol.zarr"
    array = zarr.create_array(str(store), shape=SHAPE_ZYX, chunks=CHUNK_ZYX, dtype="uint16",
                              zarr_format=3)
    array[...] = DATA
    return store


def chunk_reads(server: StaticFileServer) -> collections.Counter[str]:
    return collections.Counter(p for p in server.requested if "/c/" in p)


def relay(root: Path, name: str, store_url: str, redis_url: str | None) -> RelayProcess:
    source = {"collection": "col", "experiment": "exp", "channel": "ch", "kind": "zarr",
              "url": store_url, "voxel_size": [4, 4, 40], "cuboid": [64, 64, 8]}
    cache: dict[str, Any] = {"memory_bytes": 64 * 2**20, "redis_lease_seconds": LEASE}
    if redis_url is not None:
        cache["redis_url"] = redis_url
    config = write_config(root / f"{name}.yaml", [source], root / f"{name}-cache", **cache)
    return RelayProcess(["--config", str(config)], log=root / f"{name}.log")


def cutout(relay: RelayProcess, x: tuple[int, int], y: tuple[int, int],
           z: tuple[int, int], refresh: bool = False) -> np.ndarray:
    url = (f"{relay.url}/v1/cutout/col/exp/ch/0/{x[0]}:{x[1]}/{y[0]}:{y[1]}/{z[0]}:{z[1]}/")
    headers = {"Accept": "application/blosc"}
    if refresh:
        headers["Cache-Control"] = "no-cache"  # read upstream again, and store what was read
    answer = httpx.get(url, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    got = np.frombuffer(blosc.decompress(answer.content), np.uint16)
    return got.reshape(z[1] - z[0], y[1] - y[0], x[1] - x[0])


def check(relay: RelayProcess, x: tuple[int, int], y: tuple[int, int],
          z: tuple[int, int], refresh: bool = False) -> None:
    got = cutout(relay, x, y, z, refresh)
    assert np.array_equal(got, DATA[z[0]:z[1], y[0]:y[1], x[0]:x[1]])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StaticFileServer]:
    write_store(tmp_path)
    with StaticFileServer(tmp_path) as server:
        yield server


def test_what_one_relay_read_another_serves_with_no_upstream_read(
        tmp_path: Path, store: StaticFileServer, redis_url: str) -> None:
    url = f"{store.url}/vol.zarr"
    with relay(tmp_path, "a", url, redis_url) as a, relay(tmp_path, "b", url, redis_url) as b:
        check(a, (30, 200), (10, 140), (3, 20))
        read = chunk_reads(store)
        assert read and set(read.values()) == {1}
        check(b, (30, 200), (10, 140), (3, 20))  # B never saw it: Redis has it
        check(b, (64, 128), (64, 128), (8, 16))  # a part of it, one whole cuboid
        assert chunk_reads(store) == read  # not one more chunk read at the store
        assert b.metrics()["relay_cache_redis_hits_total"] > 0
        stats = httpx.get(f"{b.url}/stats", timeout=10).json()
        counters, gauges = stats["counters"], stats["gauges"]
        assert counters["cache_redis_hits_total"] > 0 and counters["cache_redis_errors_total"] == 0
        assert {"cache_redis_lease_waits_total", "cache_redis_lease_takeovers_total"} <= set(
            counters)
        assert gauges["cache_redis_down"] == 0


def test_concurrent_cold_readers_read_each_chunk_once(
        tmp_path: Path, store: StaticFileServer, redis_url: str) -> None:
    url = f"{store.url}/vol.zarr"
    boxes = [((0, 192), (0, 192), (0, 24)), ((64, 256), (32, 224), (4, 32)),
             ((10, 250), (60, 130), (0, 32)), ((128, 256), (0, 256), (8, 16))]
    with relay(tmp_path, "a", url, redis_url) as a, relay(tmp_path, "b", url, redis_url) as b:
        jobs = [(r, box) for box in boxes for r in (a, b)] * 2
        start = threading.Barrier(len(jobs))

        def read(job: tuple[RelayProcess, Any]) -> None:
            start.wait()
            check(job[0], *job[1])

        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(read, jobs))
        read_once = chunk_reads(store)
        assert read_once and max(read_once.values()) == 1, read_once.most_common(3)
        # what a relay did not read itself, Redis gave it (found there, or waited for while
        # the other relay read it)
        assert sum(r.metrics()["relay_cache_redis_hits_total"] for r in (a, b)) > 0
        assert sum(r.upstream_reads() for r in (a, b)) == len(read_once)


def test_redis_killed_then_restarted_empty(tmp_path: Path, store: StaticFileServer) -> None:
    url = f"{store.url}/vol.zarr"
    with RedisServer(tmp_path / "redis") as redis, \
            relay(tmp_path, "a", url, redis.url) as a, relay(tmp_path, "b", url, redis.url) as b:
        check(a, (0, 128), (0, 128), (0, 8))
        redis.kill()
        started = time.monotonic()
        for i, r in enumerate((a, b, a, b)):  # every request succeeds, with the right voxels
            check(r, (0, 128), (0, 128), (0, 8))
            check(r, (i * 32, i * 32 + 100), (50, 200), (i, 20 + i))
        assert time.monotonic() - started < 20
        redis.start()  # back, and empty
        deadline = time.monotonic() + 30
        box = ((128, 256), (128, 256), (24, 32))  # never read through B
        while int(redis.cli("dbsize")) < 4:  # until A stored the box's 4 cuboids in Redis again
            assert time.monotonic() < deadline, "the relays never used Redis again"
            check(a, *box, refresh=True)
        # B's breaker gives Redis a new try too
        wait_for(lambda: not b.metrics()["relay_cache_redis_down"],
                 deadline - time.monotonic(), "B trying Redis again")
        before = chunk_reads(store)
        check(b, *box)
        assert chunk_reads(store) == before  # B read it from Redis
        assert a.metrics()["relay_cache_redis_down"] == 0


def test_garbage_over_every_value_serves_nothing_wrong(
        tmp_path: Path, store: StaticFileServer, redis_server: RedisServer) -> None:
    url = f"{store.url}/vol.zarr"
    redis_server.cli("flushall")  # the module's other tests wrote there too
    with relay(tmp_path, "a", url, redis_server.url) as a, \
            relay(tmp_path, "b", url, redis_server.url) as b:
        check(a, (0, 256), (0, 256), (0, 32))
        keys = redis_server.cli("--scan", "--pattern", "relay:*").split()
        assert len(keys) == 4 * 4 * 4
        for key in keys:
            redis_server.cli("set", key, "garbage, not a cuboid")
        check(b, (0, 256), (0, 256), (0, 32))
        check(b, (17, 99), (3, 250), (5, 27))
        assert b.metrics()["relay_cache_redis_corrupt_total"] > 0
        assert max(chunk_reads(store).values()) == 2  # read again by B, never served wrong
        redis_server.cli("flushall")


def test_a_leader_killed_mid_fetch_keeps_nobody_beyond_its_lease(tmp_path: Path,
                                                                 redis_server: RedisServer) -> None:
    write_store(tmp_path)
    first = threading.Event()
    hung: list[str] = []

    def hang(path: str) -> bool:
        # the first read of chunk (0, 0, 0) never answers: its reader dies holding the lease
        if path.endswith("/c/0/0/0") and not first.is_set():
            first.set()
            hung.append(path)
            return True
        return False

    with StaticFileServer(tmp_path, hang=hang) as store:
        url = f"{store.url}/vol.zarr"
        with relay(tmp_path, "a", url, redis_server.url) as a, \
                relay(tmp_path, "b", url, redis_server.url) as b, ThreadPoolExecutor(2) as pool:
            leader = pool.submit(lambda: httpx.get(
                f"{a.url}/v1/cutout/col/exp/ch/0/0:64/0:64/0:8/", timeout=60))
            assert first.wait(30)
            leases = redis_server.cli("--scan", "--pattern", "relay:*:lease").split()
            assert len(leases) == 1  # A holds the lease on the cuboid it reads
            waiter = pool.submit(check, b, (0, 64), (0, 64), (0, 8))
            # B is waiting on A's lease
            wait_for(lambda: b.metrics().get("relay_cache_redis_lease_waits_total", 0) > 0, 30,
                     "B waiting on A's lease")
            assert a.process is not None
            a.process.kill()  # -9, mid-fetch, holding the lease
            killed = time.monotonic()
            waiter.result(timeout=30)  # B's voxels are right
            assert time.monotonic() - killed <= LEASE + 1.0 + 2.0
            assert b.metrics()["relay_cache_redis_lease_takeovers_total"] == 1
            with pytest.raises(httpx.TransportError):
                leader.result()
    redis_server.cli("flushall")


def test_the_fleet_recipe_behind_nginx_read_with_intern_and_cloudvolume(
        tmp_path: Path, store: StaticFileServer) -> None:
    """docker-compose.fleet.yml's topology on loopback: Redis, three relays and nginx with the
    recipe's own config (consistent hashing on the URI); intern reads the volume in the BossDB
    dialect, cloud-volume in the precomputed one, and the store sees each chunk read once."""
    url = f"{store.url}/vol.zarr"
    with RedisServer(tmp_path / "redis") as redis, \
            relay(tmp_path, "r1", url, redis.url) as r1, \
            relay(tmp_path, "r2", url, redis.url) as r2, \
            relay(tmp_path, "r3", url, redis.url) as r3, \
            NginxBalancer(tmp_path / "nginx", [r.host for r in (r1, r2, r3)]) as nginx:
        remote = BossRemote({"protocol": "http", "host": f"127.0.0.1:{nginx.port}",
                             "token": "public"})
        channel = remote.get_channel("ch", "col", "exp")
        got = remote.get_cutout(channel, 0, [0, 256], [0, 256], [0, 32])
        assert np.array_equal(got, DATA)
        volume = CloudVolume(f"precomputed://{nginx.url}/precomputed/col/exp/ch",
                             progress=False, cache=False)
        assert np.array_equal(np.asarray(volume[:, :, :])[..., 0].transpose(2, 1, 0), DATA)
        assert np.array_equal(np.asarray(volume[17:201, 5:99, 3:30])[..., 0].transpose(2, 1, 0),
                              DATA[3:30, 5:99, 17:201])
        reads = chunk_reads(store)
        assert len(reads) == 4 * 4 * 4 and max(reads.values()) == 1
        served = [r.metrics().get("relay_requests_total", 0) for r in (r1, r2, r3)]
        assert sum(1 for count in served if count > 0) >= 2, served  # the ring spreads them


def test_the_compose_fleet_is_the_topology_tested_above(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.fleet.yml names the relays nginx-fleet.conf balances, gives each the one
    Redis, and its environment turns the image's own config into a fleet member."""
    import yaml

    from relay.config import load_settings

    from .servers import FLEET_NGINX, REPO

    compose = yaml.safe_load((REPO / "docker-compose.fleet.yml").read_text())
    services = compose["services"]
    relays = sorted(name for name in services if name.startswith("relay"))
    assert relays == ["relay1", "relay2", "relay3"]
    nginx = FLEET_NGINX.read_text()
    assert "hash $request_uri consistent;" in nginx
    assert all(f"server {name}:8000" in nginx for name in relays)
    assert any(v.startswith("./docker/nginx-fleet.conf:") for v in services["nginx"]["volumes"])
    assert "redis-server" in services["redis"]["command"]
    for name in relays:
        environment = services[name]["environment"]
        assert environment["RELAY_CACHE__REDIS_URL"] == "redis://redis:6379/0"
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(REPO / "docker" / "relay.yaml")
        assert settings.cache.redis_url == "redis://redis:6379/0"
        assert settings.cache.disk_dir is not None and settings.cache.memory_bytes > 0
        # one durable state (metadata, reserved ids) for the whole fleet
        assert "fleet-state:/state" in services[name]["volumes"]
        assert str(settings.server.state_dir) == "/state"
