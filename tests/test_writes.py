"""Writes: intern's ``create_cutout`` through a relay, and through a chain of three, into a local
zarr, a local precomputed volume and the DVID double, for every dtype; the store holds what was
written, and every relay on the way serves it right after the 201 although each had the old
voxels cached. Ground truth is read from the stores themselves, never through a relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from intern.remote.boss import BossRemote

from .dvid_double import DvidDouble
from .servers import RedisServer, RelayProcess, ThreadedServer, relay_over, write_config
from .test_codecs import _Claiming
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
def chain_stores(tmp_path_factory: pytest.TempPathFactory,
                 dvid: tuple[DvidDouble, str]) -> Stores:
    """Stores of the chain's own: a relay that neither shares a Redis tier with another nor
    sits in its chain cannot know of the other's writes (docs/writes.md)."""
    double, url = dvid
    return Stores(tmp_path_factory.mktemp("chain-stores"), url, double)


@pytest.fixture(scope="module")
def chain(chain_stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    chain = Chain(tmp_path_factory.mktemp("chain"), chain_stores.sources)
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
def test_intern_round_trips_unaligned_boxes(kind: str, dtype: str, via: str,
                                            request: pytest.FixtureRequest) -> None:
    one = via == "one relay"
    relays = ([request.getfixturevalue("relay")] if one
              else request.getfixturevalue("chain").relays)
    stores: Stores = request.getfixturevalue("stores" if one else "chain_stores")
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


def test_derived_levels_follow_a_write(chain: Chain, chain_stores: Stores) -> None:
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
    expected = reference_mean(chain_stores.truth("zarr", "uint8", whole), (2, 2, 1))
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
    # refused before anything was dropped: the cuboids are still cached
    cuboid = httpx.get(f"{relay.url}/v1/cutout/dvid/w/u8/0/0:64/0:64/0:8/")
    assert cuboid.headers["X-Cache"] == "HIT"
    assert np.array_equal(read(relay, "dvid", "uint8", box), before)


def _blosc(array: np.ndarray) -> bytes:
    return bytes(blosc.compress(np.ascontiguousarray(array).tobytes(),
                                typesize=array.dtype.itemsize * 8))



# --- bad writes -----------------------------------------------------------------------------

GOOD = "/v1/cutout/zarr/w/u8/0/10:50/20:60/2:6/"


class _Exploit:
    """A pickle that would run a command if it were unpickled freely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _bad_writes(marker: Path) -> list[tuple[str, str, bytes, str, int, int]]:
    import pickle

    good = np.ones((4, 40, 40), np.uint8)
    exploit = blosc.compress(pickle.dumps(_Exploit(marker)), typesize=1)
    return [
        ("wrong length", GOOD, _blosc(np.ones((4, 40, 39), np.uint8)), "application/blosc",
         400, 2002),
        ("wrong dtype", GOOD, _blosc(good.astype(np.uint16)), "application/blosc", 400, 2001),
        ("not a frame", GOOD, b"not blosc at all", "application/blosc", 400, 2002),
        ("out of bounds", "/v1/cutout/zarr/w/u8/0/190:210/20:60/2:6/",
         _blosc(np.ones((4, 40, 20), np.uint8)), "application/blosc", 400, 1001),
        ("read-only source", "/v1/cutout/ro/w/u8/0/10:50/20:60/2:6/", _blosc(good),
         "application/blosc", 405, 1006),
        ("a derived level", "/v1/cutout/zarr/w/u8/1/10:50/20:60/2:6/", _blosc(good),
         "application/blosc", 400, 1002),
        ("a form a web page may send", GOOD, b"a=1", "application/x-www-form-urlencoded",
         415, 1003),
        ("no content type", GOOD, _blosc(good), "", 415, 1003),
        ("a pickle naming something else", GOOD, exploit, "application/blosc-python",
         400, 2002),
        ("a pickle of the wrong dtype", GOOD, blosc.pack_array(good.astype(np.uint64)),
         "application/blosc-python", 400, 2001),
        # issue 25: a pickle of shape and dtype alone (finding 3: np.empty was written), an
        # array of the box's voxels in another shape (finding 10: written scrambled)
        ("a pickle without its voxels", GOOD, blosc.compress(pickle.dumps(
            _Claiming((4, 40, 40), "uint8", b""), 2)), "application/blosc-python", 400, 2002),
        ("an array of another shape", GOOD, blosc.pack_array(good.reshape(40, 40, 4)),
         "application/blosc-python", 400, 2002),
        ("a body larger than the box", GOOD,
         _blosc(random_voxels(np.random.default_rng(5), (4, 200, 200), "uint8")),
         "application/blosc", 413, 2000),
        ("no such channel", "/v1/cutout/zarr/w/nope/0/10:50/20:60/2:6/", _blosc(good),
         "application/blosc", 404, 4000),
    ]


def test_bad_writes_get_bossdb_errors_and_change_nothing(relay: RelayProcess, stores: Stores,
                                                         tmp_path: Path) -> None:
    box = ((10, 50), (20, 60), (2, 6))
    grown = around(box)
    before = stores.truth("zarr", "uint8", grown)
    assert np.array_equal(read(relay, "zarr", "uint8", grown), before)
    marker = tmp_path / "exploited"
    with httpx.Client(base_url=relay.url) as client:
        for what, url, body, content_type, status, code in _bad_writes(marker):
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.post(url, content=body, headers=headers)
            assert (response.status_code, response.json().get("code")) == (status, code), (
                what, response.text)
            assert response.json()["message"], what
        # nothing changed: not the store, and not the cache (the cuboid is still a hit)
        assert not marker.exists()
        assert np.array_equal(stores.truth("zarr", "uint8", grown), before)
        cuboid = client.get("/v1/cutout/zarr/w/u8/0/0:64/0:64/0:8/")
        assert cuboid.headers["X-Cache"] == "HIT"
    assert np.array_equal(read(relay, "zarr", "uint8", grown), before)


def test_blosc_python_bodies_are_read_as_arrays(relay: RelayProcess, stores: Stores) -> None:
    new = random_voxels(np.random.default_rng(3), (3, 7, 11), "uint16")
    response = httpx.post(f"{relay.url}/v1/cutout/zarr/w/u16/0/100:111/40:47/10:13/",
                          content=blosc.pack_array(new),
                          headers={"Content-Type": "application/blosc-python"})
    assert response.status_code == 201, response.text
    assert response.content == b""
    assert np.array_equal(stores.truth("zarr", "uint16", ((100, 111), (40, 47), (10, 13))), new)


def test_writes_need_a_token_when_the_relay_has_tokens(stores: Stores, tmp_path: Path) -> None:
    # a relay of its own over the module's stores: the box it writes is one no later test of
    # this module reads afterwards through the module's relay (which does not learn of it)
    relay = relay_over(tmp_path, stores.sources, tokens=["s3cret"]).start()
    try:
        body = _blosc(np.full((2, 3, 4), 9, np.uint8))
        url = f"{relay.url}/v1/cutout/zarr/w/u8/0/150:154/100:103/12:14/"
        headers = {"Content-Type": "application/blosc"}
        refused = [
            httpx.post(url, content=body, headers=headers),
            httpx.post(url, content=body, headers={**headers, "Authorization": "Token wrong"}),
            # the cookie a browser gets from /?token= opens reads only, never writes
            httpx.post(url, content=body, headers={**headers, "Cookie": "relay_token=s3cret"}),
        ]
        before = stores.truth("zarr", "uint8", ((150, 154), (100, 103), (12, 14)))
        for response in refused:
            assert response.status_code == 401, response.text
            assert response.json()["code"] == 3004
        assert not (before == 9).all()
        accepted = httpx.post(url, content=body,
                              headers={**headers, "Authorization": "Token s3cret"})
        assert accepted.status_code == 201, accepted.text
        assert (stores.truth("zarr", "uint8", ((150, 154), (100, 103), (12, 14))) == 9).all()
    finally:
        relay.stop()


# --- a fleet ----------------------------------------------------------------------------------


def _fleet_store(root: Path, initial: np.ndarray) -> dict[str, Any]:
    array = zarr.create_array(str(root / "fleet.zarr"), shape=initial.shape, chunks=CHUNK_ZYX,
                              dtype=initial.dtype, zarr_format=3)
    array[:] = initial
    return {"collection": "fleet", "experiment": "w", "channel": "u16", "kind": "zarr",
            "url": (root / "fleet.zarr").as_uri(), "voxel_size": [4, 4, 40],
            "writable": True, "cuboid": CUBOID}


def test_a_relay_sharing_the_redis_tier_serves_a_write_at_once(tmp_path: Path,
                                                                redis_url: str) -> None:
    """Two relays, one Redis (a single server, then a Cluster): what B holds in memory of a
    box A writes is not served after A's 201."""
    rng = np.random.default_rng(17)
    initial = random_voxels(rng, SHAPE_ZYX, "uint16")
    source = _fleet_store(tmp_path, initial)
    prefix = f"writes-{tmp_path.name}:"
    relays = [RelayProcess(["--config", str(write_config(
        tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache", redis_url=redis_url,
        redis_prefix=prefix))], log=tmp_path / f"{name}.log").start() for name in ("a", "b")]
    a, b = relays
    try:
        box = ((30, 95), (12, 70), (3, 15))
        url = "/v1/cutout/fleet/w/u16/0/{}:{}/{}:{}/{}:{}/".format(*box[0], *box[1], *box[2])
        with httpx.Client(base_url=b.url) as client:
            for _ in range(2):
                warm = client.get(url)
            assert warm.headers["X-Cache"] == "HIT"  # B serves it from its own memory
        assert np.array_equal(_decoded(warm.content, "uint16", box),
                              initial[3:15, 12:70, 30:95])
        new = random_voxels(rng, (12, 58, 65), "uint16")
        created = httpx.post(a.url + url, content=_blosc(new),
                             headers={"Content-Type": "application/blosc"})
        assert created.status_code == 201, created.text
        for relay in (b, a):
            got = httpx.get(relay.url + url)
            assert np.array_equal(_decoded(got.content, "uint16", box), new), relay.url
    finally:
        for relay in relays:
            relay.stop()


@pytest.mark.parametrize("loss", ["flush", "restart"])
def test_a_redis_that_lost_its_memory_brings_no_old_voxels_back(tmp_path: Path,
                                                                loss: str) -> None:
    """Finding 2 of issue 25: two relays share a Redis; both read 7; A writes 11; Redis loses
    its memory (FLUSHALL, or a restart without persistence, as docs/scaling.md advises): B
    served 7 again with no write at all, and after A wrote 22 (a 201) both served 11. Every
    read after each 201 is what was written, on both relays."""
    initial = np.full(SHAPE_ZYX, 7, np.uint16)
    source = _fleet_store(tmp_path, initial)
    box = ((30, 95), (12, 70), (3, 15))
    url = "/v1/cutout/fleet/w/u16/0/{}:{}/{}:{}/{}:{}/".format(*box[0], *box[1], *box[2])
    shape = (12, 58, 65)
    with RedisServer(tmp_path / "redis") as redis:
        relays = [RelayProcess(["--config", str(write_config(
            tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache",
            redis_url=redis.url))], log=tmp_path / f"{name}.log").start() for name in "ab"]
        a, b = relays

        def served(relay: RelayProcess) -> set[int]:
            got = httpx.get(relay.url + url)
            assert got.status_code == 200, got.text
            return set(np.unique(_decoded(got.content, "uint16", box)).tolist())

        def write(value: int) -> None:
            created = httpx.post(a.url + url, content=_blosc(np.full(shape, value, np.uint16)),
                                 headers={"Content-Type": "application/blosc"})
            assert created.status_code == 201, created.text

        try:
            for relay in (a, b, a, b):
                assert served(relay) == {7}
            write(11)
            for relay in (a, b, a, b):  # the second read of each is from its own memory
                assert served(relay) == {11}
            if loss == "flush":
                redis.cli("flushall")
            else:
                redis.kill()
                redis.start()
            for relay in (b, a, b, a):
                assert served(relay) == {11}, relay.url
            write(22)
            for relay in (b, a, b, a):
                assert served(relay) == {22}, relay.url
        finally:
            for relay in relays:
                relay.stop()


def _decoded(body: bytes, dtype: str, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    shape = tuple(hi - lo for lo, hi in box[::-1])
    return np.frombuffer(blosc.decompress(body), dtype=dtype).reshape(shape)


def test_a_time_range_writes_every_sample_of_it(tmp_path: Path) -> None:
    """A 4-D POST (a time range in the URL, T,Z,Y,X voxels) into a t,c,z,y,x OME-Zarr: each
    sample goes to its own time index, and the other samples are untouched."""
    group = zarr.open_group(str(tmp_path / "series.ome.zarr"), mode="w", zarr_format=3)
    rng = np.random.default_rng(23)
    initial = random_voxels(rng, (4, 2, 12, 40, 50), "uint16")  # t, c, z, y, x
    group.create_array("0", shape=initial.shape, chunks=(1, 1, 4, 16, 16),
                       dtype="uint16")[:] = initial
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space")}
                 for a in "tczyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 40.0, 4.0, 4.0]}]}]}]}
    source = {"collection": "ts", "experiment": "w", "channel": "c1", "kind": "zarr",
              "url": (tmp_path / "series.ome.zarr").as_uri(), "channel_index": 1,
              "writable": True}
    relay = relay_over(tmp_path, [source]).start()
    try:
        new = random_voxels(rng, (2, 5, 20, 30), "uint16")
        url = f"{relay.url}/v1/cutout/ts/w/c1/0/7:37/9:29/3:8/1:3/"
        created = httpx.post(url, content=_blosc(new),
                             headers={"Content-Type": "application/blosc"})
        assert created.status_code == 201, created.text
        expected = initial.copy()
        expected[1:3, 1, 3:8, 9:29, 7:37] = new
        stored = np.asarray(zarr.open_array(str(tmp_path / "series.ome.zarr" / "0"),
                                            mode="r")[:])
        assert np.array_equal(stored, expected)
        got = httpx.get(f"{relay.url}/v1/cutout/ts/w/c1/0/0:50/0:40/0:12/0:4/")
        assert np.array_equal(
            np.frombuffer(blosc.decompress(got.content), "uint16").reshape(
                4, 12, 40, 50), expected[:, 1])
    finally:
        relay.stop()


def test_write_tokens_guard_writes_and_leave_reads_open(stores: Stores, tmp_path: Path) -> None:
    relay = relay_over(tmp_path, stores.sources, write_tokens=["pen"]).start()
    try:
        url = f"{relay.url}/v1/cutout/zarr/w/u16/0/150:154/100:103/12:14/"
        assert httpx.get(url).status_code == 200  # no token needed to read
        body, headers = _blosc(np.full((2, 3, 4), 77, np.uint16)), {
            "Content-Type": "application/blosc"}
        for authorization in (None, "Token public", "Bearer nope"):
            sent = {**headers, **({"Authorization": authorization} if authorization else {})}
            response = httpx.post(url, content=body, headers=sent)
            assert (response.status_code, response.json()["code"]) == (401, 3004)
        assert not (stores.truth("zarr", "uint16", ((150, 154), (100, 103), (12, 14))) == 77
                    ).all()
        accepted = httpx.post(url, content=body, headers={**headers, "Authorization": "Token pen"})
        assert accepted.status_code == 201, accepted.text
        assert (stores.truth("zarr", "uint16", ((150, 154), (100, 103), (12, 14))) == 77).all()
    finally:
        relay.stop()


def test_with_tokens_and_write_tokens_a_write_token_writes(stores: Stores, tmp_path: Path) -> None:
    """Finding 14 of issue 25: with both ``server.tokens`` and ``server.write_tokens`` set, a
    write token got 401 from the read gate before the write route could accept it."""
    relay = relay_over(tmp_path, stores.sources, tokens=["reader"], write_tokens=["pen"]).start()
    try:
        url = f"{relay.url}/v1/cutout/zarr/w/u16/0/160:164/100:103/12:14/"
        body, headers = _blosc(np.full((2, 3, 4), 55, np.uint16)), {
            "Content-Type": "application/blosc"}
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Token reader"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": "Token pen"}).status_code == 200
        for authorization in (None, "Token reader", "Token wrong"):
            sent = {**headers, **({"Authorization": authorization} if authorization else {})}
            response = httpx.post(url, content=body, headers=sent)
            assert (response.status_code, response.json()["code"]) == (401, 3004)
        accepted = httpx.post(url, content=body, headers={**headers, "Authorization": "Token pen"})
        assert accepted.status_code == 201, accepted.text
        assert (stores.truth("zarr", "uint16", ((160, 164), (100, 103), (12, 14))) == 55).all()
    finally:
        relay.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_to_black_zeros_a_box_at_every_hop(kind: str, chain: Chain, chain_stores: Stores) -> None:
    """BossDB's ``to_black`` (issue 26): intern's ``create_cutout_to_black`` through a chain of
    three writes zeros over an unaligned box of the store, and every hop, having cached the
    old voxels, serves the zeros at once and the rest of the touched cuboids unchanged."""
    box = ((23, 71), (5, 49), (3, 11))
    grown = around(box)
    for relay in chain.relays:
        read(relay, kind, "uint16", grown)
    before = chain_stores.truth(kind, "uint16", grown)
    rmt = remote(chain.laptop)
    rmt.create_cutout_to_black(rmt.get_channel("u16", kind, "w"), 0, *[list(r) for r in box])
    expected = before.copy()
    (x0, x1), (y0, y1), (z0, z1) = box
    (gx, _), (gy, _), (gz, _) = grown
    expected[z0 - gz:z1 - gz, y0 - gy:y1 - gy, x0 - gx:x1 - gx] = 0
    assert np.array_equal(chain_stores.truth(kind, "uint16", grown), expected)
    assert (chain_stores.truth(kind, "uint16", box) == 0).all()
    for relay in chain.relays:
        assert np.array_equal(read(relay, kind, "uint16", grown), expected), relay.url


