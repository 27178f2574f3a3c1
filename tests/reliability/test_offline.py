"""Offline after a restart: metadata a relay has served is persisted with its disk tier, so a
relay restarted while its upstream is unreachable — a remote relay, a DVID server, or a local
store that is gone — still answers every metadata request and every cuboid it holds, and
answers what it lacks with 503/504 BossDB JSON, quickly."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings
from relay.testing.upstream_suite import ground_truth

from ..dvid_double import DvidDouble
from ..servers import RelayProcess, ThreadedServer, write_config
from ..volumes import truth

#: what a quick refusal of something the relay does not hold takes at most
QUICK = 2.0


def _browse(remote: BossRemote) -> dict[str, Any]:
    """What a user did with intern: listings, descriptions, two cutouts of two channels."""
    ch1 = remote.get_channel("ch1", "col1", "exp1")
    anno = remote.get_channel("anno", "col1", "exp1")
    experiment = remote.get_experiment("col1", "exp1")
    return {
        "collections": remote.list_collections(),
        "experiments": remote.list_experiments("col1"),
        "channels": remote.list_channels("col1", "exp1"),
        "experiment": experiment.raw,
        "frame": remote.get_coordinate_frame(experiment.coord_frame).raw,
        "ch1": ch1.raw,
        "cut1": remote.get_cutout(ch1, 0, [0, 512], [0, 512], [0, 16]),
        "cut2": remote.get_cutout(anno, 1, [100, 300], [50, 250], [3, 9]),
    }


def test_a_restarted_laptop_relay_serves_intern_everything_it_browsed(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    lab_config = write_config(tmp_path / "lab.yaml", fixture_sources, tmp_path / "lab-cache")
    lab = RelayProcess(["--config", str(lab_config)], log=tmp_path / "lab.log").start()
    laptop_config = write_config(
        tmp_path / "laptop.yaml",
        [{"collection": "*", "kind": "boss", "url": lab.url, "timeout": 5, "retries": 1,
          "connect_timeout": 1}],
        tmp_path / "laptop-cache")
    with RelayProcess(["--config", str(laptop_config)], log=tmp_path / "laptop.log") as laptop:
        before = _browse(BossRemote({"protocol": "http", "host": laptop.host,
                                     "token": "public"}))
    lab.stop()  # the lab goes down, and the laptop is restarted while it is down
    np.testing.assert_array_equal(before["cut1"], truth("ch1", 0, (0, 0, 0), (512, 512, 16)))
    with RelayProcess(["--config", str(laptop_config)], log=tmp_path / "laptop.log") as laptop:
        after = _browse(BossRemote({"protocol": "http", "host": laptop.host,
                                    "token": "public"}))
        for key, value in before.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(after[key], value)
            else:
                assert after[key] == value, key
        # what it never held: a clear error, at once
        for path in ("/v1/cutout/col1/exp1/ch16/0/0:64/0:64/0:16/",
                     "/v1/cutout/col1/exp1/ch1/0/1024:1536/0:512/0:16/",
                     "/v1/collection/col1/experiment/big/"):
            started = time.monotonic()
            response = httpx.get(laptop.url + path, timeout=30)
            assert response.status_code in (503, 504), (path, response.text)
            assert set(response.json()) == {"status", "code", "message"}
            assert time.monotonic() - started < QUICK, path
        # ch16 was never described, so never read; the ch1 cuboid was tried once
        assert laptop.upstream_reads() == 1


def _zarr_source(path: Path) -> list[dict[str, Any]]:
    import zarr

    data = np.random.default_rng(4).integers(0, 256, (32, 256, 256), dtype=np.uint8)
    array = zarr.create_array(str(path), shape=data.shape, chunks=(16, 128, 128),
                              dtype="uint8", zarr_format=3)
    array[...] = data
    return [{"collection": "c", "experiment": "e", "channel": "em", "kind": "zarr",
             "url": str(path), "cuboid": [128, 128, 16], "voxel_size": [4, 4, 40]}]


def test_a_local_store_that_is_gone_never_reads_as_zeros(tmp_path: Path) -> None:
    """An unmounted share: zarr reads a missing chunk as fill, so a store that vanished would
    read as zeros. While running and after a restart, what is cached is served and what is
    not is a 503, never zeros."""
    store = tmp_path / "share" / "em.zarr"
    sources = _zarr_source(store)
    data = np.asarray(__import__("zarr").open_array(str(store), mode="r")[...])
    config = write_config(tmp_path / "relay.yaml", sources, tmp_path / "cache")
    held = "/v1/cutout/c/e/em/0/0:128/0:128/0:16/"
    missing = "/v1/cutout/c/e/em/0/128:256/128:256/16:32/"
    channel = "/v1/collection/c/experiment/e/channel/em/"
    with RelayProcess(["--config", str(config)]) as relay:
        assert httpx.get(relay.url + held).status_code == 200
        shutil.move(store, tmp_path / "elsewhere.zarr")  # the share is unmounted
        started = time.monotonic()
        gone = httpx.get(relay.url + missing, timeout=30)
        assert gone.status_code == 503 and "gone" in gone.json()["message"], gone.text
        assert time.monotonic() - started < QUICK
        assert httpx.get(relay.url + held).status_code == 200
    with RelayProcess(["--config", str(config)]) as relay:  # restarted while it is gone
        description = httpx.get(relay.url + channel)
        assert description.status_code == 200 and description.json()["datatype"] == "uint8"
        cutout = httpx.get(relay.url + held)
        assert cutout.status_code == 200
        got = np.frombuffer(blosc.decompress(cutout.content), np.uint8).reshape(16, 128, 128)
        np.testing.assert_array_equal(got, data[:16, :128, :128])
        for _ in range(3):  # and every time quickly (the store is left alone for a while)
            started = time.monotonic()
            response = httpx.get(relay.url + missing, timeout=30)
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < QUICK
        downsample = httpx.get(relay.url + "/v1/downsample/c/e/em/")
        assert downsample.status_code == 200


def test_a_dvid_node_and_its_cuboids_survive_a_restart_while_dvid_is_down(
        tmp_path: Path) -> None:
    """The branch ``:master`` led to a node; the cuboids are cached under that node's
    identity, so the node is remembered too."""
    double = DvidDouble()
    root = double.add_repo()
    double.add_instance(root, "grayscale", "uint8blk")
    data = ground_truth("uint8", 1, (64, 96, 128))[0]
    double.write(root, "grayscale", (0, 0, 0), data)
    server = ThreadedServer(double.app)

    def settings() -> Settings:
        return Settings(cache={"disk_dir": tmp_path / "cache"}, sources=[
            {"collection": "c", "experiment": "e", "channel": "grayscale", "kind": "dvid",
             "url": server.url, "uuid": ":master", "retries": 0, "connect_timeout": 1}])

    box = "/v1/cutout/c/e/grayscale/0/0:128/0:96/0:32/"
    with server, TestClient(create_app(settings()), base_url="http://localhost") as client:
        assert client.get(box).status_code == 200
    # DVID is down now (its server stopped); the relay restarts on the same disk
    with TestClient(create_app(settings()), base_url="http://localhost") as client:
        response = client.get(box)
        assert response.status_code == 200, response.text
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(32, 96, 128)
        np.testing.assert_array_equal(got, data[:32])
        assert client.get("/v1/collection/c/experiment/e/channel/grayscale/").status_code == 200
        other = client.get("/v1/cutout/c/e/grayscale/0/0:128/0:96/32:64/")
        assert other.status_code == 503, other.text


@pytest.mark.parametrize("kind", ["zarr", "boss"])
def test_without_anything_remembered_an_unreachable_source_is_an_error(
        tmp_path: Path, kind: str) -> None:
    """Nothing is made up: a source never reached before answers errors, not metadata."""
    from ..servers import free_port

    url = (str(tmp_path / "nowhere.zarr") if kind == "zarr"
           else f"http://127.0.0.1:{free_port()}")
    settings = Settings(cache={"disk_dir": tmp_path / "cache"}, sources=[
        {"collection": "c", "experiment": "e", "channel": "ch", "kind": kind, "url": url,
         "retries": 0}])
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get("/v1/collection/c/experiment/e/channel/ch/")
    assert response.status_code == 503, response.text
