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


class _Exploit:
    """A pickle that would leave a file behind if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_tampered_cache_directory_runs_nothing_and_deletes_nothing(tmp_path: Path) -> None:
    """Finding 6 of issue 25: a ``cache.db`` row in diskcache's pickle mode was unpickled by
    ``relay cache verify`` (and by a relay reading that key), and a row naming an absolute
    path got that file deleted. Such rows are foreign: reported, never read, left alone, and a
    relay reads those cuboids upstream again."""
    import pickle

    cache_dir = tmp_path / "cache"
    config = write_config(tmp_path / "relay.yaml", _sources(tmp_path), cache_dir)
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay.log") as relay:
        _read_all(relay, "a")
    marker, victims = tmp_path / "exploited", [tmp_path / "victim", tmp_path / "victim2"]
    for victim in victims:
        victim.write_text("not the cache's")
    with sqlite3.connect(cache_dir / "cache.db") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM Cache ORDER BY key")]
        db.execute("UPDATE Cache SET mode = 4, filename = NULL, value = ? WHERE key = ?",
                   (pickle.dumps(_Exploit(marker)), keys[0]))
        db.execute("UPDATE Cache SET mode = 2, filename = ? WHERE key = ?",
                   (str(victims[0]), keys[1]))  # an absolute path
        db.execute("UPDATE Cache SET mode = 2, filename = ? WHERE key = ?",
                   ("../victim2", keys[2]))  # a path out of the directory
        db.execute("UPDATE Cache SET mode = 3 WHERE key = ?", (keys[3],))  # text mode
    verify = _cache(config, "verify")
    assert verify.returncode == 1, verify.stderr
    assert "4 foreign (left alone)" in verify.stderr, verify.stderr
    assert f"{CUBOIDS - 4} whole, 0 damaged" in verify.stderr
    assert "Traceback" not in verify.stderr
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay2.log") as relay:
        _check(relay, "a")  # the four are read upstream again, and written over
        assert relay.upstream_reads() == 4
    assert _cache(config, "verify").returncode == 0
    assert _cache(config, "purge", "--all").returncode == 0
    assert not marker.exists()
    assert all(victim.read_text() == "not the cache's" for victim in victims)


def test_foreign_redis_keys_are_counted_and_left_alone(tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    """Finding 15 of issue 25: ``relay cache stats|verify|purge`` crashed with a traceback on
    one foreign key under the prefix (a name that is not UTF-8, a hash), and ``purge --all``
    could then not clean the tier."""
    prefix = f"t-{tmp_path.name}:"
    config = write_config(tmp_path / "relay.yaml", _sources(tmp_path), None,
                          redis_url=redis_server.url, redis_prefix=prefix, memory_bytes=0)
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay.log") as relay:
        _read_all(relay, "a")
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set(prefix.encode() + b"{\xff\xfe}", b"x")
    client.hset(f"{prefix}{{a-hash}}", "field", "value")
    client.set(f"{prefix}{{another-program}}", b"its own bytes")
    try:
        stats = _cache(config, "stats", "--tier", "redis")
        assert stats.returncode == 0, stats.stderr
        assert "2 keys not a relay's, left alone" in stats.stdout
        verify = _cache(config, "verify", "--tier", "redis")
        assert verify.returncode == 1, verify.stderr
        assert f"{CUBOIDS} whole, 0 damaged (removed), 1 foreign (left alone)" in verify.stderr
        purged = _cache(config, "purge", "--tier", "redis", "--all")
        assert purged.returncode == 0, purged.stderr
        for result in (stats, verify, purged):
            assert "Traceback" not in result.stdout + result.stderr
        left = set(client.scan_iter(match=prefix.encode() + b"*"))
        assert left >= {prefix.encode() + b"{\xff\xfe}", f"{prefix}{{a-hash}}".encode()}
        assert not any(b"/c/e/a/" in key for key in left)  # the relay's entries: purged
    finally:
        client.close()
