"""The HTTP seam against a misbehaving loopback server: every fault ends in a successful retry
or the right BossDB error; nothing is cached from a failure; no zeros stand in for data."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

from relay.cache import DiskTier, MemoryTier, TieredCache
from relay.catalog import Catalog
from relay.codecs import packed_blosc_frame, unpack_cuboid
from relay.config import SourceSettings
from relay.cutout import CutoutRequest, CutoutService
from relay.errors import RelayError
from relay.geometry import Box
from relay.metrics import Metrics
from relay.model import ChannelRef
from relay.upstreams.base import UpstreamContext
from relay.upstreams.http import HttpPool
from relay.upstreams.kinds import registry

from ..faults import SHAPE_XYZ, FaultServer, voxels_for
from ..servers import RelayProcess, write_config

REF = ChannelRef("c", "e", "ch")
BOX = Box.of((0, 0, 0), SHAPE_XYZ)
SECRET = "s3cr3t-token-value"


class Relay:
    """A CutoutService over a boss source pointed at ``url``, with a memory tier to inspect."""

    def __init__(self, url: str, **source: Any) -> None:
        settings = {"connect_timeout": 1.0, "read_timeout": 0.5, "timeout": 5.0, "retries": 2,
                    "token": SECRET, **source}
        self.source = SourceSettings(collection="*", kind="boss", url=url, **settings)
        self.memory = MemoryTier(2**26)
        self.http = HttpPool()
        self.catalog = Catalog([self.source], registry, UpstreamContext(self.http))
        self.service = CutoutService(self.catalog, TieredCache([self.memory]), Metrics())

    async def read(self, token: str | None = None, refresh: bool = False) -> np.ndarray:
        channel = await self.catalog.channel(REF, token)
        return await self.service.read(CutoutRequest(channel, 0, BOX, refresh=refresh,
                                                     token=token))

    async def aclose(self) -> None:
        await self.catalog.aclose()
        await self.http.aclose()


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
async def relay(server: FaultServer) -> AsyncIterator[Relay]:
    relay = Relay(server.url)
    yield relay
    await relay.aclose()


EXPECTED = voxels_for(f"Token {SECRET}")


async def test_an_upstream_relays_blosc_frame_is_cached_as_it_came(server: FaultServer,
                                                                    relay: Relay) -> None:
    """The fault server compresses with blosclz, the relay itself with lz4: the cached frame
    still names blosclz, so it was kept rather than compressed again, and it decodes to the
    upstream's voxels."""
    np.testing.assert_array_equal(await relay.read(), EXPECTED)
    (key,) = relay.memory.keys()
    packed = await relay.memory.get(key)
    assert packed is not None
    frame = packed_blosc_frame(packed, EXPECTED.shape, EXPECTED.dtype)
    assert frame is not None
    assert frame[2] >> 5 == 0  # Blosc1 flags, bits 5-7: the compressor; 0 is blosclz
    assert blosc.decompress(bytes(frame)) == EXPECTED.tobytes()


@pytest.mark.parametrize("script", [["503"], ["429"], ["reset"], ["truncate"],
                                    ["429", "reset", "ok"]])
async def test_transient_faults_are_retried(server: FaultServer, relay: Relay,
                                            script: list[str]) -> None:
    server.script.extend(script)
    started = time.monotonic()
    np.testing.assert_array_equal(await relay.read(), EXPECTED)
    assert server.cutouts == len([s for s in script if s != "ok"]) + 1
    if script == ["503"]:
        assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured


@pytest.mark.parametrize(("script", "status", "code"), [
    (["500"], 502, 5000),
    (["503"] * 3, 503, 5001),
    (["429"] * 3, 503, 5001),
    (["reset"] * 3, 502, 5000),
    (["truncate"] * 3, 502, 5000),
    (["short"], 502, 5000),
    (["html"], 502, 5000),
    (["stall"], 504, 5002),
    (["boss-400"], 400, 1001),
])
async def test_faults_that_persist_become_boss_errors(server: FaultServer, relay: Relay,
                                                      script: list[str], status: int,
                                                      code: int) -> None:
    server.script.extend(script)
    with pytest.raises(RelayError) as info:
        await relay.read()
    assert (info.value.status, info.value.code) == (status, code)
    assert set(info.value.to_json()) == {"status", "code", "message"}
    assert relay.memory.stats()["entries"] == 0  # nothing cached from a failure
    # the next read goes upstream again and gets the real voxels, never zeros
    np.testing.assert_array_equal(await relay.read(), EXPECTED)
    assert relay.memory.stats()["entries"] == 1


