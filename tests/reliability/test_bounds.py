"""Streaming more than 10× the budgets through a relay subprocess: the disk tier stays within
its limit plus one entry, and the process's resident memory within what it held warmed up plus
the memory budgets (the memory tier's and the decoded cuboids') plus a fixed overhead, checked
after every request and after shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import blosc
import httpx
import numpy as np
import psutil
import zarr

from relay.cache import DiskTier

from ..servers import RelayProcess, write_config

CUBOID = 512 * 512 * 16  # bytes of one uint8 cuboid, incompressible here
#: What the process may hold besides the memory budgets, over what it held once warmed up (the
#: interpreter with numpy, zarr, cloud-volume, uvicorn and friends, every module loaded: 150 to
#: 190 MiB depending on the machine, measured at the start of the run rather than assumed): one
#: request's voxels and its encoded body, blosc's buffers, the write-behind's backlog (bounded
#: by the memory tier's budget, and never past 32 MiB here: relay.cache.tiered) and allocator
#: slack. docs/reliability.md states the same figure.
FIXED_OVERHEAD = 96 * 2**20


def test_ten_times_the_budgets_stay_within_bounds(tmp_path: Path) -> None:
    data = np.random.default_rng(11).integers(0, 256, (96, 1024, 1024), dtype=np.uint8)
    store = zarr.create_array(str(tmp_path / "big.zarr"), shape=data.shape,
                              chunks=(16, 512, 512), dtype="uint8", zarr_format=3)
    store[...] = data
    sources = [{"collection": "c", "experiment": "e", "channel": "big", "kind": "zarr",
                "url": str(tmp_path / "big.zarr")}]
    # 8 MiB each; 96 MiB streamed: 12×
    memory_budget, decoded_budget, disk_budget = 2 * CUBOID, 2 * CUBOID, 2 * CUBOID
    config = write_config(tmp_path / "relay.yaml", sources, tmp_path / "cache",
                          memory_bytes=memory_budget, decoded_bytes=decoded_budget,
                          disk_bytes=disk_budget)
    peak_rss = 0
    with RelayProcess(["--config", str(config)]) as relay:
        assert relay.process is not None
        process = psutil.Process(relay.process.pid)
        # warmed up: one cuboid read and served (every module the read path uses is loaded)
        assert httpx.get(relay.url + "/v1/cutout/c/e/big/0/0:512/0:512/0:16/",
                         timeout=60).status_code == 200
        base = process.memory_info().rss
        streamed = 0
        for z0 in range(0, 96, 16):
            for y0 in (0, 512):
                for x0 in (0, 512):
                    url = f"/v1/cutout/c/e/big/0/{x0}:{x0 + 512}/{y0}:{y0 + 512}/{z0}:{z0 + 16}/"
                    response = httpx.get(relay.url + url, timeout=60)
                    assert response.status_code == 200
                    body = np.frombuffer(blosc.decompress(response.content), dtype=np.uint8)
                    np.testing.assert_array_equal(
                        body.reshape(16, 512, 512), data[z0:z0 + 16, y0:y0 + 512, x0:x0 + 512])
                    streamed += CUBOID
                    metrics = relay.metrics()
                    assert metrics["relay_cache_memory_bytes"] <= memory_budget
                    assert metrics["relay_cache_disk_bytes"] <= disk_budget + CUBOID + 2**16
                    peak_rss = max(peak_rss, process.memory_info().rss)
                    assert metrics["relay_decoded_bytes"] <= decoded_budget
                    assert peak_rss <= base + memory_budget + decoded_budget + FIXED_OVERHEAD, (
                        peak_rss, base)
        assert streamed >= 10 * max(memory_budget, disk_budget)
        relay.stop()  # graceful: write-behind drains
    disk = DiskTier(tmp_path / "cache", disk_budget)
    size = disk.stats()["bytes"]
    asyncio.run(disk.aclose())
    assert disk_budget // 2 < size <= disk_budget + CUBOID + 2**16
    print(f"peak RSS {peak_rss / 2**20:.0f} MiB (warmed up: {base / 2**20:.0f} MiB) for "
          f"{memory_budget / 2**20:.0f} + "
          f"{decoded_budget / 2**20:.0f} MiB memory budgets; disk {size / 2**20:.1f} MiB for "
          f"a {disk_budget / 2**20:.0f} MiB limit")

