"""The real intern package against a relay subprocess serving the embedded demo.

Ground truth is read straight from the stores the demo wrote (zarr for em and prob,
precomputed for seg), never from the relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from intern import array as intern_array
from intern.remote.boss import BossRemote

from relay.demo import DEMO_SHAPE_ZYX, DEMO_VOXEL_SIZE

from .servers import RelayProcess

CHANNELS = {"em": "uint8", "prob": "uint16", "seg": "uint64"}
LEVELS = 4
#: intern.array reports the coordinate frame's voxel size in (x, y, z) order (reference §8.26)
VOXEL_SIZE_SEEN_BY_INTERN = DEMO_VOXEL_SIZE


@pytest.fixture(scope="module")
def relay(demo_relay: RelayProcess) -> RelayProcess:
    return demo_relay


@pytest.fixture(scope="module")
def remote(relay: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": relay.host, "token": "public"})


def store_truth(demo_dir: Path, channel: str, res: int, x: Sequence[int], y: Sequence[int],
                z: Sequence[int]) -> np.ndarray:
    if channel == "seg":
        volume = CloudVolume((demo_dir / "precomputed" / "seg").as_uri(), mip=res,
                             progress=False)
        return np.asarray(volume[x[0]:x[1], y[0]:y[1], z[0]:z[1]])[..., 0].transpose(2, 1, 0)
    array = zarr.open_array(str(demo_dir / f"{channel}.ome.zarr" / str(res)), mode="r")
    return np.asarray(array[z[0]:z[1], y[0]:y[1], x[0]:x[1]])


def test_list_collections_and_metadata(remote: BossRemote) -> None:
    assert remote.list_collections() == ["demo"]
    assert remote.list_experiments("demo") == ["synthetic"]
    assert remote.list_channels("demo", "synthetic") == ["em", "seg", "prob"]
    experiment = remote.get_experiment("demo", "synthetic")
    assert experiment.num_hierarchy_levels == LEVELS
    assert experiment.hierarchy_method == "anisotropic"
    frame = remote.get_coordinate_frame(experiment.coord_frame)
    z, y, x = DEMO_SHAPE_ZYX
    assert (frame.x_stop, frame.y_stop, frame.z_stop) == (x, y, z)
    assert (frame.x_voxel_size, frame.y_voxel_size, frame.z_voxel_size) == DEMO_VOXEL_SIZE
    for name, dtype in CHANNELS.items():
        channel = remote.get_channel(name, "demo", "synthetic")
        assert channel.datatype == dtype
        assert channel.type == ("annotation" if name == "seg" else "image")


@pytest.mark.parametrize("name", list(CHANNELS))
@pytest.mark.parametrize("res", range(LEVELS))
def test_small_cutouts_every_dtype_and_resolution(remote: BossRemote, demo_dir: Path,
                                                  name: str, res: int) -> None:
    channel = remote.get_channel(name, "demo", "synthetic")
    z, y, x = DEMO_SHAPE_ZYX
    x_stop, y_stop = x >> res, y >> res
    # an unaligned box ending on the far corner of the level: partial cuboids in x and y
    box = ([x_stop - 300 // (res + 1), x_stop], [y_stop - 77, y_stop], [z - 23, z])
    data = remote.get_cutout(channel, res, *box)
    assert data.dtype == np.dtype(CHANNELS[name])
    np.testing.assert_array_equal(data, store_truth(demo_dir, name, res, *box))


def test_big_cutout_is_split_by_intern_and_correct(remote: BossRemote, demo_dir: Path,
                                                   relay: RelayProcess) -> None:
    channel = remote.get_channel("em", "demo", "synthetic")
    box = ([0, 1024], [0, 1000], [0, 33])  # 33.8 M voxels > 30.2 M: intern splits it
    assert 1024 * 1000 * 33 > 1.2 * 512 * 512 * 96
    data = remote.get_cutout(channel, 0, *box)
    np.testing.assert_array_equal(data, store_truth(demo_dir, "em", 0, *box))


def test_time_range_through_intern(remote: BossRemote, demo_dir: Path) -> None:
    channel = remote.get_channel("seg", "demo", "synthetic")
    data = remote.get_cutout(channel, 0, [100, 300], [50, 90], [3, 7], time_range=[0, 1])
    assert data.shape == (1, 4, 40, 200)
    np.testing.assert_array_equal(data[0], store_truth(demo_dir, "seg", 0, (100, 300),
                                                       (50, 90), (3, 7)))


def test_filter_through_intern(remote: BossRemote, demo_dir: Path) -> None:
    channel = remote.get_channel("seg", "demo", "synthetic")
    truth = store_truth(demo_dir, "seg", 0, (0, 256), (0, 256), (0, 4))
    ids = [int(truth[0, 0, 0]), int(truth[3, 200, 200])]
    data = remote.get_cutout(channel, 0, [0, 256], [0, 256], [0, 4], id_list=ids)
    np.testing.assert_array_equal(data, np.where(np.isin(truth, ids), truth, 0))


@pytest.mark.parametrize("name", list(CHANNELS))
def test_intern_array_slicing(relay: RelayProcess, demo_dir: Path, name: str) -> None:
    config: dict[str, Any] = {"protocol": "http", "host": relay.host, "token": "public"}
    # reference §4.3: boss_config is honoured only without the bossdb:// scheme
    volume = intern_array(f"demo/synthetic/{name}", boss_config=config)
    assert volume.shape == DEMO_SHAPE_ZYX
    assert tuple(volume.voxel_size) == VOXEL_SIZE_SEEN_BY_INTERN
    np.testing.assert_array_equal(volume[10:20, 500:600, 900:1024],
                                  store_truth(demo_dir, name, 0, (900, 1024), (500, 600),
                                              (10, 20)))
    np.testing.assert_array_equal(volume[5, 0:50, 0:70],
                                  store_truth(demo_dir, name, 0, (0, 70), (0, 50), (5, 6))[0])


def test_intern_array_at_lower_resolution(relay: RelayProcess, demo_dir: Path) -> None:
    config = {"protocol": "http", "host": relay.host, "token": "public"}
    volume = intern_array("demo/synthetic/em", boss_config=config, resolution=2)
    np.testing.assert_array_equal(volume[0:16, 0:256, 0:256],
                                  store_truth(demo_dir, "em", 2, (0, 256), (0, 256), (0, 16)))


def test_missing_channel_error_reaches_intern(remote: BossRemote) -> None:
    from requests import HTTPError

    with pytest.raises(HTTPError, match="404"):
        remote.get_channel("nope", "demo", "synthetic")
