"""Writes: intern's ``create_cutout`` through a relay, and through a chain of three, into a local
zarr, a local precomputed volume and the DVID double, for every dtype; the store holds what was
written, and every relay on the way serves it right after the 201 although each had the old
voxels cached. Ground truth is read from the stores themselves, never through a relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from intern.remote.boss import BossRemote

from .dvid_double import DvidDouble
from .servers import RelayProcess, ThreadedServer, relay_over
from .test_pyramid import reference_mean

SHAPE_ZYX = (20, 150, 200)
CHUNK_ZYX = (8, 32, 32)
CUBOID = [64, 64, 8]  # the relay's cuboid (x, y, z): boxes span several, and several chunks
DTYPES = ("uint8", "uint16", "uint64")
KINDS = ("zarr", "pre", "dvid")


def random_voxels(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    top = np.iinfo(dtype).max
    # uint64: ids past 2^53 too, which a float anywhere on the way would corrupt
    return rng.integers(1, top, size=shape, dtype=dtype, endpoint=True)


class Stores:
    """The writable stores, one per kind and dtype, with the same initial voxels."""

    def __init__(self, root: Path, dvid_url: str, double: DvidDouble) -> None:
        self.root = root
        self.double = double
        self.node = double.add_repo("writes")
        rng = np.random.default_rng(7)
        self.sources: list[dict[str, Any]] = []
        for dtype in DTYPES:
            initial = random_voxels(rng, SHAPE_ZYX, dtype)
            name = f"u{np.dtype(dtype).itemsize * 8}"
            array = zarr.create_array(str(root / f"{name}.zarr"), shape=SHAPE_ZYX,
                                      chunks=CHUNK_ZYX, dtype=dtype, zarr_format=3,
                                      dimension_names=["z", "y", "x"])
            array[:] = initial
            self._precomputed(root / f"{name}.pre", dtype, initial)
            double.add_instance(self.node, name, "labelmap" if dtype == "uint64" else
                                f"{dtype}blk", block_size=(32, 32, 32), voxel_size=(4, 4, 40))
            double.write(self.node, name, (0, 0, 0), initial)
            common = {"channel": name, "writable": True, "cuboid": CUBOID}
            self.sources += [
                {"collection": "zarr", "experiment": "w", "kind": "zarr",
                 "url": (root / f"{name}.zarr").as_uri(), "voxel_size": [4, 4, 40], **common},
                {"collection": "pre", "experiment": "w", "kind": "precomputed",
                 "url": (root / f"{name}.pre").as_uri(), **common},
                {"collection": "dvid", "experiment": "w", "kind": "dvid", "url": dvid_url,
                 "uuid": self.node, "instance": name, **common},
            ]
        # the same zarr, read-only
        self.sources.append({"collection": "ro", "experiment": "w", "channel": "u8",
                             "kind": "zarr", "url": (root / "u8.zarr").as_uri()})

    @staticmethod
    def _precomputed(path: Path, dtype: str, initial: np.ndarray) -> None:
        segmentation = dtype == "uint64"
        info = CloudVolume.create_new_info(
            num_channels=1, layer_type="segmentation" if segmentation else "image",
            data_type=dtype, encoding="compressed_segmentation" if segmentation else "raw",
            resolution=[4, 4, 40], voxel_offset=[0, 0, 0], volume_size=list(SHAPE_ZYX[::-1]),
            chunk_size=list(CHUNK_ZYX[::-1]))
        volume = CloudVolume(path.as_uri(), info=info, progress=False)
        volume.commit_info()
        volume[:, :, :] = initial.transpose(2, 1, 0)[..., np.newaxis]

    def truth(self, kind: str, dtype: str, box: tuple[tuple[int, int], ...]) -> np.ndarray:
        """The store's own voxels of ``box`` ((x0, x1), (y0, y1), (z0, z1)), as Z,Y,X."""
        (x0, x1), (y0, y1), (z0, z1) = box
        name = f"u{np.dtype(dtype).itemsize * 8}"
        if kind == "zarr":
            array = zarr.open_array(str(self.root / f"{name}.zarr"), mode="r")
            return np.asarray(array[z0:z1, y0:y1, x0:x1])
        if kind == "pre":
            volume = CloudVolume((self.root / f"{name}.pre").as_uri(), progress=False)
            return np.asarray(volume[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)
        repo = self.double._repo_of(self.node)
        return self.double._read(self.node, repo.instances[name], 0, (x0, y0, z0),
                                 (x1 - x0, y1 - y0, z1 - z0))


class Chain:
    """institute (over the stores) ← lab ← laptop, every source writable."""

    def __init__(self, root: Path, sources: list[dict[str, Any]]) -> None:
        self.institute = relay_over(root, sources, "institute").start()
        upstream = [{"collection": "*", "kind": "boss", "url": self.institute.url,
                     "writable": True}]
        self.lab = relay_over(root, upstream, "lab").start()
        upstream = [{**upstream[0], "url": self.lab.url}]
        self.laptop = relay_over(root, upstream, "laptop").start()
        self.relays = [self.laptop, self.lab, self.institute]

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()


@pytest.fixture(scope="module")
def dvid() -> Iterator[tuple[DvidDouble, str]]:
    double = DvidDouble()
    with ThreadedServer(double.app) as server:
        yield double, server.url


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, dvid: tuple[DvidDouble, str]) -> Stores:
    double, url = dvid
    return Stores(tmp_path_factory.mktemp("stores"), url, double)


