"""A cache entry's identity includes every source option that changes the bytes served: fix an
option, restart on the same disk, and the relay never serves what it cached under the old
value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings, SourceSettings
from relay.upstreams.base import Upstream
from relay.upstreams.kinds import registry

SIDE = 32  # a cube: every axis order gives the same frame, only the voxels move


def _read(cache: Path, source: dict[str, Any], box: str = f"0:{SIDE}/0:{SIDE}/0:{SIDE}"
          ) -> tuple[int, np.ndarray | None, str]:
    """One relay run on ``cache``: status, voxels of ``box`` (z, y, x) and the body."""
    settings = Settings(sources=[{"collection": "c", "experiment": "e", "channel": "ch",
                                  **source}],
                        cache={"disk_dir": cache, "memory_bytes": 2**24})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get(f"/v1/cutout/c/e/ch/0/{box}/")
    if response.status_code != 200:
        return response.status_code, None, response.text
    data = np.frombuffer(blosc.decompress(response.content), np.uint8)
    return 200, data.reshape(SIDE, SIDE, SIDE), ""


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A plain 2-channel uint8 array, stored (c, a, b, d) with no axis names of its own."""
    data = np.random.default_rng(5).integers(0, 256, (2, SIDE, SIDE, SIDE), dtype=np.uint8)
    path = tmp_path_factory.mktemp("identity") / "cube.zarr"
    array = zarr.create_array(str(path), shape=data.shape, chunks=(1, 16, 16, 16),
                              dtype="uint8", zarr_format=2)
    array[...] = data
    return path, data


def test_fixing_axes_never_serves_the_old_transposed_voxels(cube: tuple[Path, np.ndarray],
                                                            tmp_path: Path) -> None:
    path, data = cube
    status, got, _ = _read(tmp_path, {"kind": "zarr", "url": str(path), "axes": "cxyz"})
    assert status == 200
    np.testing.assert_array_equal(got, data[0].transpose(2, 1, 0))  # stored x, y, z
    status, got, _ = _read(tmp_path, {"kind": "zarr", "url": str(path), "axes": "czyx"})
    assert status == 200
    np.testing.assert_array_equal(got, data[0])


def test_another_channel_index_is_another_entry(cube: tuple[Path, np.ndarray],
                                                tmp_path: Path) -> None:
    path, data = cube
    for index in (0, 1, 0):
        status, got, _ = _read(tmp_path, {"kind": "zarr", "url": str(path),
                                          "channel_index": index})
        assert status == 200
        np.testing.assert_array_equal(got, data[index])


def test_turning_fill_missing_off_never_serves_cached_fill(tmp_path: Path) -> None:
    """With ``fill_missing`` a deleted chunk read as zeros, and was cached; once turned off,
    the same box must be an error, not those cached zeros."""
    data = np.random.default_rng(6).integers(1, 256, (SIDE, SIDE, SIDE), dtype=np.uint8)
    store = tmp_path / "seg"
    info = CloudVolume.create_new_info(num_channels=1, layer_type="image", data_type="uint8",
                                       encoding="raw", resolution=[4, 4, 40],
                                       voxel_offset=[0, 0, 0], volume_size=[SIDE] * 3,
                                       chunk_size=[SIDE // 2] * 3)
    volume = CloudVolume(store.as_uri(), info=info, progress=False)
    volume.commit_info()
    volume[:, :, :] = data.transpose(2, 1, 0)
    (store / "4_4_40" / f"0-{SIDE // 2}_0-{SIDE // 2}_0-{SIDE // 2}.gz").unlink()
    cache = tmp_path / "cache"
    status, got, _ = _read(cache, {"kind": "precomputed", "url": store.as_uri()})
    assert status == 200 and got is not None
    assert not got[: SIDE // 2, : SIDE // 2, : SIDE // 2].any()  # the missing chunk, filled
    status, got, text = _read(cache, {"kind": "precomputed", "url": store.as_uri(),
                                      "fill_missing": False})
    assert status == 502, text


@pytest.mark.parametrize(("kind", "option", "value"), [
    ("zarr", "axes", "zyx"), ("zarr", "channel_index", 1), ("precomputed", "fill_missing", False),
    ("zarr", "type", "annotation"), ("zarr", "voxel_size", (8.0, 8.0, 40.0)),
    ("precomputed", "voxel_unit", "micrometers"), ("dvid", "instance", "other"),
    ("dvid", "uuid", "abc1"), ("zarr", "url", "file:///elsewhere"),
])
def test_every_byte_changing_option_is_part_of_the_identity(kind: str, option: str,
                                                            value: Any) -> None:
    extra = {"uuid": "ab12"} if kind == "dvid" else {}
    base = SourceSettings(collection="c", kind=kind, url="file:///data", **extra)
    changed = SourceSettings(**{**base.model_dump(), **(base.model_extra or {}),
                                option: value})

    def digest(source: SourceSettings) -> str:
        upstream: Upstream = registry.create(source)
        return upstream.identity_digest

    assert digest(changed) != digest(base)


def test_a_changed_token_keeps_the_cache() -> None:
    """A secret option (a boss source's token) is not part of the identity."""
    def digest(token: str) -> str:
        source = SourceSettings(collection="*", kind="boss", url="http://x", token=token)
        return registry.create(source).identity_digest

    assert digest("one") == digest("two")
