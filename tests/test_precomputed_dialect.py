"""The precomputed dialect, read by real clients of it: cloud-volume and tensorstore, over
http from a relay subprocess serving the demo; voxels compared with the stores themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tensorstore as ts
import zarr
from cloudvolume import CloudVolume

from .servers import RelayProcess

LEVELS = 4
DTYPES = {"em": "uint8", "prob": "uint16", "seg": "uint64"}


@pytest.fixture(scope="module")
def relay(demo_relay: RelayProcess) -> RelayProcess:
    return demo_relay


def store_truth(demo_dir: Path, channel: str, res: int) -> np.ndarray:
    """A whole level, Z,Y,X, straight from the store the demo wrote."""
    if channel == "seg":
        volume = CloudVolume((demo_dir / "precomputed" / "seg").as_uri(), mip=res,
                             progress=False)
        return np.asarray(volume[:, :, :])[..., 0].transpose(2, 1, 0)
    return np.asarray(zarr.open_array(str(demo_dir / f"{channel}.ome.zarr" / str(res)),
                                      mode="r")[...])


def _url(relay: RelayProcess, channel: str) -> str:
    return f"{relay.url}/precomputed/demo/synthetic/{channel}"


@pytest.mark.parametrize("channel", list(DTYPES))
def test_info_has_what_neuroglancer_requires(relay: RelayProcess, channel: str) -> None:
    response = httpx.get(_url(relay, channel) + "/info")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    info: dict[str, Any] = response.json()
    assert info["type"] == ("segmentation" if channel == "seg" else "image")
    assert info["data_type"] == DTYPES[channel]
    assert info["num_channels"] == 1
    assert len(info["scales"]) == LEVELS
    previous = [0.0, 0.0, 0.0]
    for scale in info["scales"]:
        assert isinstance(scale["key"], str)
        assert all(isinstance(v, int) and v > 0 for v in scale["size"])
        assert all(v > 0 for v in scale["resolution"])
        assert all(a >= b for a, b in zip(scale["resolution"], previous, strict=True))
        previous = scale["resolution"]
        assert len(scale["chunk_sizes"]) == 1 and all(v > 0 for v in scale["chunk_sizes"][0])
        if channel == "seg":  # uint64 segmentation: compressed_segmentation by default
            assert scale["encoding"] == "compressed_segmentation"
            assert scale["compressed_segmentation_block_size"] == [8, 8, 8]
        else:
            assert scale["encoding"] == "raw"
            assert "compressed_segmentation_block_size" not in scale
        assert all(isinstance(v, int) for v in scale["voxel_offset"])
    assert info["scales"][0]["resolution"] == [4.0, 4.0, 40.0]
    head = httpx.head(_url(relay, channel) + "/info")
    assert head.status_code == 200  # neuroglancer's auto-detect probes with HEAD


def test_chunks_clip_at_edges_and_404_outside(relay: RelayProcess, demo_dir: Path) -> None:
    base = _url(relay, "em")
    truth = store_truth(demo_dir, "em", 3)  # 128 × 128 × 64 at level 3: one partial chunk
    chunk = httpx.get(base + "/3/0-128_0-128_0-16", headers={"Accept-Encoding": "identity"})
    assert chunk.status_code == 200 and "content-encoding" not in chunk.headers
    np.testing.assert_array_equal(np.frombuffer(chunk.content, np.uint8).reshape(16, 128, 128),
                                  truth[:16])
    zipped = httpx.get(base + "/3/0-128_0-128_16-32", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"  # httpx decodes it
    np.testing.assert_array_equal(np.frombuffer(zipped.content, np.uint8).reshape(16, 128, 128),
                                  truth[16:32])
    head = httpx.head(base + "/0/0-512_0-512_0-16")
    assert head.status_code == 200 and head.headers["content-length"] == str(512 * 512 * 16)
    for outside in ("/0/0-2048_0-512_0-16", "/9/0-1_0-1_0-1", "/0/0-0_0-1_0-1", "/x/0-1_0-1_0-1",
                    "/0/nonsense"):
        response = httpx.get(base + outside)
        assert response.status_code == 404, outside
        assert set(response.json()) == {"status", "code", "message"}


@pytest.mark.parametrize("channel", list(DTYPES))
@pytest.mark.parametrize("res", range(LEVELS))
def test_cloudvolume_reads_every_level(relay: RelayProcess, demo_dir: Path, channel: str,
                                       res: int) -> None:
    volume = CloudVolume(f"precomputed://{_url(relay, channel)}", mip=res, progress=False,
                         cache=False)
    truth = store_truth(demo_dir, channel, res)
    z, y, x = truth.shape
    # an unaligned box that ends on the far corner: partial edge chunks in x and y
    box = (slice(x // 3, x), slice(y // 5, y), slice(9, z))
    got = np.asarray(volume[box])[..., 0].transpose(2, 1, 0)
    assert got.dtype == np.dtype(DTYPES[channel])
    np.testing.assert_array_equal(got, truth[9:, y // 5:, x // 3:])


@pytest.mark.parametrize("channel", ["em", "seg"])
@pytest.mark.parametrize("res", range(LEVELS))
def test_tensorstore_reads_every_level(relay: RelayProcess, demo_dir: Path, channel: str,
                                       res: int) -> None:
    store = ts.open({
        "driver": "neuroglancer_precomputed",
        "kvstore": f"{_url(relay, channel)}/",
        "scale_index": res,
    }, read=True).result()
    truth = store_truth(demo_dir, channel, res)
    z, y, x = truth.shape
    got = store[x // 4:x, 3:y, 5:z, 0].read().result()  # x, y, z
    np.testing.assert_array_equal(np.asarray(got).transpose(2, 1, 0), truth[5:, 3:, x // 4:])


def test_segmentation_chunks_are_compressed_and_decode_to_the_voxels(
        relay: RelayProcess, demo_dir: Path) -> None:
    """The codec's own decoder reads a chunk back to the stored voxels, and the chunk is a
    small fraction of the raw bytes (the point of the encoding)."""
    import compressed_segmentation as cseg

    truth = store_truth(demo_dir, "seg", 0)[:16, :512, :512]
    chunk = httpx.get(_url(relay, "seg") + "/0/0-512_0-512_0-16",
                      headers={"Accept-Encoding": "identity"})
    assert chunk.status_code == 200
    assert len(chunk.content) * 10 < truth.nbytes, len(chunk.content)
    decoded = cseg.decompress(chunk.content, (512, 512, 16), np.uint64, (8, 8, 8), order="F")
    np.testing.assert_array_equal(np.asarray(decoded).T, truth)
