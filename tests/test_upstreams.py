"""Every upstream kind passes UpstreamSuite against stores written here with the real libraries;
then the registry's rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume

from relay.config import SourceSettings
from relay.errors import ConfigError
from relay.model import ChannelRef
from relay.testing import UpstreamSuite
from relay.upstreams.base import Upstream
from relay.upstreams.kinds import Registry, registry

CHUNK_XYZ = (32, 32, 8)


def _multiscales(levels: list[np.ndarray], voxel: tuple[float, float, float],
                 offset: tuple[int, int, int], axes: str) -> dict[str, Any]:
    datasets = []
    for r in range(len(levels)):
        size = {"x": voxel[0] * 2**r, "y": voxel[1] * 2**r, "z": voxel[2], "c": 1.0, "t": 1.0}
        start = {"x": offset[0] >> r, "y": offset[1] >> r, "z": offset[2], "c": 0, "t": 0}
        datasets.append({
            "path": f"s{r}",
            "coordinateTransformations": [
                {"type": "scale", "scale": [size[a] for a in axes]},
                {"type": "translation", "translation": [start[a] * size[a] for a in axes]},
            ],
        })
    return {
        "version": "0.4",
        "axes": [
            {"name": a, "type": "channel" if a == "c" else "space", **(
                {"unit": "nanometer"} if a in "zyx" else {})}
            for a in axes
        ],
        "datasets": datasets,
    }


def _write_ome(path: Path, levels: list[np.ndarray], voxel: tuple[float, float, float],
               offset: tuple[int, int, int], zarr_format: Literal[2, 3],
               axes: str = "zyx") -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for r, data in enumerate(levels):
        if axes == "czyx":  # channel 1 holds the truth, channel 0 a decoy
            data = np.stack([np.full_like(data, 7), data])
        chunks = {"z": CHUNK_XYZ[2], "y": CHUNK_XYZ[1], "x": CHUNK_XYZ[0], "c": 1}
        array = group.create_array(
            f"s{r}", shape=data.shape, dtype=data.dtype,
            chunks=tuple(chunks[a] for a in axes),
        )
        array[...] = data
    ms = _multiscales(levels, voxel, offset, axes)
    if zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [{**ms, "version": "0.5"}]}
    else:
        group.attrs["multiscales"] = [ms]


class TestZarrV3OmeZarr(UpstreamSuite):
    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=3)
        return {"url": path.as_uri()}


class TestZarrV2OmeZarr(UpstreamSuite):
    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=2)
        return {"url": path.as_uri()}


class TestZarrOmeWithChannelAxis(UpstreamSuite):
    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=3, axes="czyx")
        return {"url": path.as_uri(), "channel_index": 1}


class TestZarrPlainArrayXYZOrder(UpstreamSuite):
    """A plain v2 array stored x-fastest-last (axes "xyz"): the axis order must be honoured."""

    kind = "zarr"
    levels = 1
    supports_offset = False

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        data = levels[0].transpose(2, 1, 0)
        array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                                  chunks=CHUNK_XYZ, zarr_format=2)
        array[...] = data
        return {"url": str(path), "axes": "xyz", "voxel_size": voxel_size}


class TestPrecomputed(UpstreamSuite):
    kind = "precomputed"
    #: cloud-volume's default for raw chunks: gzip, stored as NAME.gz
    compress: ClassVar[str | bool | None] = None

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        dtype = levels[0].dtype
        info = CloudVolume.create_new_info(
            num_channels=1,
            layer_type="segmentation" if dtype == np.uint64 else "image",
            data_type=dtype.name,
            encoding="raw",
            resolution=list(voxel_size),
            voxel_offset=list(offset),
            volume_size=list(levels[0].shape[::-1]),
            chunk_size=list(CHUNK_XYZ),
        )
        for r in range(1, len(levels)):
            info["scales"].append({
                "key": f"{2**r * 4}_{2**r * 4}_40",
                "resolution": [voxel_size[0] * 2**r, voxel_size[1] * 2**r, voxel_size[2]],
                "voxel_offset": [offset[0] >> r, offset[1] >> r, offset[2]],
                "size": list(levels[r].shape[::-1]),
                "chunk_sizes": [list(CHUNK_XYZ)],
                "encoding": "raw",
            })
        url = path.as_uri()
        CloudVolume(url, info=info, progress=False).commit_info()
        for r, data in enumerate(levels):
            volume = CloudVolume(url, mip=r, progress=False, compress=self.compress)
            volume[volume.bounds] = data.transpose(2, 1, 0)[..., np.newaxis]
        return {"url": url}


# --- registry ---------------------------------------------------------------------------------


def test_builtin_kinds() -> None:
    assert {"zarr", "precomputed"} <= set(registry.kinds())


def test_duplicate_registration_is_refused() -> None:
    fresh = Registry()
    with pytest.raises(ValueError, match="already registered"):
        fresh.register("zarr", "somewhere:Else")


def test_third_party_kind_via_register(tmp_path: Path) -> None:
    class NullUpstream(Upstream):
        kind = "null"

        async def channel_info(self, ref: ChannelRef, token: str | None = None) -> Any:
            raise NotImplementedError

        async def read(self, ref: ChannelRef, level: int, box: Any, t: int = 0,
                       token: str | None = None) -> None:
            return None

    fresh = Registry()
    fresh.register("null", NullUpstream)
    assert fresh.get("null") is NullUpstream
    assert "null" in fresh.kinds()


def test_entry_point_duplicates_are_ignored(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from importlib.metadata import EntryPoint

    import relay.upstreams.kinds as kinds_module

    points = [
        EntryPoint("zarr", "evil.module:Hijack", Registry.GROUP),
        EntryPoint("extra", "tests.test_upstreams:TestPrecomputed", Registry.GROUP),
    ]
    monkeypatch.setattr(kinds_module, "entry_points", lambda group: points)
    fresh = Registry()
    kinds = fresh.kinds()
    assert "extra" in kinds
    assert fresh._targets["zarr"] == Registry.BUILTINS["zarr"]
    assert "already registered" in caplog.text


async def test_uint32_store_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    array = zarr.create_array(str(tmp_path / "a"), shape=(4, 4, 4), dtype="uint32")
    array[...] = 1
    source = SourceSettings(collection="c", experiment="e", channel="ch", kind="zarr",
                            url=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="uint32 has no BossDB equivalent"):
        await registry.create(source).channel_info(ChannelRef("c", "e", "ch"))


class TestZarrInAnFsspecStore(UpstreamSuite):
    """A zarr store reached through fsspec, as s3:// and gs:// are (here fsspec's in-memory
    filesystem, which needs no network): read, and written through the same store class."""

    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        import uuid

        import fsspec

        _write_ome(path, levels, voxel_size, offset, zarr_format=3)
        remote = f"/suite-{uuid.uuid4().hex}/store.ome.zarr"
        fsspec.filesystem("memory").put(str(path), remote, recursive=True)
        return {"url": f"memory://{remote}"}
