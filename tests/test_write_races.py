"""Writes racing reads, from several clients at once, through one relay: Hypothesis makes the
interleavings. Each client owns a slab of the volume (slabs meet inside the relay's cuboids,
so every cuboid is shared) and writes boxes of its slab, filled with a value of its own per
write, while every client reads boxes anywhere.

What each read must show, per relay cuboid and per client slab: the slab as it was after some
number k of that client's writes (never a mix of before and after one write inside a cuboid),
where k is at least the writes whose 201 came back before the read was sent (never stale) and
at most the writes sent before its answer came back. Ground truth is the store itself, read
before each example.
"""

from __future__ import annotations

import asyncio
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .servers import RelayProcess, relay_over

SHAPE_ZYX = (16, 96, 96)
CHUNK_ZYX = (4, 16, 16)
CUBOID_XYZ = (32, 32, 8)          # the relay's cuboid: 2×2×2 store chunks
SLABS = ((0, 40), (40, 70), (70, 96))  # each client's x range: not on cuboid lines

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (x0, x1), (y0, y1), (z0, z1)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    root = tmp_path_factory.mktemp("races")
    store = root / "races.zarr"
    array = zarr.create_array(str(store), shape=SHAPE_ZYX, chunks=CHUNK_ZYX, dtype="uint16",
                              zarr_format=3)
    array[:] = np.random.default_rng(1).integers(0, 2**16, SHAPE_ZYX, dtype="uint16")
    source = {"collection": "race", "experiment": "w", "channel": "c", "kind": "zarr",
              "url": store.as_uri(), "voxel_size": [4, 4, 40], "writable": True,
              "cuboid": list(CUBOID_XYZ)}
    relay = relay_over(root, [source]).start()
    yield relay, store
    relay.stop()


def _boxes(x_range: tuple[int, int]) -> st.SearchStrategy[Box]:
    def axis(lo: int, hi: int) -> st.SearchStrategy[tuple[int, int]]:
        return st.tuples(st.integers(lo, hi - 1), st.integers(1, hi - lo)).map(
            lambda p: (p[0], min(hi, p[0] + p[1])))

    return st.tuples(axis(*x_range), axis(0, SHAPE_ZYX[1]), axis(0, SHAPE_ZYX[0]))


def _ops(slab: tuple[int, int]) -> st.SearchStrategy[list[tuple[str, Box]]]:
    op = st.one_of(st.tuples(st.just("write"), _boxes(slab)),
                   st.tuples(st.just("read"), _boxes((0, SHAPE_ZYX[2]))))
    return st.lists(op, min_size=1, max_size=6)


@dataclass
class _Client:
    index: int
    #: (box, value, sent, answered) and (box, voxels, sent, answered), by monotonic time
    writes: list[tuple[Box, int, float, float]] = field(default_factory=list)
    reads: list[tuple[Box, np.ndarray, float, float]] = field(default_factory=list)


def _url(box: Box) -> str:
    (x0, x1), (y0, y1), (z0, z1) = box
    return f"/v1/cutout/race/w/c/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _shape(box: Box) -> tuple[int, int, int]:
    return box[2][1] - box[2][0], box[1][1] - box[1][0], box[0][1] - box[0][0]


async def _run(relay: RelayProcess, client: _Client, ops: list[tuple[str, Box]],
               first_value: int) -> None:
    async with httpx.AsyncClient(base_url=relay.url, timeout=60) as http:
        for n, (kind, box) in enumerate(ops):
            if kind == "write":
                value = first_value + n
                body = blosc.compress(np.full(_shape(box), value, np.uint16).tobytes(),
                                      typesize=16)
                sent = time.monotonic()
                response = await http.post(_url(box), content=body,
                                           headers={"Content-Type": "application/blosc"})
                assert response.status_code == 201, response.text
                client.writes.append((box, value, sent, time.monotonic()))
            else:
                sent = time.monotonic()
                response = await http.get(_url(box))
                done = time.monotonic()
                assert response.status_code == 200, response.text
                voxels = np.frombuffer(blosc.decompress(response.content),
                                       np.uint16).reshape(_shape(box))
                client.reads.append((box, voxels, sent, done))


def _states(start: np.ndarray, writes: list[tuple[Box, int, float, float]]) -> list[np.ndarray]:
    """The volume after 0, 1, … of one client's writes (they touch its slab only)."""
    states = [start]
    for box, value, _, _ in writes:
        state = states[-1].copy()
        (x0, x1), (y0, y1), (z0, z1) = box
        state[z0:z1, y0:y1, x0:x1] = value
        states.append(state)
    return states


def _cells(box: Box) -> Iterator[Box]:
    """The relay cuboids ``box`` touches, each clipped to the box."""
    ranges = []
    for (lo, hi), step in zip(box, CUBOID_XYZ, strict=True):
        ranges.append([(max(lo, c), min(hi, c + step)) for c in range(lo // step * step, hi,
                                                                      step)])
    for xs in ranges[0]:
        for ys in ranges[1]:
            for zs in ranges[2]:
                yield xs, ys, zs


def _check(read: tuple[Box, np.ndarray, float, float], clients: list[_Client],
           states: list[list[np.ndarray]]) -> None:
    box, voxels, sent, done = read
    for cell in _cells(box):
        for client, client_states in zip(clients, states, strict=True):
            slab = SLABS[client.index]
            x0, x1 = max(cell[0][0], slab[0]), min(cell[0][1], slab[1])
            if x0 >= x1:
                continue
            (_, _), (y0, y1), (z0, z1) = cell
            seen = voxels[z0 - box[2][0]:z1 - box[2][0], y0 - box[1][0]:y1 - box[1][0],
                          x0 - box[0][0]:x1 - box[0][0]]
            lowest = sum(1 for w in client.writes if w[3] < sent)
            highest = sum(1 for w in client.writes if w[2] < done)
            allowed = [k for k in range(lowest, highest + 1)
                       if np.array_equal(client_states[k][z0:z1, y0:y1, x0:x1], seen)]
            assert allowed, (
                f"cuboid {cell}, client {client.index}'s slab: the read sent at {sent:.4f} "
                f"shows none of the states after {lowest}..{highest} of its writes "
                f"{[(w[0], w[1]) for w in client.writes]}")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.tuples(*(_ops(slab) for slab in SLABS)))
def test_reads_racing_writes_see_whole_cuboids_and_nothing_stale(
        relay: tuple[RelayProcess, Path], ops: tuple[Any, ...]) -> None:
    server, store = relay
    start = np.asarray(zarr.open_array(str(store), mode="r")[:])
    clients = [_Client(i) for i in range(len(SLABS))]

    async def everyone() -> None:
        await asyncio.gather(*(_run(server, client, client_ops, 1000 * (client.index + 1))
                               for client, client_ops in zip(clients, ops, strict=True)))

    asyncio.run(everyone())
    states = [_states(start, client.writes) for client in clients]
    for client in clients:
        for read in client.reads:
            _check(read, clients, states)
    # and the store holds every client's last state
    final = np.asarray(zarr.open_array(str(store), mode="r")[:])
    for client, client_states in zip(clients, states, strict=True):
        x0, x1 = SLABS[client.index]
        assert np.array_equal(final[:, :, x0:x1], client_states[-1][:, :, x0:x1])