def test_to_black_is_a_write_and_refused_as_one(relay: RelayProcess, stores: Stores) -> None:
    url = f"{relay.url}/v1/cutout/to_black/ro/w/u8/0/10:50/20:60/2:6/"
    refused = httpx.put(url, headers={"Content-Type": "application/blosc"})
    assert (refused.status_code, refused.json()["code"]) == (405, 1006)  # a read-only source
    outside = httpx.put(f"{relay.url}/v1/cutout/to_black/zarr/w/u8/0/190:210/20:60/2:6/")
    assert (outside.status_code, outside.json()["code"]) == (400, 1001)
    derived = httpx.put(f"{relay.url}/v1/cutout/to_black/zarr/w/u8/1/10:50/20:60/2:6/")
    assert (derived.status_code, derived.json()["code"]) == (400, 1002)


def test_iso_is_served_where_it_is_the_same_voxels_and_refused_elsewhere(
        relay: RelayProcess) -> None:
    """``iso=true`` (issue 26) asks for BossDB's isotropic pyramid: refused with a 400 that
    says so on an anisotropic channel (4 × 4 × 40 nm here), never silently ignored."""
    url = f"{relay.url}/v1/cutout/zarr/w/u8/0/10:50/20:60/2:6/"
    assert httpx.get(url + "?iso=false").content == httpx.get(url).content
    for path in (url, f"{relay.url}/v1/downsample/zarr/w/u8/"):
        refused = httpx.get(path + "?iso=true")
        assert (refused.status_code, refused.json()["code"]) == (400, 1000), refused.text
        assert "isotropic" in refused.json()["message"]
        assert httpx.get(path + "?iso=maybe").status_code == 400


