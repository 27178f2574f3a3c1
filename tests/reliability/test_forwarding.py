"""Cut-through forwarding (``relay.forwarding``): a relay in front of another relay (here a
misbehaving BossDB look-alike) sends a cold cuboid's frame on while it is still arriving, yet a
frame that fails its check is never delivered whole and never cached.

Each test holds the upstream's frame at its middle until the client has received the first
piece of the answer (so forwarding has begun for certain), then lets the upstream finish: badly,
or well after a retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

from ..faults import FaultServer, voxels_for
from ..servers import RelayProcess, write_config

SECRET = "forwarding-token"
EXPECTED = voxels_for(f"Token {SECRET}")
URL = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
async def relay(server: FaultServer, tmp_path: Path) -> AsyncIterator[RelayProcess]:
    """A relay process with memory and disk tiers in front of ``server``."""
    config = write_config(tmp_path / "relay.yaml", [{
        "collection": "*", "kind": "boss", "url": server.url, "token": SECRET,
        "retries": 2, "read_timeout": 10}], tmp_path / "cache")
    process = RelayProcess(["--config", str(config)])
    await asyncio.to_thread(process.start)
    yield process
    await asyncio.to_thread(process.stop)


async def _read_held(relay: RelayProcess, server: FaultServer
                     ) -> tuple[httpx.Response, bytes, httpx.HTTPError | None]:
    """Read the cuboid; once its first piece has arrived, let the upstream go on."""
    received = bytearray()
    error: httpx.HTTPError | None = None
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "GET", relay.url + URL, headers={"Accept": "application/blosc"}) as response:
        pieces = response.aiter_raw()
        received += await anext(pieces)  # the upstream is holding the rest of the frame
        server.proceed.set()
        try:
            async for piece in pieces:
                received += piece
        except httpx.HTTPError as exc:
            error = exc
    return response, bytes(received), error


async def _metrics(relay: RelayProcess) -> dict[str, float]:
    return await asyncio.to_thread(relay.metrics)


@pytest.mark.parametrize("script", [["held-corrupt"], ["held-truncate", "truncate", "truncate"]])
async def test_a_bad_frame_is_cut_off_and_never_cached(relay: RelayProcess, server: FaultServer,
                                                       script: list[str]) -> None:
    """The frame's second half is garbage (it no longer decodes), or every try ends short of
    the length: the client received the first half, then the connection closed short of the
    Content-Length; nothing was cached, and the next read goes upstream and is right."""
    server.script.extend(script)
    response, received, error = await _read_held(relay, server)
    assert response.status_code == 200
    announced = int(response.headers["content-length"])
    assert 0 < len(received) < announced  # forwarded in part, never whole
    assert isinstance(error, httpx.RemoteProtocolError)
    metrics = await _metrics(relay)
    assert metrics["relay_forwarded_total"] == 1
    assert metrics["relay_forwards_cut_total"] == 1
    assert metrics["relay_cache_memory_entries"] == 0
    reads = server.cutouts
    async with httpx.AsyncClient(timeout=30) as client:
        again = await client.get(relay.url + URL, headers={"Accept": "application/blosc"})
    assert again.status_code == 200
    assert again.headers["x-cache"] != "HIT"
    assert server.cutouts == reads + 1  # read upstream again: no tier kept the bad frame
    assert (await _metrics(relay))["relay_cache_memory_entries"] == 1
    np.testing.assert_array_equal(
        np.frombuffer(blosc.decompress(again.content), np.uint8).reshape(EXPECTED.shape),
        EXPECTED)


async def test_a_retried_read_completes_the_forwarded_frame(relay: RelayProcess,
                                                            server: FaultServer) -> None:
    """The transfer breaks after the first half went out; the retry brings the same frame,
    so the answer is completed from it: whole, and the upstream's voxels."""
    server.script.extend(["held-reset", "ok"])
    response, received, error = await _read_held(relay, server)
    assert error is None
    assert len(received) == int(response.headers["content-length"])
    got = np.frombuffer(blosc.decompress(received), np.uint8).reshape(EXPECTED.shape)
    np.testing.assert_array_equal(got, EXPECTED)
    assert server.cutouts == 2
    metrics = await _metrics(relay)
    assert (metrics["relay_forwarded_total"], metrics["relay_forwards_cut_total"]) == (1, 0)


async def test_a_retry_that_brings_another_frame_is_never_spliced(relay: RelayProcess,
                                                                  server: FaultServer) -> None:
    """The retry brings the same voxels in another frame of the same length (its header's
    flags differ): the first frame's half and the second's rest are not a frame anyone
    checked, so the answer is cut off instead; the second frame passed its check and is
    cached, and served whole next time."""
    server.script.extend(["held-reset", "other"])
    response, received, error = await _read_held(relay, server)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(received) < int(response.headers["content-length"])
    assert (await _metrics(relay))["relay_forwards_cut_total"] == 1
    async with httpx.AsyncClient(timeout=30) as client:
        again = await client.get(relay.url + URL, headers={"Accept": "application/blosc"})
    assert again.headers["x-cache"] == "HIT"
    np.testing.assert_array_equal(
        np.frombuffer(blosc.decompress(again.content), np.uint8).reshape(EXPECTED.shape),
        EXPECTED)


async def test_a_frame_with_the_wrong_header_is_an_error_not_a_forward(
        relay: RelayProcess, server: FaultServer) -> None:
    """Forwarding begins only after the Blosc header names the expected sizes: a frame of
    the wrong length is still BossDB's JSON error with its status."""
    server.script.extend(["short"])
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(relay.url + URL, headers={"Accept": "application/blosc"})
    assert answer.status_code == 502
    assert answer.json()["code"] == 5000
    assert (await _metrics(relay)).get("relay_forwarded_total", 0) == 0
