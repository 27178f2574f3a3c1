"""BossDB's image and tile services (issue 26): every plane and tile decoded by Pillow equals
the voxels written to the store — uint8 as is, uint16 its top 8 bits, uint64 labels coloured
with alpha 0 exactly where the label is 0 (one colour per id) — through one relay and a chain;
and their refusals."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from PIL import Image

from .servers import RelayProcess, relay_over

SHAPE_ZYX = (20, 150, 200)


def _voxels(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    if dtype == "uint64":
        voxels = rng.choice(np.array([0, 1, 7, 2**40 + 1, 2**64 - 1], np.uint64), SHAPE_ZYX)
        return np.asarray(voxels, np.uint64)
    return rng.integers(0, np.iinfo(dtype).max, SHAPE_ZYX, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RelayProcess]]:
    root = tmp_path_factory.mktemp("images")
    sources: list[dict[str, Any]] = []
    for dtype in ("uint8", "uint16", "uint64"):
        array = zarr.create_array(str(root / f"{dtype}.zarr"), shape=SHAPE_ZYX,
                                  chunks=(8, 32, 32), dtype=dtype, zarr_format=3)
        array[:] = _voxels(dtype)
        sources.append({"collection": "img", "experiment": "w", "channel": dtype,
                        "kind": "zarr", "url": (root / f"{dtype}.zarr").as_uri(),
                        "cuboid": [64, 64, 8]})
    lab = relay_over(root, sources, "lab").start()
    laptop = relay_over(root, [{"collection": "*", "kind": "boss", "url": lab.url}],
                        "laptop").start()
    yield [lab, laptop]
    laptop.stop()
    lab.stop()


def _picture(relay: RelayProcess, path: str, accept: str | None = None) -> np.ndarray:
    got = httpx.get(f"{relay.url}/v1/{path}", headers={"Accept": accept} if accept else {},
                    timeout=60)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == (accept or "image/png")
    return np.asarray(Image.open(io.BytesIO(got.content)))


def _expected(plane: np.ndarray) -> np.ndarray:
    if plane.dtype == np.uint16:
        return (plane >> 8).astype(np.uint8)
    return plane


def _check_labels(picture: np.ndarray, plane: np.ndarray) -> None:
    """RGBA: alpha 0 (and black) exactly where the label is 0; one opaque colour per id, a
    different one for each id."""
    assert picture.shape == (*plane.shape, 4)
    assert np.array_equal(picture[..., 3] == 0, plane == 0)
    assert (picture[plane == 0] == 0).all()
    colours = {}
    for label in np.unique(plane[plane != 0]):
        seen = np.unique(picture[plane == label].reshape(-1, 4), axis=0)
        assert len(seen) == 1 and seen[0][3] == 255, label
        colours[int(label)] = tuple(seen[0])
    assert len(set(colours.values())) == len(colours)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint64"])
def test_planes_equal_the_voxels(dtype: str, relays: list[RelayProcess]) -> None:
    voxels = _voxels(dtype)
    planes = {
        "xy/0/13:177/4:141/7/": voxels[7, 4:141, 13:177],
        "xz/0/13:177/100/2:19/": voxels[2:19, 100, 13:177],
        "yz/0/199/0:150/0:20/": voxels[0:20, 0:150, 199],
        "xy/1/0:100/0:75/3/": None,  # a derived level: checked against resolution 0 below
    }
    for relay in relays:
        for path, plane in planes.items():
            picture = _picture(relay, f"image/img/w/{dtype}/{path}")
            if plane is None:
                assert picture.shape[:2] == (75, 100)
            elif dtype == "uint64":
                _check_labels(picture, plane)
            else:
                assert np.array_equal(picture, _expected(plane)), (relay.url, path)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint64"])
def test_tiles_equal_the_voxels(dtype: str, relays: list[RelayProcess]) -> None:
    voxels = _voxels(dtype)
    tiles = {
        "xy/50/0/3/2/11/": voxels[11, 100:150, 150:200],   # the last tile in x and y
        "xz/10/0/5/149/1/": voxels[10:20, 149, 50:60],
        "yz/10/0/0/4/0/": voxels[0:10, 40:50, 0],
    }
    for relay in relays:
        for path, plane in tiles.items():
            picture = _picture(relay, f"tile/img/w/{dtype}/{path}")
            if dtype == "uint64":
                _check_labels(picture, plane)
            else:
                assert np.array_equal(picture, _expected(plane)), (relay.url, path)


def test_jpeg_on_asking_and_refusals(relays: list[RelayProcess]) -> None:
    voxels = _voxels("uint8")
    for relay in relays:
        jpeg = _picture(relay, "image/img/w/uint8/xy/0/0:64/0:64/3/", "image/jpeg")
        assert jpeg.shape == (64, 64)
        # lossy: close to the voxels on average, not equal
        assert np.abs(jpeg.astype(int) - voxels[3, :64, :64]).mean() < 60

        def refused(path: str, accept: str | None = None,
                    relay: RelayProcess = relay) -> tuple[int, int]:
            got = httpx.get(f"{relay.url}/v1/{path}",
                            headers={"Accept": accept} if accept else {})
            return got.status_code, got.json()["code"]

        assert refused("image/img/w/uint64/xy/0/0:64/0:64/3/", "image/jpeg") == (400, 2001)
        assert refused("tile/img/w/uint8/xy/64/0/3/0/0/") == (400, 1001)  # past x = 200
        assert refused("image/img/w/uint8/xy/0/0:64/0:64/20/") == (400, 1001)
        assert refused("image/img/w/uint8/xy/0/0:64/0:64/2:4/") == (400, 1002)
        assert refused("image/img/w/uint8/zz/0/0:64/0:64/2/") == (400, 1000)
        assert refused("image/img/w/uint8/xy/0/0:64/0:64/2/3/") == (400, 1000)  # no t 3
        assert refused("image/img/w/uint8/xy/0/0:64/0:64/2/?access-mode=bogus") == (400, 1001)
    # access-mode=raw reads the store again, as a cutout's does
    lab = relays[0]
    path = "image/img/w/uint8/xy/0/0:64/0:64/3/"
    _picture(lab, path)
    before = lab.upstream_reads()
    _picture(lab, path)
    assert lab.upstream_reads() == before
    _picture(lab, path + "?access-mode=raw")
    assert lab.upstream_reads() > before


def test_a_picture_over_the_cutout_limit_is_a_413(tmp_path: Path) -> None:
    array = zarr.create_array(str(tmp_path / "big.zarr"), shape=(2, 4096, 4096),
                              chunks=(1, 512, 512), dtype="uint8", zarr_format=3)
    relay = relay_over(tmp_path, [{"collection": "b", "experiment": "w", "channel": "c",
                                   "kind": "zarr", "url": (tmp_path / "big.zarr").as_uri()}],
                       max_cutout_bytes=2**20).start()
    try:
        got = httpx.get(f"{relay.url}/v1/image/b/w/c/xy/0/0:4096/0:4096/0/")
        assert (got.status_code, got.json()["code"]) == (413, 2000)
        assert relay.upstream_reads() == 0
    finally:
        relay.stop()
    del array