@pytest.mark.parametrize("via", ["one relay", "three relays"])
def test_ids_in_a_region_are_exact_and_follow_writes(via: str,
                                                     request: pytest.FixtureRequest) -> None:
    """``get_ids_in_region`` (issue 26): intern's call answers the exact nonzero labels of a
    half-open region that crosses cuboid lines (what BossDB's own test of it checks, and
    skips: its index is off), through one relay and a chain, and after a write that adds a
    label and removes another the answer follows at once on every relay."""
    one = via == "one relay"
    relays = ([request.getfixturevalue("relay")] if one
              else request.getfixturevalue("chain").relays)
    stores: Stores = request.getfixturevalue("stores" if one else "chain_stores")
    region = ((50, 130), (40, 100), (4, 14))  # crosses 64 × 64 × 8 cuboid lines
    rmt = remote(relays[0])
    channel = rmt.get_channel("u64", "zarr", "w")
    base = np.zeros((10, 60, 80), np.uint64)
    base[2:5, 10:20, 5:70] = 2**40 + 3
    base[6:9, 30:59, 70:80] = 17
    base[9, 59, 79] = 2**64 - 1  # the region's last voxel
    rmt.create_cutout(channel, 0, *[list(r) for r in region], base)
    for relay in relays:
        got = remote(relay).get_ids_in_region(channel, 0, *[list(r) for r in region])
        assert got == [17, 2**40 + 3, 2**64 - 1], relay.url
    # one voxel past the region on each axis is left out (half-open)
    assert remote(relays[-1]).get_ids_in_region(
        channel, 0, [50, 129], [40, 99], [4, 13]) == [17, 2**40 + 3]
    moved = base.copy()
    moved[moved == 17] = 5
    rmt.create_cutout(channel, 0, *[list(r) for r in region], moved)
    assert (stores.truth("zarr", "uint64", region) == moved).all()
    for relay in relays:
        got = remote(relay).get_ids_in_region(channel, 0, *[list(r) for r in region])
        assert got == [5, 2**40 + 3, 2**64 - 1], relay.url


