"""kill -9 while the disk tier writes, at 24 points, then restart: no wrong byte, ever.

Each round starts the relay (through the write hook) on the same cache directory, reads every
cuboid and compares it with the ground truth (what earlier kills left behind is served here, from
disk), then refreshes every cuboid so the disk tier rewrites them, and SIGKILLs the process at a
chosen point: blocked inside the N-th value-file write with a fraction of its bytes on disk, or
shortly after the N-th write began. A last clean start reads everything once more, and every
entry left in the cache directory is checked offline: each is either gone or byte-identical to
the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import httpx
import numpy as np

from ..servers import RelayProcess, write_config
from .conftest import NoiseStore, check_offline, decode, hooked_relay
from .hooked_relay import KILL_AT

KILL_POINTS = 24


async def _read_all(relay: RelayProcess, noise: NoiseStore) -> int:
    """Read every cuboid; return the number of voxels that differ from the truth."""
    wrong = 0
    async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.get(noise.url(c))
                                           for c in noise.cuboid_boxes()))
    for corner, response in zip(noise.cuboid_boxes(), responses, strict=True):
        assert response.status_code == 200, response.text
        wrong += int(np.count_nonzero(decode(response.content) != noise.truth(corner)))
    return wrong


async def _refresh_until_killed(relay: RelayProcess, noise: NoiseStore, fifo: Path) -> None:
    """Refresh every cuboid (each one a disk rewrite) until the hook says the chosen write has
    begun, then SIGKILL the relay."""
    loop = asyncio.get_running_loop()
    announced: asyncio.Future[bytes] = loop.create_future()
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def on_readable() -> None:
        line = os.read(fd, 64)
        if line and not announced.done():
            announced.set_result(line)

    loop.add_reader(fd, on_readable)
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
            refreshes = [asyncio.ensure_future(client.get(noise.url(c, "access-mode=raw")))
                         for c in noise.cuboid_boxes()]
            await asyncio.wait_for(announced, 60)
            assert relay.process is not None
            relay.process.send_signal(signal.SIGKILL)
            relay.process.wait(10)
            await asyncio.gather(*refreshes, return_exceptions=True)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_kill_9_mid_write_never_serves_a_wrong_byte(noise: NoiseStore,
                                                          tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    # a memory tier of one cuboid: reads come from the disk tier, and its writes are
    # write-behind (a blocked write must not hold the read that caused it)
    config = write_config(tmp_path / "relay.yaml", [noise.source], cache_dir,
                          memory_bytes=300_000, disk_bytes=2**30)
    fifo = tmp_path / "hook.fifo"
    os.mkfifo(fifo)
    rng = random.Random(20261125)
    cuboids = len(noise.cuboid_boxes())
    wrong = corrupt_served_as_miss = 0
    points = []
    for round_ in range(KILL_POINTS):
        nth = rng.randint(1, cuboids)
        # half the rounds block mid-file (the last of them with the whole file written but
        # no index row), the others let the kill land wherever it lands after write N began
        fraction = rng.choice([0.0, rng.random(), 1.0]) if round_ % 2 == 0 else -1.0
        points.append((nth, round(fraction, 3)))
        relay = hooked_relay(config, {KILL_AT: f"{nth}:{fraction}:{fifo}"})
        relay.start()
        try:
            wrong += await _read_all(relay, noise)
            corrupt_served_as_miss += int(relay.metrics()["relay_cache_disk_corrupt_total"])
            await _refresh_until_killed(relay, noise, fifo)
        finally:
            if relay.process is not None and relay.process.poll() is None:
                relay.process.kill()
                relay.process.wait()
        assert relay.process is not None and relay.process.returncode == -signal.SIGKILL
    with RelayProcess(["--config", str(config)]) as relay:
        wrong += await _read_all(relay, noise)
        corrupt_served_as_miss += int(relay.metrics()["relay_cache_disk_corrupt_total"])
    good, removed = check_offline(cache_dir, noise)
    print(f"kill points {len(points)}: {points}; wrong voxels served {wrong}; damaged entries "
          f"dropped on read {corrupt_served_as_miss}; entries left: {good} good, {removed} "
          "damaged (removed)")
    assert len(points) == KILL_POINTS
    assert wrong == 0
    assert good > 0  # the cache kept working between the kills