async def test_a_stalled_upstream_fails_within_the_read_timeout(server: FaultServer,
                                                                relay: Relay) -> None:
    server.script.append("stall")
    started = time.monotonic()
    with pytest.raises(RelayError):
        await relay.read()
    assert time.monotonic() - started < 2.0  # read timeout 0.5 s, not retried


async def test_connection_refused_is_503_within_the_total_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        relay = Relay(f"http://127.0.0.1:{port}", timeout=3.0)
        started = time.monotonic()
        with pytest.raises(RelayError) as info:
            await relay.read()
        await relay.aclose()
    assert info.value.status == 503
    assert time.monotonic() - started < 3.5


async def test_the_total_timeout_bounds_retries(server: FaultServer) -> None:
    server.script.extend(["503"] * 10)  # each asks for a 1 s wait
    relay = Relay(server.url, timeout=1.5, retries=10)
    started = time.monotonic()
    with pytest.raises(RelayError) as info:
        await relay.read()
    await relay.aclose()
    assert info.value.status == 504
    assert time.monotonic() - started < 2.5


# --- credentials ------------------------------------------------------------------------------


async def test_the_source_token_goes_upstream_as_boss_expects(server: FaultServer,
                                                              relay: Relay) -> None:
    await relay.read(token="Token someone-else")  # not forwarding: the caller's is ignored
    assert server.authorizations == [f"Token {SECRET}"]


async def test_forwarded_tokens_partition_the_cache(server: FaultServer) -> None:
    relay = Relay(server.url, token=None, forward_client_token=True)
    alice, bob = "Token alice-token", "Bearer bob-token"
    np.testing.assert_array_equal(await relay.read(alice), voxels_for(alice))
    np.testing.assert_array_equal(await relay.read(bob), voxels_for(bob))
    assert not np.array_equal(voxels_for(alice), voxels_for(bob))
    # warm for both now; each still gets only their own bytes
    np.testing.assert_array_equal(await relay.read(alice), voxels_for(alice))
    np.testing.assert_array_equal(await relay.read(bob), voxels_for(bob))
    assert server.authorizations == [alice, bob]
    np.testing.assert_array_equal(await relay.read(None), voxels_for(None))
    keys = relay.memory.keys()
    assert len(keys) == 3
    assert not any(secret in key for key in keys for secret in ("alice", "bob"))
    await relay.aclose()


async def test_upstream_cookies_are_never_kept_or_sent(server: FaultServer) -> None:
    """A session cookie one caller's upstream answer sets must not ride along with the next
    caller's request: the pooled client keeps no cookie jar."""
    server.set_cookie = True
    # by name: cookie jars refuse cookies from a bare IP address, which would hide a shared jar
    relay = Relay(server.url.replace("127.0.0.1", "localhost"), token=None,
                  forward_client_token=True)
    alice, bob = "Token alice-token", "Token bob-token"
    np.testing.assert_array_equal(await relay.read(alice), voxels_for(alice))
    np.testing.assert_array_equal(await relay.read(bob), voxels_for(bob))
    await relay.aclose()
    assert server.authorizations == [alice, bob]
    assert len(server.cookies) > 2 and server.cookies == [None] * len(server.cookies)


