"""``relay cache stats|verify|purge`` on a config's disk tier and Redis tier: entries counted
per source and channel, a byte flipped on disk found (and the entry removed), one channel
purged while the others stay warm, beside a running relay and offline."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr

from relay.cache.admin import EntryName, Selection, parse_key

from .servers import RedisServer, RelayProcess, write_config

SHAPE_ZYX = (16, 128, 192)
CUBOIDS = 3 * 2 * 1  # 64 × 64 × 16 cuboids of each channel
CHANNELS = ("a", "b")


def _volume(name: str) -> np.ndarray:
    return np.random.default_rng(CHANNELS.index(name)).integers(0, 256, SHAPE_ZYX, np.uint8)


def _sources(root: Path) -> list[dict[str, Any]]:
    sources = []
    for name in CHANNELS:
        path = root / f"{name}.zarr"
        if not path.exists():
            array = zarr.create_array(str(path), shape=SHAPE_ZYX, chunks=(16, 64, 64),
                                      dtype=np.uint8, fill_value=0)
            array[:] = _volume(name)
        sources.append({"collection": "c", "experiment": "e", "channel": name, "kind": "zarr",
                        "url": path.as_uri(), "voxel_size": [4, 4, 40], "cuboid": [64, 64, 16],
                        "downsample": "none"})
    return sources


def _read_all(relay: RelayProcess, name: str) -> None:
    z, y, x = SHAPE_ZYX
    for y0 in range(0, y, 64):
        for x0 in range(0, x, 64):
            url = f"{relay.url}/v1/cutout/c/e/{name}/0/{x0}:{x0 + 64}/{y0}:{y0 + 64}/0:{z}/"
            response = httpx.get(url, headers={"Accept": "application/npygz"}, timeout=30)
            assert response.status_code == 200


def _check(relay: RelayProcess, name: str) -> None:
    import io
    import zlib

    z, y, x = SHAPE_ZYX
    body = httpx.get(f"{relay.url}/v1/cutout/c/e/{name}/0/0:{x}/0:{y}/0:{z}/",
                     headers={"Accept": "application/npygz"}, timeout=30).content
    np.testing.assert_array_equal(np.load(io.BytesIO(zlib.decompress(body))), _volume(name))


def _cache(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "cache", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=120)


def _flip_a_byte(cache_dir: Path, channel: str) -> str:
    """Flip one byte in the middle of one of ``channel``'s value files; its key."""
    with sqlite3.connect(cache_dir / "cache.db") as db:
        key, filename = db.execute(
            "SELECT key, filename FROM Cache WHERE key LIKE ? AND filename IS NOT NULL",
            (f"%/c/e/{channel}/r0/%",)).fetchone()
    path = cache_dir / filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return str(key)


def test_keys_are_read_back() -> None:
    assert parse_key("v2/zarr-0123abcd/c/e/a/r0/t0/64x64x16/0_0_0") == EntryName("zarr",
                                                                                 "c/e/a", 0)
    assert parse_key("v2/boss-9f/p-anon/x/y/z/r3-mean-from1/t0/512x512x16/1_2_3") == EntryName(
        "boss", "x/y/z", 3)
    assert parse_key("v1/zarr-0/c/e/a/r0/t0/1x1x1/0_0_0") is None
    assert parse_key("meta1/whatever") is None
    pick = Selection(channel="c/*/a", level=0)
    assert pick.picks(EntryName("zarr", "c/e/a", 0), 0)
    assert not pick.picks(EntryName("zarr", "c/e/b", 0), 1)
    assert not pick.picks(EntryName("zarr", "c/e/a", 1), 0)
    assert Selection(orphans=True).picks(None, None)
    assert not Selection(orphans=True).picks(EntryName("zarr", "c/e/a", 0), 0)


def test_stats_verify_and_purge_on_disk(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    config = write_config(tmp_path / "relay.yaml", _sources(tmp_path), cache_dir)
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay.log") as relay:
        for name in CHANNELS:
            _read_all(relay, name)
    # offline: the relay has stopped, its write-behind landed
    stats = _cache(config, "stats")
    assert stats.returncode == 0, stats.stderr
    lines = {line.split()[0]: line for line in stats.stdout.splitlines()[1:]}
    for index, name in enumerate(CHANNELS):
        line = lines[f"c/e/{name}"]
        assert f"source {index} (zarr c/e/{name})" in line
        assert f"{CUBOIDS} entries" in line and "levels r0" in line
    assert f"{2 * CUBOIDS} entries" in stats.stdout.splitlines()[0]

    damaged = _flip_a_byte(cache_dir, "a")
    verify = _cache(config, "verify")
    assert verify.returncode == 1, verify.stderr
    assert f"{damaged} failed its checksum; removed" in verify.stderr
    assert f"{2 * CUBOIDS - 1} whole, 1 damaged (removed)" in verify.stderr
    again = _cache(config, "verify")
    assert again.returncode == 0 and f"{2 * CUBOIDS - 1} whole, 0 damaged" in again.stderr

    with RelayProcess(["--config", str(config)], log=tmp_path / "relay2.log") as relay:
        _check(relay, "a")  # the damaged cuboid was re-read: one upstream read, right voxels
        assert relay.upstream_reads() == 1
        purged = _cache(config, "purge", "--channel", "c/e/a")  # beside the running relay
        assert purged.returncode == 0, purged.stderr
        assert f"removed {CUBOIDS} entries" in purged.stderr
        _check(relay, "a")  # its memory still holds the same voxels: never a wrong byte
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay3.log") as relay:
        _check(relay, "b")  # b is still on disk
        assert relay.upstream_reads() == 0
        _check(relay, "a")  # a was purged: read upstream again
        assert relay.upstream_reads() == CUBOIDS

    refused = _cache(config, "purge")
    assert refused.returncode == 2 and "purge what?" in refused.stderr
    assert _cache(config, "stats", "--source", "7").returncode == 2


def test_stats_and_purge_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path / "relay.yaml", _sources(tmp_path), None,
                          redis_url=redis_server.url, memory_bytes=0)
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay.log") as relay:
        for name in CHANNELS:
            _read_all(relay, name)
    stats = _cache(config, "stats", "--tier", "redis")
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith("redis tier")
    assert f"{2 * CUBOIDS} entries" in stats.stdout.splitlines()[0]
    purged = _cache(config, "purge", "--tier", "redis", "--channel", "c/e/b")
    assert purged.returncode == 0 and f"removed {CUBOIDS} entries" in purged.stderr
    verify = _cache(config, "verify", "--tier", "redis")
    assert verify.returncode == 0 and f"{CUBOIDS} whole, 0 damaged" in verify.stderr
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay2.log") as relay:
        _check(relay, "a")
        assert relay.upstream_reads() == 0  # a, from Redis
        _check(relay, "b")
        assert relay.upstream_reads() == CUBOIDS


@pytest.mark.parametrize("tier", ["disk", "redis"])
def test_a_config_without_the_tier_says_so(tmp_path: Path, tier: str) -> None:
    config = write_config(tmp_path / "relay.yaml", _sources(tmp_path), None)
    result = _cache(config, "stats", "--tier", tier)
    assert result.returncode == 1 and "no " + tier in result.stderr
