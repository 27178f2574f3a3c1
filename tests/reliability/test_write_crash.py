"""kill -9 while a POSTed cutout is being written to the store, then restart: every cache tier
holds, of every cuboid, either nothing or the voxels the store holds now (the old ones where
the write had not reached, the new where it had), never the old over the new.

The relay runs through ``hooked_relay``, whose zarr hook blocks the N-th chunk file the store
writes; the test kills the relay there, with some chunks of the box written and some not.
The relay's caches held the whole box before the write (read through it first); the disk tier
is the one that outlives the kill, and a restarted relay serves from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np

from ..servers import RelayProcess, write_config
from .conftest import CUBOID_XYZ, NoiseStore, decode, hooked_relay
from .hooked_relay import STORE_KILL_AT, STORE_PAUSE_AT

#: a box across 2 × 2 × 2 store chunks (64 × 64 × 16 each) of four cuboids, unaligned
BOX = ((40, 150), (30, 100), (10, 30))


async def _read_all(relay: RelayProcess, noise: NoiseStore, truth: np.ndarray) -> int:
    """Read every cuboid; the number of voxels that differ from ``truth``."""
    wrong = 0
    async with httpx.AsyncClient(base_url=relay.url, timeout=60) as client:
        corners = noise.cuboid_boxes()
        responses = await asyncio.gather(*(client.get(noise.url(c)) for c in corners))
    cx, cy, cz = CUBOID_XYZ
    for (x0, y0, z0), response in zip(corners, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = truth[z0:z0 + cz, y0:y0 + cy, x0:x0 + cx]
        wrong += int(np.count_nonzero(decode(response.content) != expected))
    return wrong


def _store(noise: NoiseStore) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(noise.source["url"], mode="r")[:])


async def test_kill_9_mid_store_write_leaves_no_stale_cuboid(noise: NoiseStore,
                                                             tmp_path: Path) -> None:
    source = {**noise.source, "writable": True}
    # no memory tier: the disk tier is the first, written before a read is answered, so the
    # whole volume is on disk before the write starts
    config = write_config(tmp_path / "relay.yaml", [source], tmp_path / "cache",
                          memory_bytes=0, decoded_bytes=0)
    fifo = tmp_path / "hook.fifo"
    os.mkfifo(fifo)
    before = _store(noise)
    # one chunk at a time (zarr writes several at once by default): chunks 1 and 2 are
    # whole in the store when the kill lands, and the rest are not
    relay = hooked_relay(config, {STORE_KILL_AT: f"3:{fifo}", "ZARR_ASYNC__CONCURRENCY": "1"},
                         log=tmp_path / "hooked.log")
    relay.start()
    (x0, x1), (y0, y1), (z0, z1) = BOX
    new = np.full((z1 - z0, y1 - y0, x1 - x0), 0, np.uint8)  # the noise is never 0
    try:
        assert await _read_all(relay, noise, before) == 0

        def post() -> None:
            with contextlib.suppress(httpx.TransportError):  # the relay is killed under it
                httpx.post(f"{relay.url}/v1/cutout/rel/noise/img/0/{x0}:{x1}/{y0}:{y1}/"
                           f"{z0}:{z1}/", content=blosc.compress(new.tobytes(), typesize=8),
                           headers={"Content-Type": "application/blosc"}, timeout=60)

        writer = threading.Thread(target=post)
        writer.start()
        with open(fifo) as announced:  # blocks until the hook is inside the 3rd chunk write
            assert announced.readline() == "writing\n"
        assert relay.process is not None
        relay.process.send_signal(signal.SIGKILL)
        relay.process.wait(10)
        writer.join(60)
    finally:
        if relay.process is not None and relay.process.poll() is None:
            relay.process.kill()
            relay.process.wait()
    after = _store(noise)
    written = after[z0:z1, y0:y1, x0:x1] == 0
    # the kill landed mid-write: some of the box is new in the store, some still old
    assert written.any() and not written.all()
    with RelayProcess(["--config", str(config)], log=tmp_path / "restarted.log") as restarted:
        assert await _read_all(restarted, noise, after) == 0
    # and the write can be finished: the store and every cuboid then hold the new voxels
    with RelayProcess(["--config", str(config)]) as restarted:
        response = httpx.post(f"{restarted.url}/v1/cutout/rel/noise/img/0/{x0}:{x1}/{y0}:{y1}/"
                              f"{z0}:{z1}/", content=blosc.compress(new.tobytes(), typesize=8),
                              headers={"Content-Type": "application/blosc"})
        assert response.status_code == 201, response.text
        final = before.copy()
        final[z0:z1, y0:y1, x0:x1] = 0
        assert await _read_all(restarted, noise, final) == 0
    assert np.array_equal(_store(noise), final)


#: the zarr chunk files a write of BOX replaces (3 × 2 × 2 chunks of 64 × 64 × 16)
BOX_CHUNKS = 12


async def test_a_fleet_writer_killed_after_its_store_write_leaves_no_stale_copy(
        noise: NoiseStore, tmp_path: Path, redis_server: Any) -> None:
    """Relay A writes, relay B shares its Redis. B reads the box while A's write is under way
    (before A has written a chunk), A writes the store and is killed before it can tell the
    fleet it is done. B must not have kept what it read: neither in its memory, nor in Redis
    (a relay C started afterwards reads through it)."""
    source = {**noise.source, "writable": True}

    def config(name: str) -> Path:
        return write_config(tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache",
                            redis_url=redis_server.url, redis_prefix=f"crash-{tmp_path.name}:")

    killed, paused, resume = (tmp_path / f"{n}.fifo" for n in ("killed", "paused", "resume"))
    for fifo in (killed, paused, resume):
        os.mkfifo(fifo)
    before = _store(noise)
    a = hooked_relay(config("a"), {STORE_KILL_AT: f"{BOX_CHUNKS}:{killed}:after",
                                   STORE_PAUSE_AT: f"1:{paused}:{resume}",
                                   "ZARR_ASYNC__CONCURRENCY": "1"}, log=tmp_path / "a.log")
    b = RelayProcess(["--config", str(config("b"))], log=tmp_path / "b.log")
    (x0, x1), (y0, y1), (z0, z1) = BOX
    new = np.full((z1 - z0, y1 - y0, x1 - x0), 5, np.uint8)
    a.start()
    b.start()
    try:
        assert await _read_all(b, noise, before) == 0  # B holds every cuboid, and so does Redis

        def post() -> None:
            with contextlib.suppress(httpx.TransportError):  # A is killed under it
                httpx.post(f"{a.url}/v1/cutout/rel/noise/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                           content=blosc.compress(new.tobytes(), typesize=8),
                           headers={"Content-Type": "application/blosc"}, timeout=60)

        writer = threading.Thread(target=post)
        writer.start()
        with open(paused) as announced:  # A is about to write its first chunk
            assert announced.readline() == "writing\n"
        # B reads the store as it still is, under the versions A's write has just bumped
        assert await _read_all(b, noise, before) == 0
        with open(resume, "w") as go_on:
            go_on.write("go\n")
        with open(killed) as announced:  # A has written every chunk, and is stopped there
            assert announced.readline() == "writing\n"
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        writer.join(60)
        after = _store(noise)
        assert (after[z0:z1, y0:y1, x0:x1] == 5).all()
        assert await _read_all(b, noise, after) == 0
        with RelayProcess(["--config", str(config("c"))]) as c:
            assert await _read_all(c, noise, after) == 0
    finally:
        if a.process is not None and a.process.poll() is None:
            a.process.kill()
            a.process.wait()
        b.stop()