async def test_tokens_never_reach_logs_or_errors(server: FaultServer, relay: Relay,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.script.extend(["html", "500", "boss-400"])
    messages = []
    for _ in range(3):
        with pytest.raises(RelayError) as info:
            await relay.read()
        messages.append(info.value.message)
    leaky = Relay(f"http://user:{SECRET}@127.0.0.1:1", timeout=1.0, retries=0)
    with pytest.raises(RelayError) as info:
        await leaky.read()
    messages.append(info.value.message)
    await leaky.aclose()
    assert SECRET not in caplog.text
    assert not any(SECRET in message for message in messages)


async def test_held_metadata_and_warm_cuboids_survive_an_unreachable_upstream() -> None:
    async with FaultServer() as server:
        relay = Relay(server.url, metadata_ttl_seconds=0, timeout=2.0, retries=1)
        np.testing.assert_array_equal(await relay.read(), EXPECTED)
        served = server.cutouts
    # the upstream is gone: metadata is re-asked (TTL 0), fails, and is served stale
    np.testing.assert_array_equal(await relay.read(), EXPECTED)
    assert server.cutouts == served
    channel = await relay.catalog.channel(REF)
    assert channel.info.dtype == np.uint8
    await relay.aclose()


async def _relay_process(server: FaultServer, tmp_path: Any, env: dict[str, str] | None = None,
                         **source: Any) -> RelayProcess:
    """A started ``relay serve`` subprocess in front of ``server``, caching in tmp_path."""
    config = write_config(tmp_path / "relay.yaml", [{"collection": "*", "kind": "boss",
                                                      "url": server.url, "token": SECRET,
                                                      **source}],
                          tmp_path / "cache")
    relay = RelayProcess(["--config", str(config)], env=env)
    await asyncio.to_thread(relay.start)
    return relay


async def test_sigterm_lets_requests_in_progress_finish(server: FaultServer,
                                                        tmp_path: Any) -> None:
    """A relay subprocess told to stop while a slow upstream read is in progress still answers
    that request in full, then exits cleanly."""
    relay = await _relay_process(server, tmp_path)
    server.script.append("slow")
    async with httpx.AsyncClient(timeout=30) as client:
        pending = asyncio.create_task(client.get(relay.url + "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"))
        await asyncio.wait_for(server.cutout_seen.wait(), 30)  # the upstream read has begun
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        response = await pending
    assert response.status_code == 200
    got = np.frombuffer(blosc.decompress(response.content), np.uint8)
    np.testing.assert_array_equal(got.reshape(8, 64, 64), EXPECTED)
    # uvicorn re-raises the signal once it has shut down: "terminated by SIGTERM", on time
    assert await asyncio.to_thread(relay.process.wait, 30) in (0, -signal.SIGTERM)
    # the cuboid's write-behind landed before exit, whole
    disk = DiskTier(tmp_path / "cache", 2**30)
    try:
        keys = list(disk._cache.iterkeys())
        assert len(keys) == 1
        payload = await disk.get(keys[0])
        assert payload is not None
        np.testing.assert_array_equal(unpack_cuboid(payload), EXPECTED)
    finally:
        await disk.aclose()


async def test_sigterm_gives_up_on_a_stuck_request_after_the_shutdown_timeout(
        server: FaultServer, tmp_path: Any) -> None:
    """A request whose upstream never answers does not hold the relay past
    ``server.shutdown_timeout``; it ends without an answer and leaves nothing in the cache."""
    relay = await _relay_process(server, tmp_path, {"RELAY_SERVER__SHUTDOWN_TIMEOUT": "1"},
                                 read_timeout=60)
    server.script.append("stall")
    async with httpx.AsyncClient(timeout=30) as client:
        pending = asyncio.create_task(client.get(relay.url + "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"))
        await asyncio.wait_for(server.cutout_seen.wait(), 30)  # the upstream read has begun
        assert relay.process is not None
        started = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(relay.process.wait, 30)
        elapsed = time.monotonic() - started
        outcome = await asyncio.gather(pending, return_exceptions=True)
    assert returncode in (0, -signal.SIGTERM)
    assert elapsed < 1 + 5  # the timeout, plus start-up of the shutdown itself
    answer = outcome[0]
    assert isinstance(answer, httpx.HTTPError) or (
        isinstance(answer, httpx.Response) and answer.status_code >= 500)
    disk = DiskTier(tmp_path / "cache", 2**30)
    try:
        assert list(disk._cache.iterkeys()) == []
    finally:
        await disk.aclose()


async def test_a_slow_loris_upstream_is_bounded_by_the_total_timeout(server: FaultServer) -> None:
    """Bytes keep arriving (no read timeout ever fires), but the call as a whole ends at the
    total timeout: 504, nothing cached, and the next read is whole."""
    server.script.extend(["trickle"])
    relay = Relay(server.url, timeout=1.5, read_timeout=1.0, retries=0)
    started = time.monotonic()
    with pytest.raises(RelayError) as info:
        await relay.read()
    assert info.value.status == 504
    assert time.monotonic() - started < 3.0
    assert relay.memory.stats()["entries"] == 0
    np.testing.assert_array_equal(await relay.read(), EXPECTED)
    await relay.aclose()
