"""Derived pyramid levels (relay/pyramid.py): the reduction against an independent numpy
reference, the level geometry, and a single-scale zarr read at every derived level through the
real intern and cloud-volume clients, for uint8, uint16 and uint64, on a volume whose sizes are
not multiples of the factors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from hypothesis import given, settings
from hypothesis import strategies as st
from intern.remote.boss import BossRemote
from starlette.testclient import TestClient

from relay.app import create_app
from relay.geometry import Box, Vec3
from relay.model import ChannelInfo, Level
from relay.pyramid import derive_levels, factor, reduce

from .conftest import make_settings
from .servers import RelayProcess, relay_over, write_config

SHAPE_ZYX = (19, 150, 261)          # no side a multiple of 2 but z's first factor of 1
VOXEL = (4.0, 4.0, 40.0)
CUBOID = [32, 32, 8]
#: a few labels, so blocks tie often: 0 (background) and two beyond 2^32
LABELS = np.array([0, 3, 2**40 + 1, 2**40 + 2], np.uint64)
#: x/y/z factor per derived level (2×2×1 while z ≥ 2·x, then 2×2×2): 4,4,40 → 8,8,40 →
#: 16,16,40 → 32,32,40 → 64,64,80; level 4 is 17×10×10 voxels, the first to fit a 32² cuboid
FACTORS = [(2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2)]
CHANNELS = {"em": "uint8", "prob": "uint16", "seg": "uint64"}


# --- the independent reference ------------------------------------------------------------

def _block_sums(data: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Per-block sums by np.add.reduceat (a partial last block is summed as it is)."""
    out = data
    for axis, step in zip((2, 1, 0), f, strict=True):  # x, y, z factors onto z, y, x axes
        out = np.add.reduceat(out, np.arange(0, out.shape[axis], step), axis=axis)
    return out