@pytest.fixture(scope="module")
def relay(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    relay = relay_over(tmp_path_factory.mktemp("one"), stores.sources).start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def chain(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    chain = Chain(tmp_path_factory.mktemp("chain"), stores.sources)
    yield chain
    chain.stop()


def remote(relay: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": relay.host, "token": "public"})


def random_box(rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
    """An unaligned box of 1 to ~100 voxels a side inside the volume, (x, y, z) ranges."""
    out = []
    for extent in SHAPE_ZYX[::-1]:
        size = int(rng.integers(1, min(extent, 100), endpoint=True))
        start = int(rng.integers(0, extent - size, endpoint=True))
        out.append((start, start + size))
    return tuple(out)


def around(box: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """``box`` grown to the relay cuboids it touches (clipped): what the caches hold of it."""
    out = []
    for (lo, hi), step, extent in zip(box, CUBOID, SHAPE_ZYX[::-1], strict=True):
        out.append((lo // step * step, min(-(-hi // step) * step, extent)))
    return tuple(out)


def read(relay: RelayProcess, kind: str, dtype: str, box: tuple[tuple[int, int], ...],
         res: int = 0) -> np.ndarray:
    rmt = remote(relay)
    channel = rmt.get_channel(f"u{np.dtype(dtype).itemsize * 8}", kind, "w")
    return np.asarray(rmt.get_cutout(channel, res, *[list(r) for r in box]))


@pytest.mark.parametrize("via", ["one relay", "three relays"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_intern_round_trips_unaligned_boxes(kind: str, dtype: str, via: str, stores: Stores,
                                            request: pytest.FixtureRequest) -> None:
    relays = ([request.getfixturevalue("relay")] if via == "one relay"
              else request.getfixturevalue("chain").relays)
    rng = np.random.default_rng([KINDS.index(kind), DTYPES.index(dtype), len(relays)])
    for _ in range(2):
        box = random_box(rng)
        grown = around(box)
        for relay in relays:  # every cache on the way holds the old voxels
            assert np.array_equal(read(relay, kind, dtype, grown),
                                  stores.truth(kind, dtype, grown))
        new = random_voxels(rng, tuple(hi - lo for lo, hi in box[::-1]), dtype)
        rmt = remote(relays[0])
        channel = rmt.get_channel(f"u{np.dtype(dtype).itemsize * 8}", kind, "w")
        rmt.create_cutout(channel, 0, *[list(r) for r in box], new)
        assert np.array_equal(stores.truth(kind, dtype, box), new)
        for relay in relays:
            assert np.array_equal(read(relay, kind, dtype, box), new), relay.url
            # the rest of each touched cuboid is the store's too: nothing around it changed
            assert np.array_equal(read(relay, kind, dtype, grown),
                                  stores.truth(kind, dtype, grown)), relay.url


def test_derived_levels_follow_a_write(chain: Chain, stores: Stores) -> None:
    """Level 1 of a single-scale store is made by the relays; a write drops what was made
    from the voxels it changed, at every hop."""
    whole = ((0, 200), (0, 150), (0, 20))
    half = ((0, 100), (0, 75), (0, 20))
    for relay in chain.relays:
        read(relay, "zarr", "uint8", half, res=1)
    rng = np.random.default_rng(11)
    box = ((37, 121), (10, 99), (3, 17))
    rmt = remote(chain.laptop)
    rmt.create_cutout(rmt.get_channel("u8", "zarr", "w"), 0, *[list(r) for r in box],
                      random_voxels(rng, (14, 89, 84), "uint8"))
    expected = reference_mean(stores.truth("zarr", "uint8", whole), (2, 2, 1))
    for relay in chain.relays:
        assert np.array_equal(read(relay, "zarr", "uint8", half, res=1), expected), relay.url


def test_a_locked_dvid_node_refuses_and_nothing_changes(relay: RelayProcess,
                                                        stores: Stores) -> None:
    box = ((5, 40), (5, 40), (1, 9))
    before = read(relay, "dvid", "uint8", box)
    double = stores.double
    node = double._repo_of(stores.node).nodes[stores.node]
    node.locked = True
    try:
        body = _blosc(np.ones((8, 35, 35), np.uint8))
        response = httpx.post(f"{relay.url}/v1/cutout/dvid/w/u8/0/5:40/5:40/1:9/",
                              content=body, headers={"Content-Type": "application/blosc"})
    finally:
        node.locked = False
    assert response.status_code == 400, response.text
    assert "locked" in response.json()["message"]
    assert np.array_equal(stores.truth("dvid", "uint8", box), before)
    assert np.array_equal(read(relay, "dvid", "uint8", box), before)


def _blosc(array: np.ndarray) -> bytes:
    import blosc

    return bytes(blosc.compress(np.ascontiguousarray(array).tobytes(),
                                typesize=array.dtype.itemsize * 8))

