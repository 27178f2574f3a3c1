"""The BossDB dialect, item by item from reference/bossdb-dialect.md §8 (numbers in names)."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import blosc
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from relay.api.boss import cutout_nbytes
from relay.app import create_app
from relay.geometry import Box

from .conftest import make_settings
from .volumes import FRAME_XYZ, truth

CHANNEL_KEYS = ["name", "public", "description", "experiment", "default_time_sample", "type",
                "base_resolution", "datatype", "creator", "sources", "downsample_status",
                "related", "storage_type", "bucket", "cv_path"]
EXPERIMENT_KEYS = ["channels", "name", "public", "description", "collection", "coord_frame",
                   "num_hierarchy_levels", "hierarchy_method", "num_time_samples", "time_step",
                   "time_step_unit", "creator"]
COORD_KEYS = ["name", "description", "x_start", "x_stop", "y_start", "y_stop", "z_start",
              "z_stop", "x_voxel_size", "y_voxel_size", "z_voxel_size", "voxel_unit"]
CUT = "/v1/cutout/col1/exp1/ch1/0/0:100/0:50/0:10/"


def upstream_reads(client: TestClient) -> int:
    return int(client.app.state.metrics.counters["upstream_reads_total"])  # type: ignore[attr-defined]


def decode_blosc(body: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(blosc.decompress(body), dtype=dtype).reshape(shape)


def assert_boss_error(response: object, status: int, code: int | None = None) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"status", "code", "message"}
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body


# --- metadata (1–8) -------------------------------------------------------------------------


def test_01_channel_with_and_without_slash(client: TestClient) -> None:
    a = client.get("/v1/collection/col1/experiment/exp1/channel/ch1")
    b = client.get("/v1/collection/col1/experiment/exp1/channel/ch1/")
    assert a.status_code == b.status_code == 200
    assert list(a.json()) == CHANNEL_KEYS
    assert a.json() == b.json()
    assert a.json()["storage_type"] == "spdb"
    assert a.json()["datatype"] == "uint8" and a.json()["type"] == "image"
    anno = client.get("/v1/collection/col1/experiment/exp1/channel/anno").json()
    assert anno["datatype"] == "uint64" and anno["type"] == "annotation"


def test_02_latest_is_v1(client: TestClient) -> None:
    path = "/collection/col1/experiment/exp1/channel/ch1/"
    assert client.get("/latest" + path).json() == client.get("/v1" + path).json()


def test_03_collections(client: TestClient) -> None:
    for path in ("/v1/collection//", "/v1/collection/", "/v1/collection"):
        response = client.get(path)
        assert response.status_code == 200
        assert "col1" in response.json()["collections"]
    collection = client.get("/v1/collection/col1").json()
    assert set(collection["experiments"]) == {"exp1", "big", "series"}
    assert collection["name"] == "col1"


def test_04_lists(client: TestClient) -> None:
    assert set(client.get("/v1/collection/col1/experiment/").json()["experiments"]) == {
        "exp1", "big", "series"}
    channels = client.get("/v1/collection/col1/experiment/exp1/channel/").json()["channels"]
    assert channels == ["ch1", "ch16", "anno"]
    assert "col1_exp1" in client.get("/v1/coord/").json()["coords"]


def test_05_experiment(client: TestClient) -> None:
    body = client.get("/v1/collection/col1/experiment/exp1").json()
    assert list(body) == EXPERIMENT_KEYS
    assert body["coord_frame"] == "col1_exp1"
    assert body["hierarchy_method"] in ("anisotropic", "isotropic")
    assert body["hierarchy_method"] == "anisotropic"
    assert isinstance(body["time_step_unit"], str)
    assert body["num_hierarchy_levels"] == 3
    assert body["channels"] == ["ch1", "ch16", "anno"]


def test_06_coord_frame(client: TestClient) -> None:
    body = client.get("/v1/coord/col1_exp1").json()
    assert list(body) == COORD_KEYS
    assert (body["x_start"], body["x_stop"], body["y_stop"], body["z_stop"]) == (0, 2000, 1000,
                                                                                 100)
    assert all(isinstance(body[k], int) for k in COORD_KEYS if k.endswith(("start", "stop")))
    assert (body["x_voxel_size"], body["y_voxel_size"], body["z_voxel_size"]) == (4.0, 4.0, 40.0)
    assert all(isinstance(body[k], float) for k in COORD_KEYS if k.endswith("voxel_size"))
    assert body["voxel_unit"] == "nanometers"


def test_07_downsample(client: TestClient) -> None:
    body = client.get("/v1/downsample/col1/exp1/ch1").json()
    assert body["num_hierarchy_levels"] == 3 and body["status"] == "DOWNSAMPLED"
    assert set(body["extent"]) == {"0", "1", "2"}
    assert body["extent"]["1"] == [1000, 500, 100]
    assert body["voxel_size"]["2"] == [16.0, 16.0, 40.0]
    assert body["cuboid_size"]["0"] == [512, 512, 16]
    assert client.get("/latest/downsample/col1/exp1/ch1/").json() == body


@pytest.mark.parametrize("path", [
    "/v1/collection/nope/experiment/exp1/channel/ch1",
    "/v1/collection/col1/experiment/nope/channel/ch1",
    "/v1/collection/col1/experiment/exp1/channel/nope",
    "/v1/collection/nope",
    "/v1/collection/nope/experiment/",
    "/v1/coord/nope",
    "/v1/downsample/col1/exp1/nope",
    "/v1/cutout/col1/exp1/nope/0/0:1/0:1/0:1/",
])
def test_08_missing_resources(client: TestClient, path: str) -> None:
    assert_boss_error(client.get(path), 404, 4000)


# --- cutouts (9–23) ---------------------------------------------------------------------------


def test_09_blosc_cutout(client: TestClient) -> None:
    response = client.get(CUT, headers={"Accept": "application/blosc"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/blosc"
    assert len(blosc.decompress(response.content)) == 50_000
    data = decode_blosc(response.content, "uint8", (10, 50, 100))
    np.testing.assert_array_equal(data, truth("ch1", 0, (0, 0, 0), (100, 50, 10)))


@pytest.mark.parametrize("variant", [
    CUT.rstrip("/"), CUT + "?access-mode=no-cache", CUT + "?access-mode=cache",
    CUT + "?access-mode=raw", CUT + "?no-cache=true", CUT + "?no-cache=false",
    "/v1/cutout/col1/exp1/ch1/0/0:100/0:50/0:10", "/latest/cutout/col1/exp1/ch1/0/0:100/0:50/0:10/",
    CUT + "?window=0,255", CUT + "?iso=false",
])
def test_10_variants_give_identical_voxels(client: TestClient, variant: str) -> None:
    response = client.get(variant)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        decode_blosc(response.content, "uint8", (10, 50, 100)),
        truth("ch1", 0, (0, 0, 0), (100, 50, 10)),
    )


@pytest.mark.parametrize("accept", [None, "*/*", "application/*",
                                    "text/html,application/xhtml+xml,*/*;q=0.8"])
def test_11_default_is_blosc(client: TestClient, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    if accept is None:
        headers = {"Accept": ""}
    response = client.get(CUT, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/blosc"


def test_12_npygz_is_zlib(client: TestClient) -> None:
    response = client.get(CUT, headers={"Accept": "application/npygz"})
    assert response.headers["content-type"] == "application/npygz"
    data = np.load(io.BytesIO(zlib.decompress(response.content)))
    assert data.shape == (10, 50, 100) and data.dtype == np.uint8
    np.testing.assert_array_equal(data, truth("ch1", 0, (0, 0, 0), (100, 50, 10)))
    with pytest.raises(OSError):
        gzip.decompress(response.content)


def test_13_blosc_python(client: TestClient) -> None:
    response = client.get(CUT, headers={"Accept": "application/blosc-python"})
    data = blosc.unpack_array(response.content)
    np.testing.assert_array_equal(data, truth("ch1", 0, (0, 0, 0), (100, 50, 10)))


def test_14_jpeg(client: TestClient) -> None:
    response = client.get(CUT, headers={"Accept": "image/jpeg"})
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (100, 500) and image.mode == "L"
    expected = truth("ch1", 0, (0, 0, 0), (100, 50, 10)).reshape(500, 100).astype(int)
    assert np.abs(np.asarray(image).astype(int) - expected).mean() < 12  # lossy, but close
    assert_boss_error(client.get("/v1/cutout/col1/exp1/anno/0/0:100/0:50/0:10/",
                                 headers={"Accept": "image/jpeg"}), 400, 2001)
    assert_boss_error(client.get(CUT + "0:1/", headers={"Accept": "image/jpeg"}), 400, 2005)


def test_15_time_range_gives_4d(client: TestClient) -> None:
    response = client.get(CUT + "0:1/")
    assert len(blosc.decompress(response.content)) == 1 * 10 * 50 * 100
    data = decode_blosc(response.content, "uint8", (1, 10, 50, 100))
    np.testing.assert_array_equal(data[0], truth("ch1", 0, (0, 0, 0), (100, 50, 10)))
    npy = client.get(CUT + "0:1/", headers={"Accept": "application/npygz"})
    assert np.load(io.BytesIO(zlib.decompress(npy.content))).shape == (1, 10, 50, 100)


def test_15b_time_series(client: TestClient) -> None:
    response = client.get("/v1/cutout/col1/series/ch/0/10:290/5:190/3:18/1:3/")
    assert response.status_code == 200
    data = decode_blosc(response.content, "uint8", (2, 15, 185, 280))
    for i, t in enumerate((1, 2)):
        np.testing.assert_array_equal(data[i], truth("series", 0, (10, 5, 3), (290, 190, 18),
                                                     t=t))
    assert_boss_error(client.get("/v1/cutout/col1/series/ch/0/0:1/0:1/0:1/2:4/"), 400, 1000)
    assert_boss_error(client.get("/v1/cutout/col1/series/ch/0/0:1/0:1/0:1/2:2/"), 400, 1000)


def test_16_unaligned_span_across_cuboids(client: TestClient) -> None:
    response = client.get("/v1/cutout/col1/exp1/ch1/0/500:530/500:520/14:18/")
    np.testing.assert_array_equal(decode_blosc(response.content, "uint8", (4, 20, 30)),
                                  truth("ch1", 0, (500, 500, 14), (530, 520, 18)))


def test_17_edge_cuboids(client: TestClient) -> None:
    response = client.get("/v1/cutout/col1/exp1/ch1/0/1536:2000/512:1000/96:100/")
    assert response.status_code == 200
    np.testing.assert_array_equal(decode_blosc(response.content, "uint8", (4, 488, 464)),
                                  truth("ch1", 0, (1536, 512, 96), (2000, 1000, 100)))


@pytest.mark.parametrize("ranges", ["0:2001/0:10/0:10", "10:10/0:10/0:10", "0:10/0:10/0:101",
                                    "20:10/0:10/0:10", "0:10/1000:1001/0:10"])
def test_18_out_of_frame(client: TestClient, ranges: str) -> None:
    assert_boss_error(client.get(f"/v1/cutout/col1/exp1/ch1/0/{ranges}/"), 400, 1001)


def test_19_resolutions(client: TestClient) -> None:
    assert_boss_error(client.get("/v1/cutout/col1/exp1/ch1/3/0:10/0:10/0:10/"), 400, 1002)
    assert_boss_error(client.get("/v1/cutout/col1/exp1/ch1/10/0:10/0:10/0:10/"), 404)
    assert_boss_error(client.get("/v1/cutout/col1/exp1/ch1/x/0:10/0:10/0:10/"), 404)


def test_20_size_limit(client: TestClient) -> None:
    """The default server.max_cutout_bytes is 512 MiB, every byte of the dtype counted."""
    assert_boss_error(client.get("/v1/cutout/col1/big/empty/0/0:2048/0:2048/0:129/"), 413, 2000)
    limit = 512 * 2**20
    u8, u64 = np.dtype("uint8"), np.dtype("uint64")
    assert cutout_nbytes(Box.of((0, 0, 0), (2048, 2048, 128)), 1, u8) == limit
    assert cutout_nbytes(Box.of((0, 0, 0), (2048, 2048, 129)), 1, u8) > limit
    assert cutout_nbytes(Box.of((0, 0, 0), (2048, 2048, 16)), 1, u64) == limit
    assert cutout_nbytes(Box.of((0, 0, 0), (2048, 2048, 17)), 1, u64) > limit
    assert upstream_reads(client) == 0  # refused before anything was read or allocated


def test_21_filter(client: TestClient) -> None:
    box = ((0, 0, 0), (300, 250, 10))
    full = truth("anno", 0, *box)
    keep = [int(full[0, 0, 0]), int(full[5, 120, 250])]
    response = client.get(f"/v1/cutout/col1/exp1/anno/0/0:300/0:250/0:10/?filter={keep[0]},"
                          f"{keep[1]}")
    data = decode_blosc(response.content, "uint64", (10, 250, 300))
    np.testing.assert_array_equal(data, np.where(np.isin(full, keep), full, 0))
    assert (data != 0).any() and (data == 0).any()
    assert_boss_error(client.get(CUT + "?filter=1"), 400, 2003)
    assert_boss_error(client.get("/v1/cutout/col1/exp1/anno/0/0:1/0:1/0:1/?filter=1,x"), 400)


def test_22_lower_resolution(client: TestClient) -> None:
    response = client.get("/v1/cutout/col1/exp1/ch1/1/0:512/0:500/0:16/")
    data = decode_blosc(response.content, "uint8", (16, 500, 512))
    np.testing.assert_array_equal(data, truth("ch1", 1, (0, 0, 0), (512, 500, 16)))
    # inside the resolution-0 frame but past the level-1 extent (1000 × 500): zeros, as BossDB
    response = client.get("/v1/cutout/col1/exp1/ch1/1/900:1100/400:600/0:16/")
    data = decode_blosc(response.content, "uint8", (16, 200, 200))
    np.testing.assert_array_equal(data, truth("ch1", 1, (900, 400, 0), (1100, 600, 16)))
    assert (data[:, 100:, :] == 0).all() and (data[:, :, 100:] == 0).all()


@pytest.mark.parametrize(("channel", "dtype"), [("ch16", "uint16"), ("anno", "uint64")])
@pytest.mark.parametrize("res", [0, 1, 2])
def test_23_other_dtypes_every_resolution(client: TestClient, channel: str, dtype: str,
                                          res: int) -> None:
    x1, y1, _ = FRAME_XYZ
    box = ((700 >> res, 300 >> res, 20), (x1 >> res, y1 >> res, 37))
    url = f"/v1/cutout/col1/exp1/{channel}/{res}/" + "/".join(
        f"{a}:{b}" for a, b in zip(box[0], box[1], strict=True))
    shape = tuple(b - a for a, b in zip(box[0], box[1], strict=True))[::-1]
    data = decode_blosc(client.get(url).content, dtype, shape)
    np.testing.assert_array_equal(data, truth(channel, res, *box))


def test_24_post_is_refused_read_only(client: TestClient) -> None:
    body = blosc.compress(np.ones((2, 4, 8), np.uint8).tobytes(), typesize=8)
    response = client.post("/v1/cutout/col1/exp1/ch1/0/0:8/0:4/0:2/", content=body,
                           headers={"Content-Type": "application/blosc"})
    assert_boss_error(response, 405)


# --- routes, CORS (29–30) -----------------------------------------------------------------


def test_29_versions_and_unknown_routes(client: TestClient) -> None:
    assert_boss_error(client.get("/v0.8/collection/"), 400, 9003)
    assert_boss_error(client.get("/v1/nothing/here"), 404)
    assert_boss_error(client.get("/nothing"), 404)
    # "/" is the index page (relay.api.viewer), not BossDB's
    assert client.get("/").headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("path", [CUT, "/v1/collection/col1/experiment/exp1/channel/ch1/",
                                  "/v1/nothing", "/v1/cutout/col1/exp1/ch1/0/0:2001/0:1/0:1/"])
def test_30_cors_everywhere(client: TestClient, path: str) -> None:
    assert client.get(path).headers["access-control-allow-origin"] == "*"
    preflight = client.options(path, headers={
        "Origin": "https://neuroglancer-demo.appspot.com",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization"


# --- caching semantics ------------------------------------------------------------------------


def test_second_identical_request_reads_nothing_upstream(client: TestClient) -> None:
    first = client.get("/v1/cutout/col1/exp1/ch1/0/400:700/400:700/2:12/")
    reads = upstream_reads(client)
    assert reads == 4  # 2 × 2 cuboids in x, y; one in z
    second = client.get("/v1/cutout/col1/exp1/ch1/0/400:700/400:700/2:12/")
    assert upstream_reads(client) == reads
    assert blosc.decompress(first.content) == blosc.decompress(second.content)


def test_overlapping_requests_share_cuboids(client: TestClient) -> None:
    client.get("/v1/cutout/col1/exp1/ch1/0/0:600/0:100/0:16/")
    assert upstream_reads(client) == 2
    client.get("/v1/cutout/col1/exp1/ch1/0/100:1100/50:60/3:9/")
    assert upstream_reads(client) == 3  # only cuboid x=2 was new


@pytest.mark.parametrize("refresh", [{"params": {"access-mode": "raw"}},
                                     {"headers": {"Cache-Control": "no-cache"}}])
def test_raw_and_no_cache_header_refetch(client: TestClient, refresh: dict[str, dict[str, str]]
                                         ) -> None:
    client.get(CUT)
    client.get(CUT, params={"access-mode": "no-cache"})  # intern's default: still cached
    assert upstream_reads(client) == 1
    response = client.get(CUT, **refresh)  # type: ignore[arg-type]
    assert upstream_reads(client) == 2
    np.testing.assert_array_equal(decode_blosc(response.content, "uint8", (10, 50, 100)),
                                  truth("ch1", 0, (0, 0, 0), (100, 50, 10)))


def test_bad_access_modes(client: TestClient) -> None:
    assert_boss_error(client.get(CUT + "?access-mode=sometimes"), 400, 1001)
    assert_boss_error(client.get(CUT + "?access-mode=raw&no-cache=true"), 400, 1001)
    assert_boss_error(client.get(CUT + "?no-cache=maybe"), 400, 1001)


def test_unknown_accept_is_406(client: TestClient) -> None:
    assert_boss_error(client.get(CUT, headers={"Accept": "text/csv"}), 406)
    assert_boss_error(client.get(CUT, headers={"Accept": "application/blosc;q=0"}), 406)


def test_ops_routes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    client.get(CUT)
    text = client.get("/metrics").text
    assert "relay_upstream_reads_total 1" in text
    assert "relay_cache_memory_bytes" in text
    assert client.get("/stats").json()["counters"]["upstream_reads_total"] == 1


def test_a_warm_aligned_cuboid_is_served_as_stored(client: TestClient) -> None:
    url = "/v1/cutout/col1/exp1/ch1/0/512:1024/0:512/16:32/"  # exactly one cached cuboid
    cold = client.get(url)
    warm = client.get(url)
    counters = client.app.state.metrics.counters  # type: ignore[attr-defined]
    assert counters["stored_frame_hits_total"] == 2  # the cold read sends what it just packed
    assert counters["upstream_reads_total"] == 1
    expected = truth("ch1", 0, (512, 0, 16), (1024, 512, 32))
    for response in (cold, warm):
        np.testing.assert_array_equal(decode_blosc(response.content, "uint8", (16, 512, 512)),
                                      expected)
    # not for a box that is only part of a cuboid, nor for other encodings
    client.get("/v1/cutout/col1/exp1/ch1/0/512:1000/0:512/16:32/")
    client.get(url, headers={"Accept": "application/npygz"})
    assert counters["stored_frame_hits_total"] == 2


def test_a_channel_smaller_than_its_experiments_frame_reads_zeros_beyond_itself(
        tmp_path: Path) -> None:
    """The frame of an experiment spans all its channels (/v1/coord); a relay downstream reads
    any channel anywhere in it, as from BossDB: what the channel does not hold is zeros, and
    only what is outside the frame is 400."""
    import zarr

    big = np.arange(10 * 40 * 60, dtype=np.uint8).reshape(10, 40, 60)
    small = np.full((6, 20, 30), 9, np.uint8)
    sources = []
    for name, data in (("big", big), ("small", small)):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=data.shape,
                          chunks=data.shape, dtype="uint8", zarr_format=3)[:] = data
        sources.append({"collection": "f", "experiment": "e", "channel": name, "kind": "zarr",
                        "url": (tmp_path / f"{name}.zarr").as_uri()})
    app = create_app(make_settings(sources, None))
    with TestClient(app, base_url="http://localhost") as client:
        frame = client.get("/v1/coord/f_e/").json()
        assert (frame["x_stop"], frame["y_stop"], frame["z_stop"]) == (60, 40, 10)
        response = client.get("/v1/cutout/f/e/small/0/20:50/10:30/4:10/")
        assert response.status_code == 200, response.text
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(6, 20, 30)
        expected = np.zeros((6, 20, 30), np.uint8)
        expected[:2, :10, :10] = 9
        assert np.array_equal(got, expected)
        outside = client.get("/v1/cutout/f/e/small/0/20:61/10:30/4:10/")
        assert (outside.status_code, outside.json()["code"]) == (400, 1001)


def test_iso_true_is_served_on_an_isotropic_channel(tmp_path: Path) -> None:
    """On a channel whose voxels are isotropic BossDB's two pyramids are one: ``iso=true``
    answers what the same request without it does (issue 26; the anisotropic case is refused,
    tests/test_writes.py)."""
    import zarr

    path = tmp_path / "iso.zarr"
    zarr.create_array(str(path), shape=(32, 64, 64), chunks=(16, 32, 32),
                      dtype="uint8")[:] = np.arange(32 * 64 * 64, dtype=np.uint32).reshape(
                          32, 64, 64) % 251
    source = {"collection": "c", "experiment": "e", "channel": "iso", "kind": "zarr",
              "url": path.as_uri(), "voxel_size": [8, 8, 8], "cuboid": [32, 32, 16]}
    with TestClient(create_app(make_settings([source], None)),
                    base_url="http://localhost") as client:
        for url in ("/v1/cutout/c/e/iso/1/0:32/0:32/0:16/", "/v1/downsample/c/e/iso/"):
            plain = client.get(url)
            assert plain.status_code == 200
            assert client.get(url + "?iso=true").content == plain.content
