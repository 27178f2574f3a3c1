"""Acknowledged writes are never undone by a cache (issue 25): a model check over real processes.

A writable zarr store; relays A and B share a real redis-server (a fleet: both read and cache
the store, A takes the writes); relay C is a chain hop in front of A (a laptop relay, writable,
with its own memory and disk). Every relay has a memory tier of a few cuboids over a disk tier,
so reads find cuboids on disk and promote them, the path a read racing a write took to put the
old voxels back (finding 1); the disk is a slow one (``hooked_relay``'s ``SLOW_DISK``: 10 ms a
lookup or delete, a busy machine's), which widens the windows a race has.

Hypothesis interleaves:
- bursts: writes through C (one after the other, each a box filled with a value of its own)
  while three threads read cuboids and boxes from A, B and C as fast as they are answered;
- Redis flushed, and Redis restarted empty (finding 2: versions lost with it);
- any relay restarted (its memory gone, its disk kept).

What every read must show, voxel by voxel: the store as it was after k writes, where k is at
least the writes whose 201 came back before the read was sent (never older) and at most the
writes sent before its answer came back. Ground truth is the store itself, read directly
before each example; after each burst every relay serves exactly the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from ..servers import RedisServer, RelayProcess, write_config
from .conftest import hooked_relay
from .hooked_relay import SLOW_DISK

SHAPE_ZYX = (16, 64, 96)
CHUNK_ZYX = (4, 16, 16)
CUBOID_XYZ = (32, 32, 8)  # 3 × 2 × 2 relay cuboids, each 2 × 2 × 2 store chunks
PACKED = 32 * 32 * 8 * 2  # a cuboid's bytes (uint16 noise barely compresses)
NAMES = ("A", "B", "C")
SLOW = {SLOW_DISK: "0.01"}

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (x0, x1), (y0, y1), (z0, z1)

CUBOIDS: list[Box] = [((x, x + 32), (y, y + 32), (z, z + 8))
                      for z in (0, 8) for y in (0, 32) for x in (0, 32, 64)]
#: the whole volume: one cuboid of the chain hop's grid (BossDB's 512 × 512 × 16, clipped)
WHOLE: Box = ((0, SHAPE_ZYX[2]), (0, SHAPE_ZYX[1]), (0, SHAPE_ZYX[0]))


@dataclass
class Fleet:
    store: Path
    redis: RedisServer
    relays: dict[str, RelayProcess] = field(default_factory=dict)

    def truth(self) -> np.ndarray:
        return np.asarray(zarr.open_array(str(self.store), mode="r")[:])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("trust")
    store = root / "trust.zarr"
    array = zarr.create_array(str(store), shape=SHAPE_ZYX, chunks=CHUNK_ZYX, dtype="uint16",
                              zarr_format=3)
    array[:] = np.random.default_rng(3).integers(0, 30_000, SHAPE_ZYX, dtype="uint16")
    source = {"collection": "t", "experiment": "w", "channel": "c", "kind": "zarr",
              "url": store.as_uri(), "voxel_size": [4, 4, 40], "writable": True,
              "cuboid": list(CUBOID_XYZ), "downsample": "none"}
    small: dict[str, Any] = {"memory_bytes": 3 * PACKED, "decoded_bytes": 0}
    with RedisServer(root / "redis") as redis:
        fleet = Fleet(store, redis)
        try:
            for name in ("A", "B"):
                config = write_config(root / f"{name}.yaml", [source], root / f"{name}-cache",
                                      redis_url=redis.url, redis_prefix="trust:", **small)
                fleet.relays[name] = hooked_relay(config, SLOW, root / f"{name}.log").start()
            hop = {"collection": "*", "kind": "boss", "url": fleet.relays["A"].url,
                   "writable": True}
            config = write_config(root / "C.yaml", [hop], root / "C-cache", **small)
            fleet.relays["C"] = hooked_relay(config, SLOW, root / "C.log").start()
            yield fleet
        finally:
            for relay in fleet.relays.values():
                relay.stop()


def _url(box: Box) -> str:
    (x0, x1), (y0, y1), (z0, z1) = box
    return f"/v1/cutout/t/w/c/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _zyx(box: Box) -> tuple[slice, slice, slice]:
    (x0, x1), (y0, y1), (z0, z1) = box
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


@dataclass
class Read:
    relay: str
    box: Box
    voxels: np.ndarray
    sent: float
    answered: float


class History:
    """The writes of one example, in order (one at a time: each is sent after the one before
    was answered), and the store after each."""

    def __init__(self, initial: np.ndarray) -> None:
        self.states = [initial]
        self.sent: list[float] = []
        self.acked: list[float] = []
        self.next_value = 40_000

    def allowed(self, read: Read) -> tuple[int, int]:
        """The states a read may show: from the writes answered before it was sent, to those
        sent before it was answered."""
        low = sum(1 for t in self.acked if t < read.sent)
        high = sum(1 for t in self.sent if t < read.answered)
        return low, high

    def check(self, read: Read) -> None:
        low, high = self.allowed(read)
        where = _zyx(read.box)
        ok = np.zeros(read.voxels.shape, np.bool_)
        for k in range(low, high + 1):
            ok |= self.states[k][where] == read.voxels
        if not ok.all():
            older = [k for k in range(low) if np.array_equal(self.states[k][where],
                                                              read.voxels)]
            raise AssertionError(
                f"{read.relay} served {read.box} with {int((~ok).sum())} voxels no write "
                f"allows (states {low}..{high} allowed; equal to older state {older}): "
                f"values {np.unique(read.voxels[~ok])[:8]}")


def _read(client: httpx.Client, relay: RelayProcess, name: str, box: Box) -> Read:
    sent = time.monotonic()
    response = client.get(relay.url + _url(box), timeout=60)
    answered = time.monotonic()
    assert response.status_code == 200, (name, box, response.status_code, response.text[:300])
    (x0, x1), (y0, y1), (z0, z1) = box
    voxels = np.frombuffer(blosc.decompress(response.content), np.uint16).reshape(
        z1 - z0, y1 - y0, x1 - x0)
    return Read(name, box, voxels, sent, answered)


def _boxes() -> st.SearchStrategy[Box]:
    def axis(size: int) -> st.SearchStrategy[tuple[int, int]]:
        return st.tuples(st.integers(0, size - 1), st.integers(1, size)).map(
            lambda p: (p[0], min(size, p[0] + p[1])))

    # mostly whole cuboids: what intern and neuroglancer ask for, and the path (a stored
    # frame found in a tier) that raced writes
    return st.one_of(st.sampled_from(CUBOIDS), st.sampled_from([*CUBOIDS, WHOLE]),
                     st.tuples(axis(SHAPE_ZYX[2]), axis(SHAPE_ZYX[1]), axis(SHAPE_ZYX[0])))


class TrustMachine(RuleBasedStateMachine):
    fleet: Fleet  # set by the test

    @initialize()
    def start(self) -> None:
        self.history = History(self.fleet.truth())
        self.client = httpx.Client()
        self.writes = 0

    def teardown(self) -> None:
        self.client.close()

    def _write(self, box: Box) -> None:
        """One write through C, retried while refused (a Redis just restarted is not asked
        until the relay's breaker lets it: 503, nothing written); answered before it
        returns. A retry sends the same voxels: the write is in flight from the first try."""
        value = self.history.next_value
        self.history.next_value += 1
        (x0, x1), (y0, y1), (z0, z1) = box
        body = blosc.compress(np.full((z1 - z0, y1 - y0, x1 - x0), value, np.uint16).tobytes(),
                              typesize=16)
        state = self.history.states[-1].copy()
        state[_zyx(box)] = value
        self.history.states.append(state)
        self.history.sent.append(time.monotonic())
        retry = threading.Event()
        for _ in range(100):
            response = self.client.post(self.fleet.relays["C"].url + _url(box), content=body,
                                        headers={"Content-Type": "application/blosc"},
                                        timeout=60)
            if response.status_code == 201:
                break
            assert response.status_code == 503, response.text  # the shared tier, not back yet
            retry.wait(0.1)
        else:
            raise AssertionError(f"a write was refused for 10 s: {response.text}")
        self.history.acked.append(time.monotonic())
        self.writes += 1

    @rule(writes=st.lists(_boxes(), min_size=1, max_size=4),
          reads=st.lists(st.tuples(st.sampled_from(NAMES), _boxes()), min_size=1, max_size=6))
    def burst(self, writes: list[Box], reads: list[tuple[str, Box]]) -> None:
        self._burst(writes, reads)

    @rule(cuboid=st.sampled_from([*CUBOIDS, WHOLE]), name=st.sampled_from(NAMES),
          count=st.integers(4, 12))
    def hammer(self, cuboid: Box, name: str, count: int) -> None:
        """The adversary's case: three threads read one cuboid of one relay while a loop
        writes it."""
        self._burst([cuboid] * count, [(name, cuboid)])

    def _burst(self, writes: list[Box], reads: list[tuple[str, Box]]) -> None:
        done = threading.Event()
        seen: list[Read] = []
        failures: list[BaseException] = []

        def reader(offset: int) -> None:
            try:
                with httpx.Client() as client:
                    for i in range(400):  # a bound: the writes end long before
                        name, box = reads[(offset + i) % len(reads)]
                        seen.append(_read(client, self.fleet.relays[name], name, box))
                        if done.is_set():
                            break
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        try:
            for box in writes:
                self._write(box)
                # the writer reads after its 201 (what a client that just wrote does): a
                # stale copy would otherwise be dropped by the next write before anyone looked
                for name, read_box in reads:
                    seen.append(_read(self.client, self.fleet.relays[name], name, read_box))
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=120)
        if failures:
            raise failures[0]
        for read in seen:
            self.history.check(read)
        # all answered: every relay serves exactly what the store holds
        truth = self.fleet.truth()
        assert np.array_equal(truth, self.history.states[-1])
        for name, box in reads:
            read = _read(self.client, self.fleet.relays[name], name, box)
            assert np.array_equal(read.voxels, truth[_zyx(box)]), (name, box)

    @rule()
    def flush_redis(self) -> None:
        self.fleet.redis.cli("flushall")

    @rule()
    def restart_redis(self) -> None:
        self.fleet.redis.kill()
        self.fleet.redis.start()

    @rule(name=st.sampled_from(NAMES))
    def restart_relay(self, name: str) -> None:
        relay = self.fleet.relays[name]
        relay.stop()
        relay.start()


def test_acknowledged_writes_are_never_undone(fleet: Fleet) -> None:
    TrustMachine.fleet = fleet
    run_state_machine_as_test(TrustMachine, settings=settings(
        max_examples=8, stateful_step_count=10, deadline=None,
        suppress_health_check=list(HealthCheck)))
