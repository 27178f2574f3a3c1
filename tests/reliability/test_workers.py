"""``relay serve --workers 2``: two processes, one disk tier, no wrong byte and no damaged entry,
whichever worker wrote a cuboid (or both at once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import psutil

from ..servers import RelayProcess, write_config
from .conftest import NoiseStore, check_offline, decode


async def test_two_workers_share_the_disk_tier_safely(noise: NoiseStore, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    # no memory tier, no decoded cuboids: every read and every write meets the shared disk tier
    config = write_config(tmp_path / "relay.yaml", [noise.source], cache_dir, memory_bytes=0,
                          decoded_bytes=0)
    corners = noise.cuboid_boxes()
    with RelayProcess(["--config", str(config), "--workers", "2"]) as relay:
        assert relay.process is not None
        workers = psutil.Process(relay.process.pid).children()
        assert len([w for w in workers if w.is_running()]) >= 2
        async with httpx.AsyncClient(base_url=relay.url, timeout=60,
                                     limits=httpx.Limits(max_connections=32)) as client:
            for _ in range(3):  # cold (both workers fetch and write), then warm, twice
                responses = await asyncio.gather(
                    *(client.get(noise.url(c)) for c in corners for _ in range(4)))
                for i, response in enumerate(responses):
                    assert response.status_code == 200, response.text
                    np.testing.assert_array_equal(decode(response.content),
                                                  noise.truth(corners[i // 4]))
    good, damaged = check_offline(cache_dir, noise)
    assert (good, damaged) == (len(corners), 0)
    # one process on the same directory finds everything the two wrote
    with RelayProcess(["--config", str(config)]) as relay:
        for corner in corners:
            response = httpx.get(relay.url + noise.url(corner), timeout=60)
            np.testing.assert_array_equal(decode(response.content), noise.truth(corner))
        assert relay.upstream_reads() == 0
