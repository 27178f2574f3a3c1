"""Forwarded tokens keep callers apart under concurrency and across a restart on the same disk
cache, and no token ever reaches the log, even at debug level with access logging on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

from ..faults import SHAPE_XYZ, FaultServer, voxels_for
from ..servers import RelayProcess, write_config

URL = "/v1/cutout/c/e/ch/0/0:64/0:64/0:8/"
CALLERS = ["Token alice-0123456789", "Token bob-9876543210", "Bearer carol-555555555", None]


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def _wave(relay: RelayProcess, callers: Sequence[str | None], per_caller: int) -> int:
    """Every caller ``per_caller`` times, all at once and interleaved; return how many answers
    held somebody else's voxels."""
    async with httpx.AsyncClient(base_url=relay.url, timeout=60,
                                 limits=httpx.Limits(max_connections=64)) as client:
        order = [caller for _ in range(per_caller) for caller in callers]
        responses = await asyncio.gather(*(
            client.get(URL, headers={"Authorization": c} if c else {}) for c in order))
    leaks = 0
    z, y, x = SHAPE_XYZ[2], SHAPE_XYZ[1], SHAPE_XYZ[0]
    for caller, response in zip(order, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(z, y, x)
        leaks += not np.array_equal(got, voxels_for(caller))
    return leaks


async def test_forwarded_tokens_never_cross_under_load_or_after_restart(
        upstream: FaultServer, tmp_path: Path) -> None:
    source = {"collection": "*", "kind": "boss", "url": upstream.url,
              "forward_client_token": True, "retries": 0}
    config = write_config(tmp_path / "relay.yaml", [source], tmp_path / "cache")
    log = tmp_path / "relay.log"
    with RelayProcess(["--config", str(config), "--log-level", "debug"], log=log) as relay:
        assert await _wave(relay, CALLERS, 10) == 0  # cold: four partitions filled at once
        assert upstream.cutouts == len(CALLERS)  # one fetch per caller, coalesced within each
    with RelayProcess(["--config", str(config), "--log-level", "debug"], log=log) as relay:
        assert await _wave(relay, CALLERS, 10) == 0  # warm, from disk: still each their own
        assert upstream.cutouts == len(CALLERS)  # nothing read again
        newcomer = ["Token dave-4444444444"]
        assert await _wave(relay, newcomer, 5) == 0  # a new caller is not handed a cached copy
        assert upstream.cutouts == len(CALLERS) + 1
    text = log.read_text()
    assert "GET /v1/cutout" in text  # the access log was on
    for caller in [*CALLERS, *newcomer]:
        if caller:
            assert caller.split()[1] not in text