def reference_mean(data: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    exact = data.astype(object)  # Python integers: no overflow, no rounding
    total = _block_sums(exact, f)
    n = _block_sums(np.ones(data.shape, object), f)
    return np.asarray((total + n // 2) // n, dtype=data.dtype)


def reference_mode(data: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    values = np.unique(data)  # ascending: argmax takes the first, the smallest, on a tie
    counts = np.stack([_block_sums((data == v).astype(np.int64), f) for v in values])
    picked: np.ndarray = values[np.argmax(counts, axis=0)]
    return picked


def reference_pyramid(level0: np.ndarray, mode: bool) -> list[np.ndarray]:
    levels = [level0]
    for f in FACTORS:
        levels.append((reference_mode if mode else reference_mean)(levels[-1], f))
    return levels


# --- the reduction itself ----------------------------------------------------------------

@st.composite
def _blocks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    f = draw(st.sampled_from([(2, 2, 1), (2, 2, 2)]))
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "uint64"])))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(3))
    lead = tuple(draw(st.integers(0, a - 1)) for a in f)  # x, y, z
    top = 2 ** (8 * dtype.itemsize) - 1
    if draw(st.booleans()):
        values = draw(st.lists(st.sampled_from([0, 1, top - 1, top]), min_size=1, max_size=4))
    else:
        values = draw(st.lists(st.integers(0, top), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    data = np.random.default_rng(seed).choice(np.array(values, dtype), size=shape)
    return data, f, lead  # type: ignore[return-value]


def _with_lead(data: np.ndarray, lead: tuple[int, int, int], fill: int) -> tuple[
        np.ndarray, np.ndarray]:
    """The block as the reference sees it: ``lead`` absent voxels before it on each axis,
    marked absent in a mask."""
    pads = ((lead[2], 0), (lead[1], 0), (lead[0], 0))
    return np.pad(data, pads, constant_values=fill), np.pad(np.ones(data.shape, bool), pads)


@settings(max_examples=300, deadline=None)
@given(_blocks())
def test_reduce_equals_the_reference(case: tuple[np.ndarray, tuple[int, int, int],
                                                 tuple[int, int, int]]) -> None:
    data, f, lead = case
    padded, present = _with_lead(data, lead, 0)
    exact = np.where(present, padded.astype(object), 0)
    n = _block_sums(present.astype(object), f)
    want_mean = np.asarray((_block_sums(exact, f) + n // 2) // n, dtype=data.dtype)
    assert np.array_equal(reduce(data, Vec3(*f), "mean", Vec3(*lead)), want_mean)
    values = np.unique(data)
    counts = np.stack([_block_sums(((padded == v) & present).astype(np.int64), f)
                       for v in values])
    want_mode = values[np.argmax(counts, axis=0)]
    assert np.array_equal(reduce(data, Vec3(*f), "mode", Vec3(*lead)), want_mode)


def test_rounding_and_ties_are_as_documented() -> None:
    halves = np.array([[[1, 2], [1, 2]]], np.uint8)  # mean 1.5 → 2: halves round up
    assert reduce(halves, Vec3(2, 2, 1), "mean")[0, 0, 0] == 2
    near = np.array([[[1, 1], [1, 2]]], np.uint8)  # mean 1.25 → 1
    assert reduce(near, Vec3(2, 2, 1), "mean")[0, 0, 0] == 1
    top = np.full((2, 2, 2), 2**64 - 1, np.uint64)  # a sum of 2^67: no overflow
    assert reduce(top, Vec3(2, 2, 2), "mean")[0, 0, 0] == 2**64 - 1
    tie = np.array([[[9, 9], [4, 4]]], np.uint64)  # 2 votes each: the smaller label
    assert reduce(tie, Vec3(2, 2, 1), "mode")[0, 0, 0] == 4
    edge = np.array([[[200, 0, 100]]], np.uint8)  # the last block has one voxel: not darkened
    assert reduce(edge, Vec3(2, 2, 1), "mean").tolist() == [[[100, 100]]]


# --- the level geometry ------------------------------------------------------------------

def _info(size: tuple[int, int, int], cuboid: tuple[int, int, int], levels: int = 1
          ) -> ChannelInfo:
    return ChannelInfo(
        dtype=np.dtype(np.uint8), type="image",
        levels=tuple(Level((4.0 * 2**r, 4.0 * 2**r, 40.0),
                           Box(Vec3(0, 0, 0), Vec3(-(-size[0] >> r), -(-size[1] >> r), size[2])),
                           Vec3(*cuboid), Vec3(0, 0, 0)) for r in range(levels)))


def test_levels_follow_bosss_rule_until_one_fits_a_cuboid() -> None:
    info, pyramid = derive_levels(_info((261, 150, 19), (32, 32, 8)), "mean", None)
    assert pyramid is not None and pyramid.stored == 1
    assert [level.voxel_size for level in info.levels] == [
        (4, 4, 40), (8, 8, 40), (16, 16, 40), (32, 32, 40), (64, 64, 80)]
    assert [tuple(level.bounds.stop) for level in info.levels] == [
        (261, 150, 19), (131, 75, 19), (66, 38, 19), (33, 19, 19), (17, 10, 10)]
    assert [factor(level.voxel_size) for level in info.levels[:-1]] == [
        Vec3(*f) for f in FACTORS]
    capped, _ = derive_levels(_info((261, 150, 19), (32, 32, 8)), "mean", 3)
    assert len(capped.levels) == 3
    stored = _info((261, 150, 19), (32, 32, 8), levels=2)
    more, pyramid = derive_levels(stored, "mean", None)
    assert pyramid is not None and pyramid.stored == 2 and len(more.levels) == 5
    fits = _info((30, 30, 100), (32, 32, 8))
    assert derive_levels(fits, "mean", None) == (fits, None)


# --- through the relay and the real clients ----------------------------------------------

def _volume(name: str) -> np.ndarray:
    rng = np.random.default_rng(list(CHANNELS).index(name))
    if name == "seg":
        return rng.choice(LABELS, size=SHAPE_ZYX)
    dtype = np.dtype(CHANNELS[name])
    return rng.integers(0, np.iinfo(dtype).max, size=SHAPE_ZYX, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("single-scale")
    sources = []
    for name in CHANNELS:
        data = _volume(name)
        path = root / f"{name}.zarr"
        array = zarr.create_array(str(path), shape=data.shape, chunks=(8, 32, 32),
                                  dtype=data.dtype, fill_value=0)
        array[:] = data
        sources.append({"collection": "pyr", "experiment": "single", "channel": name,
                        "kind": "zarr", "url": path.as_uri(), "voxel_size": list(VOXEL),
                        "cuboid": CUBOID})
    return {"root": root, "sources": sources,
            "truth": {name: reference_pyramid(_volume(name), name == "seg") for name in CHANNELS}}


@pytest.fixture(scope="module")
def relay(stores: dict[str, Any]) -> Iterator[RelayProcess]:
    with relay_over(stores["root"], stores["sources"]) as process:
        yield process


def test_metadata_lists_the_derived_levels(relay: RelayProcess) -> None:
    remote = BossRemote({"protocol": "http", "host": relay.host, "token": "public"})
    experiment = remote.get_experiment("pyr", "single")
    assert experiment.num_hierarchy_levels == 5
    channel = remote.get_channel("em", "pyr", "single")
    assert channel.downsample_status == "DOWNSAMPLED"
    vol = CloudVolume(f"precomputed://{relay.url}/precomputed/pyr/single/em", progress=False)
    assert [list(s["resolution"]) for s in vol.info["scales"]] == [
        [4, 4, 40], [8, 8, 40], [16, 16, 40], [32, 32, 40], [64, 64, 80]]


@pytest.mark.parametrize("name", list(CHANNELS))
def test_every_level_equals_the_reference_through_intern(relay: RelayProcess,
                                                         stores: dict[str, Any],
                                                         name: str) -> None:
    remote = BossRemote({"protocol": "http", "host": relay.host, "token": "public"})
    channel = remote.get_channel(name, "pyr", "single")
    for res, want in enumerate(stores["truth"][name]):
        z, y, x = want.shape
        got = remote.get_cutout(channel, res, [0, x], [0, y], [0, z])
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"{name} level {res}")
        # an unaligned box inside the level, off every cuboid line
        box = ([x // 3, x - 1], [y // 4, y], [z // 2, z])
        part = remote.get_cutout(channel, res, *box)
        np.testing.assert_array_equal(part, want[z // 2:, y // 4:, x // 3:x - 1])


@pytest.mark.parametrize("name", list(CHANNELS))
def test_every_level_equals_the_reference_through_cloud_volume(relay: RelayProcess,
                                                               stores: dict[str, Any],
                                                               name: str) -> None:
    for res, want in enumerate(stores["truth"][name]):
        vol = CloudVolume(f"precomputed://{relay.url}/precomputed/pyr/single/{name}", mip=res,
                          progress=False)
        got = np.asarray(vol[:, :, :])[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} level {res}")


def test_derived_levels_through_a_chain(relay: RelayProcess, stores: dict[str, Any],
                                       tmp_path: Path) -> None:
    """A relay in front of this one (a boss source) passes its pyramid through: the same
    levels in the metadata, the same voxels at every level."""
    config = write_config(tmp_path / "laptop.yaml",
                          [{"collection": "*", "kind": "boss", "url": relay.url}],
                          tmp_path / "laptop-cache")
    with RelayProcess(["--config", str(config)], log=tmp_path / "laptop.log") as laptop:
        remote = BossRemote({"protocol": "http", "host": laptop.host, "token": "public"})
        assert remote.get_experiment("pyr", "single").num_hierarchy_levels == 5
        for name in ("em", "seg"):
            channel = remote.get_channel(name, "pyr", "single")
            for res, want in enumerate(stores["truth"][name]):
                z, y, x = want.shape
                got = remote.get_cutout(channel, res, [1, x], [0, y], [0, z])
                np.testing.assert_array_equal(got, want[:, :, 1:], err_msg=f"{name} {res}")


def test_derived_cuboids_read_each_stored_cuboid_once(stores: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """A derived level is made through the cache: reading the coarsest level reads every
    stored cuboid once, and every finer level afterwards reads nothing upstream."""
    app = create_app(make_settings(stores["sources"], tmp_path / "cache"))
    with TestClient(app, base_url="http://localhost") as client:
        metrics = app.state.metrics
        base = "/v1/cutout/pyr/single/em"
        assert client.get(f"{base}/4/0:17/0:10/0:10/").status_code == 200
        stored_cuboids = 9 * 5 * 3  # ceil(261/32) × ceil(150/32) × ceil(19/8)
        assert metrics.counters["upstream_reads_total"] == stored_cuboids
        derived = metrics.counters["derived_cuboids_total"]
        assert derived > 0
        for res, want in enumerate(stores["truth"]["em"]):
            z, y, x = want.shape
            response = client.get(f"{base}/{res}/0:{x}/0:{y}/0:{z}/",
                                  headers={"Accept": "application/blosc"})
            assert response.status_code == 200
        assert metrics.counters["upstream_reads_total"] == stored_cuboids
        assert metrics.counters["derived_cuboids_total"] == derived


def test_downsample_none_serves_the_stored_level_only(stores: dict[str, Any],
                                                      tmp_path: Path) -> None:
    sources = [{**source, "downsample": "none"} for source in stores["sources"]]
    with TestClient(create_app(make_settings(sources, None)),
                    base_url="http://localhost") as client:
        body = client.get("/v1/downsample/pyr/single/em").json()
        assert body["num_hierarchy_levels"] == 1 and body["status"] == "NOT_DOWNSAMPLED"
        response = client.get("/v1/cutout/pyr/single/em/1/0:10/0:10/0:1/")
        assert response.status_code == 400  # BossDB's answer to a resolution it lacks
        assert "resolution" in response.json()["message"].lower()


def test_raw_segmentation_chunks_by_config(stores: dict[str, Any]) -> None:
    sources = [{**source, "precomputed_encoding": "raw"} for source in stores["sources"]]
    with TestClient(create_app(make_settings(sources, None)),
                    base_url="http://localhost") as client:
        info = client.get("/precomputed/pyr/single/seg/info").json()
        assert {scale["encoding"] for scale in info["scales"]} == {"raw"}
        chunk = client.get("/precomputed/pyr/single/seg/1/0-32_0-32_0-8")
        want = stores["truth"]["seg"][1][:8, :32, :32]
        assert chunk.content == want.tobytes()
