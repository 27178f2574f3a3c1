"""BossDB's object services and metadata beyond ids (issue 26): bounding boxes from the label
index, reserved ids that are never handed out twice, and metadata kept durably — each checked
against the voxels written to the store, through one relay, a chain and a fleet, across writes
and restarts of everything (Redis included, run with ``save ""``)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from intern.remote.boss import BossRemote

from relay.geometry import Vec3
from relay.labels import cell_bounds, distinct, read_bounds

from .dvid_double import DvidDouble
from .servers import RedisServer, RelayProcess, ThreadedServer, relay_over, write_config

SHAPE_ZYX = (20, 150, 200)
CUBOID = [64, 64, 8]  # x, y, z


def _store(root: Path, name: str, voxels: np.ndarray) -> dict[str, Any]:
    array = zarr.create_array(str(root / f"{name}.zarr"), shape=voxels.shape, chunks=(8, 32, 32),
                              dtype=voxels.dtype, zarr_format=3)
    array[:] = voxels
    return {"collection": "obj", "experiment": "w", "channel": name, "kind": "zarr",
            "url": (root / f"{name}.zarr").as_uri(), "writable": True, "cuboid": CUBOID}


def _objects() -> np.ndarray:
    voxels = np.zeros(SHAPE_ZYX, np.uint64)
    voxels[2:5, 10:20, 5:70] = 2**40 + 3      # crosses x = 64
    voxels[6:19, 30:31, 70:71] = 17           # a rod crossing z = 8 and 16
    voxels[19, 149, 199] = 2**64 - 1          # the volume's last voxel
    voxels[0, 0, 0] = 17                      # 17 in two places: one box spans both
    return voxels


def _box(relay: RelayProcess, channel: str, label: int, kind: str,
         resolution: int = 0) -> httpx.Response:
    return httpx.get(f"{relay.url}/v1/boundingbox/obj/w/{channel}/{resolution}/{label}/",
                     params={"type": kind}, timeout=60)


def _truth(voxels: np.ndarray, label: int) -> dict[str, list[int]]:
    z, y, x = np.nonzero(voxels == np.uint64(label))
    return {"x_range": [int(x.min()), int(x.max()) + 1],
            "y_range": [int(y.min()), int(y.max()) + 1],
            "z_range": [int(z.min()), int(z.max()) + 1], "t_range": [0, 1]}


def _loose(tight: dict[str, list[int]]) -> dict[str, list[int]]:
    out = {}
    for axis, cub in zip("xyz", CUBOID, strict=True):
        lo, hi = tight[f"{axis}_range"]
        out[f"{axis}_range"] = [lo // cub * cub, -(-hi // cub) * cub]
    return {**out, "t_range": [0, 1]}


@given(arrays(np.uint64, st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 9)),
              elements=st.sampled_from([0, 0, 1, 5, 2**40, 2**64 - 1])),
       st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)))
@settings(max_examples=200, deadline=None)
def test_a_cells_bounds_are_each_labels_voxel_bounds(voxels: np.ndarray,
                                                     corner: tuple[int, int, int]) -> None:
    labels, coords = read_bounds(cell_bounds(voxels, Vec3(*corner)))
    expected = [v for v in np.unique(voxels) if v != 0]
    assert labels.tolist() == expected
    for label, row in zip(labels, coords, strict=True):
        z, y, x = np.nonzero(voxels == label)
        assert row.tolist() == [x.min() + corner[0], y.min() + corner[1], z.min() + corner[2],
                                x.max() + corner[0], y.max() + corner[1], z.max() + corner[2]]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RelayProcess]]:
    """lab (over a writable zarr of labels) ← laptop."""
    root = tmp_path_factory.mktemp("objects")
    lab = relay_over(root, [_store(root, "seg", _objects()),
                            _store(root, "img", np.ones(SHAPE_ZYX, np.uint8))], "lab").start()
    laptop = relay_over(root, [{"collection": "*", "kind": "boss", "url": lab.url,
                                "writable": True}], "laptop").start()
    yield [laptop, lab]
    laptop.stop()
    lab.stop()


def test_bounding_boxes_are_exact_through_a_chain_and_follow_a_write(
        chain: list[RelayProcess]) -> None:
    """Tight boxes are each id's exact half-open voxel bounds, loose ones the cuboids of the
    advertised grid holding it (not clipped to the frame); after a write that moves a label,
    both follow at once on every relay of the chain."""
    voxels = _objects()
    for relay in chain:
        for label in (2**40 + 3, 17, 2**64 - 1):
            tight = _box(relay, "seg", label, "tight")
            assert tight.status_code == 200, tight.text
            assert tight.json() == _truth(voxels, label), (relay.url, label)
            assert _box(relay, "seg", label, "loose").json() == _loose(_truth(voxels, label))
    # the last voxel's loose box passes the frame (200 × 150 × 20) as BossDB's does
    assert _box(chain[0], "seg", 2**64 - 1, "loose").json()["x_range"] == [192, 256]
    moved = np.zeros((4, 10, 30), np.uint64)
    moved[1:3, 2:5, 20:25] = 17  # 17 now also at x 120..125, y 52..55, z 9..11
    rmt = BossRemote({"protocol": "http", "host": chain[0].host, "token": "public"})
    channel = rmt.get_channel("seg", "obj", "w")
    rmt.create_cutout(channel, 0, [100, 130], [50, 60], [8, 12], moved)
    voxels[8:12, 50:60, 100:130] = moved
    for relay in chain:
        assert _box(relay, "seg", 17, "tight").json() == _truth(voxels, 17), relay.url
        assert _box(relay, "seg", 17, "tight").json()["x_range"] == [0, 125]
    # a label blacked out is gone (intern's create_cutout skips an all-zero array)
    rmt.create_cutout_to_black(channel, 0, [190, 200], [140, 150], [19, 20])
    for relay in chain:
        gone = _box(relay, "seg", 2**64 - 1, "tight")
        assert (gone.status_code, gone.json()["code"]) == (404, 4004), relay.url


def test_bounding_box_refusals(chain: list[RelayProcess]) -> None:
    for relay in chain:
        unknown = _box(relay, "seg", 12345678, "loose")
        assert (unknown.status_code, unknown.json()["code"]) == (404, 4004)
        assert "12345678" in unknown.json()["message"]
        image = _box(relay, "img", 1, "loose")
        assert (image.status_code, image.json()["code"]) == (400, 2003)
        kind = _box(relay, "seg", 17, "exact")
        assert (kind.status_code, kind.json()["code"]) == (400, 1005)
        level = _box(relay, "seg", 17, "tight", resolution=9)
        assert (level.status_code, level.json()["code"]) == (400, 1002)


def test_a_bounding_box_past_the_index_bound_is_a_413_naming_it(tmp_path: Path) -> None:
    relay = relay_over(tmp_path, [_store(tmp_path, "seg", _objects())],
                       max_index_bytes=2**20).start()  # the volume is 4.6 MiB of uint64
    try:
        refused = _box(relay, "seg", 17, "tight")
        assert (refused.status_code, refused.json()["code"]) == (413, 2000)
        assert "server.max_index_bytes" in refused.json()["message"]
        assert relay.metrics().get("relay_label_index_cells_made_total", 0) == 0
    finally:
        relay.stop()


def _reserve(relay: RelayProcess, count: int, channel: str = "seg") -> int:
    got = httpx.get(f"{relay.url}/v1/reserve/obj/w/{channel}/{count}/", timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["count"] == str(count)
    start: int = got.json()["start_id"]
    return start


def test_reserve_starts_above_the_largest_id_and_is_durable(tmp_path: Path) -> None:
    """A channel's first block starts above the largest id its voxels hold; blocks from two
    relays of a fleet (shared Redis and state_dir) and a chain hop in front of one, before
    and after every process (Redis with ``save ""`` too) is killed and started again, never
    overlap; ``0`` answers the next id and consumes nothing."""
    voxels = np.zeros(SHAPE_ZYX, np.uint64)
    voxels[3, 100, 150] = 2**40 + 9
    voxels[7, 10, 10] = 12
    source = _store(tmp_path, "seg", voxels)
    state = tmp_path / "fleet-state"
    blocks: list[tuple[int, int]] = []
    with RedisServer(tmp_path / "redis") as redis:
        configs = [write_config(tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache",
                                server={"state_dir": str(state)}, redis_url=redis.url)
                   for name in "ab"]

        def start_all() -> list[RelayProcess]:
            fleet = [RelayProcess(["--config", str(config)],
                                  log=tmp_path / f"{config.stem}.log").start()
                     for config in configs]
            hop = relay_over(tmp_path, [{"collection": "*", "kind": "boss", "url": fleet[1].url,
                                         "writable": True}], "hop").start()
            return [*fleet, hop]

        for round_ in range(2):
            relays = start_all()
            try:
                if round_ == 0:
                    peek = _reserve(relays[2], 0)
                    assert peek == 2**40 + 10  # above the largest id the voxels hold
                    assert _reserve(relays[0], 0) == peek  # nothing consumed
                for count in (1, 7, 100, 3):
                    for relay in relays:
                        start = _reserve(relay, count)
                        blocks.append((start, start + count))
            finally:
                for relay in relays:
                    relay.stop()
            redis.kill()
            redis.start()
    blocks.sort()
    assert blocks[0][0] == 2**40 + 10
    for (_, stop), (start, _) in itertools.pairwise(blocks):
        assert stop <= start, blocks


def test_reserve_is_a_write(tmp_path: Path) -> None:
    sources = [_store(tmp_path, "seg", _objects()), _store(tmp_path, "img",
                                                           np.ones(SHAPE_ZYX, np.uint8))]
    read_only = {**_store(tmp_path, "ro", _objects()), "writable": False}
    relay = relay_over(tmp_path, [*sources, read_only], write_tokens=["w"]).start()
    try:
        url = f"{relay.url}/v1/reserve/obj/w"
        assert httpx.get(f"{url}/seg/5/").status_code == 401
        auth = {"Authorization": "Token w"}
        assert httpx.get(f"{url}/ro/5/", headers=auth).status_code == 405
        image = httpx.get(f"{url}/img/5/", headers=auth)
        assert (image.status_code, image.json()["code"]) == (400, 2003)
        bad = httpx.get(f"{url}/seg/five/", headers=auth)
        assert (bad.status_code, bad.json()["code"]) == (400, 1002)
        # 2^64 - 1 is in the voxels: no id is left above it
        full = httpx.get(f"{url}/seg/1/", headers=auth)
        assert full.status_code == 400 and "2^64" in full.json()["message"]
    finally:
        relay.stop()


def _meta(relay: RelayProcess, method: str, path: str, token: str | None = "w",
          **query: str) -> httpx.Response:
    headers = {"Authorization": f"Token {token}"} if token else {}
    return httpx.request(method, f"{relay.url}/v1/meta/{path}", params=query, headers=headers)


def test_metadata_is_durable_shared_by_a_fleet_and_passed_through_a_chain(
        tmp_path: Path) -> None:
    """Key/values written through a chain hop land on the relay that owns the source, are
    seen by the other relay of its fleet (a shared state_dir) and by the hop at once, and are
    still there after every process, Redis included, was stopped and started again."""
    source = _store(tmp_path, "seg", _objects())
    state = tmp_path / "fleet-state"
    with RedisServer(tmp_path / "redis") as redis:
        configs = [write_config(tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache",
                                server={"state_dir": str(state), "write_tokens": ["w"]},
                                redis_url=redis.url) for name in "ab"]

        def start_all() -> list[RelayProcess]:
            fleet = [RelayProcess(["--config", str(config)],
                                  log=tmp_path / f"{config.stem}.log").start()
                     for config in configs]
            hop = relay_over(tmp_path, [{"collection": "*", "kind": "boss", "url": fleet[0].url,
                                         "writable": True, "forward_client_token": True}],
                             "hop").start()
            return [*fleet, hop]

        relays = start_all()
        a, b, hop = relays
        try:
            for path in ("obj/", "obj/w/", "obj/w/seg/"):
                assert _meta(hop, "POST", path, key="source", value=f"lab {path}").status_code \
                    == 201
                for relay in relays:
                    got = _meta(relay, "GET", path, key="source")
                    assert got.json() == {"key": "source", "value": f"lab {path}"}, relay.url
            assert _meta(hop, "PUT", "obj/w/seg/", key="source", value="v2").status_code == 200
            for relay in relays:  # the hop's held GET was forgotten by its own write
                assert _meta(relay, "GET", "obj/w/seg/", key="source").json()["value"] == "v2"
            again = _meta(b, "POST", "obj/w/seg/", key="source", value="x")
            assert (again.status_code, again.json()["code"]) == (400, 1003)
            assert _meta(a, "POST", "obj/", token=None, key="k", value="v").status_code == 401
        finally:
            for relay in relays:
                relay.stop()
        redis.kill()
        redis.start()
        relays = start_all()
        try:
            for relay in relays:
                assert _meta(relay, "GET", "obj/w/").json() == {"keys": ["source"]}
                assert _meta(relay, "GET", "obj/w/seg/", key="source").json()["value"] == "v2"
            assert _meta(relays[2], "DELETE", "obj/w/seg/", key="source").status_code == 204
            for relay in relays[:2]:
                missing = _meta(relay, "GET", "obj/w/seg/", key="source")
                assert (missing.status_code, missing.json()["code"]) == (400, 1003)
        finally:
            for relay in relays:
                relay.stop()


def test_metadata_refusals(tmp_path: Path) -> None:
    read_only = {**_store(tmp_path, "ro", _objects()), "writable": False}
    (tmp_path / "a-file").write_text("")
    relay = relay_over(tmp_path, [read_only, _store(tmp_path, "seg", _objects())],
                       state_dir=str(tmp_path / "a-file")).start()
    try:
        assert _meta(relay, "POST", "obj/w/ro/", key="k", value="v").status_code == 405
        for path in ("nope/", "obj/nope/", "obj/w/nope/"):
            missing = _meta(relay, "GET", path)
            assert (missing.status_code, missing.json()["code"]) == (404, 4000), path
        nothing = _meta(relay, "PUT", "obj/w/seg/", key="k")
        assert (nothing.status_code, nothing.json()["code"]) == (400, 1003)  # no value
        # a state directory that cannot be kept: a clear 503 naming the setting, no traceback
        unkept = _meta(relay, "GET", "obj/w/seg/")
        assert (unkept.status_code, unkept.json()["code"]) == (503, 5004)
        assert "server.state_dir" in unkept.json()["message"]
    finally:
        relay.stop()


def test_ids_and_boxes_follow_a_write_on_every_relay_of_a_fleet(tmp_path: Path,
                                                                redis_server: Any) -> None:
    """Two relays sharing a Redis tier: B answers ids and boxes (its label index entries
    cached in its memory and in Redis); A writes a box that moves a label; B's next answers
    are the new ones, with no request to B in between."""
    voxels = _objects()
    source = _store(tmp_path, "seg", voxels)
    relays = [RelayProcess(["--config", str(write_config(
        tmp_path / f"{name}.yaml", [source], tmp_path / f"{name}-cache",
        redis_url=redis_server.url, redis_prefix=f"objects-{tmp_path.name}:"))],
        log=tmp_path / f"{name}.log").start() for name in "ab"]
    a, b = relays
    ids = "/v1/ids/obj/w/seg/0/0:200/0:150/0:20/"
    try:
        for relay in (b, a, b):
            assert _box(relay, "seg", 17, "tight").json() == _truth(voxels, 17)
            assert httpx.get(relay.url + ids).json()["ids"] == [
                "17", str(2**40 + 3), str(2**64 - 1)]
        moved = np.full((2, 10, 10), 23, np.uint64)
        url = "/v1/cutout/obj/w/seg/0/180:190/120:130/10:12/"
        rmt = BossRemote({"protocol": "http", "host": a.host, "token": "public"})
        rmt.create_cutout(rmt.get_channel("seg", "obj", "w"), 0, [180, 190], [120, 130],
                          [10, 12], moved)
        voxels[10:12, 120:130, 180:190] = 23
        rmt.create_cutout_to_black(rmt.get_channel("seg", "obj", "w"), 0, [0, 1], [0, 1],
                                   [0, 1])
        voxels[0, 0, 0] = 0
        assert httpx.get(b.url + url).status_code == 200
        for relay in (b, a):
            assert _box(relay, "seg", 17, "tight").json() == _truth(voxels, 17), relay.url
            assert _box(relay, "seg", 23, "loose").json() == _loose(_truth(voxels, 23))
            assert httpx.get(relay.url + ids).json()["ids"] == [
                "17", "23", str(2**40 + 3), str(2**64 - 1)]
    finally:
        for relay in relays:
            relay.stop()


def test_relay_warm_index_builds_the_label_index(tmp_path: Path) -> None:
    """``relay warm --index`` asks for each cuboid's ids: afterwards a bounding box and the
    ids of the whole volume make no cell and read nothing upstream."""
    relay = relay_over(tmp_path, [_store(tmp_path, "seg", _objects())]).start()
    try:
        done = subprocess.run([sys.executable, "-m", "relay", "warm", relay.url, "obj/w/seg",
                               "--index"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "with their label index" in done.stderr
        cells = 4 * 3 * 3  # 200 × 150 × 20 in 64 × 64 × 8
        assert relay.metrics()["relay_label_index_cells_made_total"] == cells
        reads = relay.upstream_reads()
        assert _box(relay, "seg", 17, "tight").json() == _truth(_objects(), 17)
        whole = httpx.get(f"{relay.url}/v1/ids/obj/w/seg/0/0:200/0:150/0:20/").json()
        assert whole["ids"] == ["17", str(2**40 + 3), str(2**64 - 1)]
        assert relay.metrics()["relay_label_index_cells_made_total"] == cells
        assert relay.upstream_reads() == reads
    finally:
        relay.stop()


def test_a_dvid_labelmap_reserves_from_its_own_counter(tmp_path: Path) -> None:
    """Over a DVID labelmap the relay reserves with DVID's own ``nextlabel``: its blocks and
    those DVID hands another client of the same instance (a proofreading tool) never overlap,
    and start above the labels the instance holds."""
    double = DvidDouble()
    node = double.add_repo("objects")
    double.add_instance(node, "seg", "labelmap", block_size=(32, 32, 32),
                        voxel_size=(4, 4, 40))
    voxels = np.zeros((32, 64, 64), np.uint64)
    voxels[3, 4, 5] = 9000
    double.write(node, "seg", (0, 0, 0), voxels)
    with ThreadedServer(double.app) as server:
        relay = relay_over(tmp_path, [{"collection": "obj", "experiment": "w", "channel": "seg",
                                       "kind": "dvid", "url": server.url, "uuid": node,
                                       "writable": True}]).start()
        try:
            assert _reserve(relay, 0) == 9001
            blocks = [(start := _reserve(relay, 10), start + 10)]
            other = httpx.post(f"{server.url}/api/node/{node}/seg/nextlabel/5").json()
            blocks.append((other["start"], other["end"] + 1))
            blocks.append((start := _reserve(relay, 3), start + 3))
            assert blocks == [(9001, 9011), (9011, 9016), (9016, 9019)]
            assert relay.metrics().get("relay_label_index_cells_made_total", 0) == 0
        finally:
            relay.stop()


@given(arrays(np.uint64, st.tuples(st.integers(0, 5), st.integers(1, 6), st.integers(1, 9)),
              elements=st.sampled_from([0, 3, 3, 3, 2**63, 2**64 - 1])))
@settings(max_examples=200, deadline=None)
def test_distinct_is_numpys_unique(voxels: np.ndarray) -> None:
    assert np.array_equal(distinct(voxels), np.unique(voxels))


def test_numbers_that_are_not_ascii_digits_are_400s(chain: list[RelayProcess]) -> None:
    """"²" is a digit to str.isdigit but not a number to int: a 400, never a 500."""
    lab = chain[1]
    for path in ("boundingbox/obj/w/seg/0/%C2%B2/", "reserve/obj/w/seg/%C2%B2/",
                 "image/obj/w/img/xy/0/0:8/0:8/%C2%B2/"):
        got = httpx.get(f"{lab.url}/v1/{path}")
        assert got.status_code == 400, (path, got.text)


def test_bounding_boxes_are_of_time_0_whatever_the_default_sample(tmp_path: Path) -> None:
    """BossDB's boxes read time 0. On a time series whose default sample is 2, a box is where
    the id lies at time 0; a write of the default sample leaves it, a write of time 0 moves
    it at once (the label index is made of time 0, which is what writes of time 0 drop)."""
    group = zarr.open_group(str(tmp_path / "series.ome.zarr"), mode="w", zarr_format=3)
    voxels = np.zeros((3, 16, 64, 64), np.uint64)
    for t in range(3):
        voxels[t, 2:4, 10 * t:10 * t + 5, 3:9] = 5  # label 5 moves along y with time
    group.create_array("0", shape=voxels.shape, chunks=(1, 8, 32, 32),
                       dtype="uint64")[:] = voxels
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "time" if a == "t" else "space"} for a in "tzyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 40.0, 4.0, 4.0]}]}]}]}
    relay = relay_over(tmp_path, [{"collection": "obj", "experiment": "w", "channel": "seg",
                                   "kind": "zarr", "url": (tmp_path / "series.ome.zarr").as_uri(),
                                   "default_time_sample": 2, "writable": True,
                                   "cuboid": [32, 32, 8]}]).start()
    try:
        def tight() -> dict[str, list[int]]:
            got = _box(relay, "seg", 5, "tight")
            assert got.status_code == 200, got.text
            return dict(got.json())

        assert tight() == _truth(voxels[0], 5)
        block = np.full((1, 2, 2), 5, np.uint64)
        url = f"{relay.url}/v1/cutout/obj/w/seg/0/40:42/50:52/10:11/"
        body = blosc.compress(block.tobytes(), typesize=8)
        headers = {"Content-Type": "application/blosc"}
        assert httpx.post(url, content=body, headers=headers).status_code == 201  # sample 2
        assert tight() == _truth(voxels[0], 5)
        assert httpx.post(url + "0:1/", content=body, headers=headers).status_code == 201
        voxels[0, 10:11, 50:52, 40:42] = 5
        assert tight() == _truth(voxels[0], 5)
    finally:
        relay.stop()