def test_ids_refuse_images_and_regions_outside(relay: RelayProcess) -> None:
    image = httpx.get(f"{relay.url}/v1/ids/zarr/w/u8/0/0:10/0:10/0:4/0:1/")
    assert (image.status_code, image.json()["code"]) == (400, 2003)
    empty = httpx.get(f"{relay.url}/v1/ids/zarr/w/u64/0/0:1/0:1/0:1/")
    assert empty.status_code == 200 and set(empty.json()) == {"ids"}
    outside = httpx.get(f"{relay.url}/v1/ids/zarr/w/u64/0/0:1000/0:10/0:4/")
    assert (outside.status_code, outside.json()["code"]) == (400, 1001)


def test_a_cutout_without_a_time_range_reads_the_default_time_sample(tmp_path: Path) -> None:
    """BossDB reads (and writes) a channel's ``default_time_sample`` when the URL has no time
    range (issue 26). A source's ``default_time_sample`` is that sample: its channel JSON says
    so, cutouts without a time range (a whole cuboid and an unaligned box, through a relay and
    a chain hop that learns the default from it) are that sample, and so is a POST's."""
    group = zarr.open_group(str(tmp_path / "series.ome.zarr"), mode="w", zarr_format=3)
    initial = np.stack([np.full((16, 64, 64), 10 * (t + 1), np.uint16) for t in range(4)])
    group.create_array("0", shape=initial.shape, chunks=(1, 8, 32, 32),
                       dtype="uint16")[:] = initial
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "time" if a == "t" else "space"} for a in "tzyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 40.0, 4.0, 4.0]}]}]}]}
    source = {"collection": "ts", "experiment": "w", "channel": "c", "kind": "zarr",
              "url": (tmp_path / "series.ome.zarr").as_uri(), "default_time_sample": 2,
              "writable": True, "cuboid": [32, 32, 8]}
    bad = {**source, "experiment": "bad", "default_time_sample": 9}
    lab = relay_over(tmp_path, [source, bad], "lab").start()
    laptop = relay_over(tmp_path, [{"collection": "*", "kind": "boss", "url": lab.url,
                                    "writable": True}], "laptop").start()
    try:
        for relay in (lab, laptop):
            channel = httpx.get(f"{relay.url}/v1/collection/ts/experiment/w/channel/c/").json()
            assert channel["default_time_sample"] == 2
            for box in (((0, 32), (0, 32), (0, 8)), ((5, 50), (3, 61), (2, 13))):
                url = "/v1/cutout/ts/w/c/0/{}:{}/{}:{}/{}:{}/".format(*box[0], *box[1], *box[2])
                for _ in range(2):  # cold, then from the cache
                    got = _decoded(httpx.get(relay.url + url).content, "uint16", box)
                    assert (got == 30).all(), (relay.url, box)
        written = np.full((4, 8, 8), 77, np.uint16)
        created = httpx.post(f"{laptop.url}/v1/cutout/ts/w/c/0/8:16/8:16/4:8/",
                             content=_blosc(written),
                             headers={"Content-Type": "application/blosc"})
        assert created.status_code == 201, created.text
        stored = np.asarray(zarr.open_array(str(tmp_path / "series.ome.zarr" / "0"),
                                            mode="r")[:])
        expected = initial.copy()
        expected[2, 4:8, 8:16, 8:16] = 77
        assert np.array_equal(stored, expected)
        refused = httpx.get(f"{lab.url}/v1/cutout/ts/bad/c/0/0:8/0:8/0:8/")
        assert refused.status_code == 502 and "default_time_sample" in refused.json()["message"]
    finally:
        laptop.stop()
        lab.stop()
