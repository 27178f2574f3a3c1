"""Stores written by other tools are served as they are written: a zarr array's own axis names
are honoured, ``kind: precomputed`` reads only precomputed, and whatever a store's metadata
reveals as a mistake in the source is a 502 that names the source and the fix (and stops
``relay serve`` for a ``required`` source), never a 500, never wrong voxels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest
import tensorstore as ts
import yaml
import zarr
from cloudvolume import CloudVolume
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings

X, Y, Z = 48, 40, 24  # distinct sizes: a transposed read cannot pass for the right one


def _truth(dtype: str = "uint16") -> np.ndarray:
    """The volume as (z, y, x)."""
    info = np.iinfo(dtype)
    return np.random.default_rng(12).integers(1, min(info.max, 2**40), (Z, Y, X),
                                              dtype=np.uint64).astype(dtype)


def _serve(source: dict[str, Any], path: str) -> Any:
    settings = Settings(sources=[{"collection": "c", "experiment": "e", "channel": "ch",
                                  **source}], cache={"disk_dir": None})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        return client.get(path)


def _cutout(source: dict[str, Any], dtype: str = "uint16") -> np.ndarray:
    response = _serve(source, f"/v1/cutout/c/e/ch/0/0:{X}/0:{Y}/0:{Z}/")
    assert response.status_code == 200, response.text
    return np.frombuffer(blosc.decompress(response.content), dtype).reshape(Z, Y, X)


def _error(source: dict[str, Any]) -> dict[str, Any]:
    response = _serve(source, "/v1/collection/c/experiment/e/channel/ch/")
    body: dict[str, Any] = response.json()
    assert response.status_code == 502, response.text
    assert body["code"] == 5003
    assert "source c/e/ch" in body["message"]  # names the source
    assert "\x1b" not in body["message"]
    return body


def _tensorstore_zarr3(path: Path, data_zyx: np.ndarray, names: list[str]) -> None:
    order = ["xyz".index(n) if n in "xyz" else None for n in names]
    stored = data_zyx.transpose([2 - i for i in order if i is not None])
    store = ts.open({
        "driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}, "create": True,
        "metadata": {"shape": list(stored.shape), "data_type": str(stored.dtype),
                     "chunk_grid": {"name": "regular",
                                    "configuration": {"chunk_shape": [16] * stored.ndim}},
                     "dimension_names": names},
    }).result()
    store[...] = stored


@pytest.mark.parametrize("names", [["x", "y", "z"], ["z", "y", "x"], ["y", "x", "z"]])
def test_a_zarr3_arrays_own_dimension_names_are_honoured(tmp_path: Path,
                                                         names: list[str]) -> None:
    """Written by tensorstore with its axis names; no ``axes:`` in the source."""
    data = _truth()
    _tensorstore_zarr3(tmp_path / "a.zarr", data, names)
    np.testing.assert_array_equal(_cutout({"kind": "zarr", "url": str(tmp_path / "a.zarr")}),
                                  data)


def test_named_channels_and_a_channel_index(tmp_path: Path) -> None:
    """zarr-python 3 writing (x, c, y, z) with names: channel 1 is served, in z, y, x."""
    data = np.stack([_truth(), _truth() // 2 + 1])  # c, z, y, x
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(X, 2, Y, Z),
                              chunks=(16, 1, 16, 16), dtype="uint16", zarr_format=3,
                              dimension_names=["x", "channel", "y", "z"])
    array[...] = data.transpose(3, 0, 2, 1)
    source = {"kind": "zarr", "url": str(tmp_path / "a.zarr"), "channel_index": 1}
    np.testing.assert_array_equal(_cutout(source), data[1])
    body = _error({**source, "channel_index": 2})
    assert "channel_index 2 is out of range" in body["message"]


def test_axes_that_contradict_the_arrays_own_names_are_refused(tmp_path: Path) -> None:
    _tensorstore_zarr3(tmp_path / "a.zarr", _truth(), ["x", "y", "z"])
    body = _error({"kind": "zarr", "url": str(tmp_path / "a.zarr"), "axes": "zyx"})
    assert "remove axes:" in body["message"]


@pytest.mark.parametrize("axes", ["zyxc", "zzx", "abc"])
def test_axes_that_cannot_fit_are_a_502_naming_the_fix(tmp_path: Path, axes: str) -> None:
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(Z, Y, X), chunks=(16, 16, 16),
                              dtype="uint16", zarr_format=2)
    array[...] = _truth()
    body = _error({"kind": "zarr", "url": str(tmp_path / "a.zarr"), "axes": axes})
    assert "set axes:" in body["message"]


def test_a_plain_array_of_an_ome_group_takes_the_groups_axes(tmp_path: Path) -> None:
    """NGFF only says spatial axes SHOULD be z, y, x: an image written x, y, z by another tool,
    served through ``url: image.ome.zarr/0`` (zarr v2 arrays name no axes of their own)."""
    data = _truth()
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    array = group.create_array("0", shape=(X, Y, Z), chunks=(16, 16, 16), dtype="uint16")
    array[...] = data.transpose(2, 1, 0)
    group.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": a, "type": "space"} for a in "xyz"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [4.0, 4.0, 40.0]}]}]}]
    for url in (tmp_path / "img.ome.zarr" / "0", tmp_path / "img.ome.zarr"):
        np.testing.assert_array_equal(_cutout({"kind": "zarr", "url": str(url)}), data)


def test_tensorstore_zarr2_and_precomputed_are_read_faithfully(tmp_path: Path) -> None:
    data = _truth()
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                    "path": str(tmp_path / "v2.zarr")},
                     "create": True, "metadata": {"shape": [Z, Y, X], "chunks": [8, 16, 16],
                                                  "dtype": "<u2"}}).result()
    store[...] = data
    np.testing.assert_array_equal(_cutout({"kind": "zarr", "url": str(tmp_path / "v2.zarr")}),
                                  data)
    pre = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(tmp_path / "pre")},
                   "create": True, "multiscale_metadata": {"data_type": "uint16",
                                                           "num_channels": 1, "type": "image"},
                   "scale_metadata": {"size": [X, Y, Z], "resolution": [4, 4, 40],
                                      "chunk_size": [16, 16, 8], "encoding": "raw"}}).result()
    pre[...] = data.transpose(2, 1, 0)[..., np.newaxis]
    np.testing.assert_array_equal(
        _cutout({"kind": "precomputed", "url": (tmp_path / "pre").as_uri()}), data)


def test_kind_precomputed_at_a_zarr_store_is_refused_not_misread(tmp_path: Path) -> None:
    """cloud-volume falls back to reading a path without ``info`` as zarr, which served wrong
    voxels or zeros with 200."""
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(Z, Y, X), chunks=(16, 16, 16),
                              dtype="uint16", zarr_format=2)
    array[...] = _truth()
    body = _error({"kind": "precomputed", "url": (tmp_path / "a.zarr").as_uri()})
    assert "no precomputed 'info'" in body["message"] and "kind: zarr" in body["message"]
    response = _serve({"kind": "precomputed", "url": (tmp_path / "a.zarr").as_uri()},
                      f"/v1/cutout/c/e/ch/0/0:{X}/0:{Y}/0:{Z}/")
    assert response.status_code == 502


def test_cloud_volume_messages_carry_no_terminal_codes(tmp_path: Path) -> None:
    """A missing chunk with ``fill_missing: false``: cloud-volume colours its message."""
    data = _truth()
    info = CloudVolume.create_new_info(num_channels=2, layer_type="image", data_type="uint16",
                                       encoding="raw", resolution=[4, 4, 40],
                                       voxel_offset=[0, 0, 0], volume_size=[X, Y, Z],
                                       chunk_size=[16, 16, 8])
    volume = CloudVolume((tmp_path / "pre").as_uri(), info=info, progress=False,
                         compress=False)
    volume.commit_info()
    volume[:, :, :] = np.stack([data, data], axis=-1).transpose(2, 1, 0, 3)
    (tmp_path / "pre" / "4_4_40" / "0-16_0-16_0-8").unlink()
    source = {"kind": "precomputed", "url": (tmp_path / "pre").as_uri(),
              "fill_missing": False}
    response = _serve(source, f"/v1/cutout/c/e/ch/0/0:{X}/0:{Y}/0:{Z}/")
    assert response.status_code == 502
    assert "\x1b" not in response.text and "[0m" not in response.text
    body = _error({**source, "channel_index": 5})
    assert "channel_index 5 is out of range" in body["message"]


def test_a_required_misconfigured_source_stops_relay_serve(tmp_path: Path) -> None:
    _tensorstore_zarr3(tmp_path / "a.zarr", _truth(), ["x", "y", "z"])
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"cache": {"disk_dir": None}, "sources": [
        {"collection": "c", "experiment": "e", "channel": "ch", "kind": "zarr",
         "url": str(tmp_path / "a.zarr"), "axes": "zyx", "required": True}]}))
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: required source c/e/ch (zarr) does not answer:")
    assert "remove axes:" in last and "Traceback" not in result.stderr
