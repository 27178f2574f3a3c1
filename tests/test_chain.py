"""A three-hop chain of real relay processes (laptop → lab → institute → zarr stores), with the
real intern package as the client at the front."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from requests import HTTPError

from .servers import RelayProcess, wait_for, write_config
from .volumes import FRAME_XYZ, level_shape_xyz, truth

HOP_TIMEOUT = 6.0  # seconds, the laptop's total budget for one upstream call


def _boss_source(url: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"collection": "*", "kind": "boss", "url": url, **extra}]


class Chain:
    def __init__(self, root: Path, sources: list[dict[str, Any]]) -> None:
        self.root = root
        institute_cfg = write_config(root / "institute.yaml", sources, root / "institute-cache")
        self.institute = RelayProcess(["--config", str(institute_cfg)],
                                      log=root / "institute.log").start()
        lab_cfg = write_config(root / "lab.yaml", _boss_source(self.institute.url),
                               root / "lab-cache")
        self.lab = RelayProcess(["--config", str(lab_cfg)], log=root / "lab.log").start()
        laptop_cfg = write_config(
            root / "laptop.yaml",
            _boss_source(self.lab.url, timeout=HOP_TIMEOUT, retries=2, connect_timeout=1),
            root / "laptop-cache",
        )
        self.laptop = RelayProcess(["--config", str(laptop_cfg)], log=root / "laptop.log").start()

    def stop(self) -> None:
        for relay in (self.laptop, self.lab, self.institute):
            relay.stop()


@pytest.fixture(scope="module")
def chain(fixture_sources: list[dict[str, Any]],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    chain = Chain(tmp_path_factory.mktemp("chain"), fixture_sources)
    yield chain
    chain.stop()


@pytest.fixture(scope="module")
def remote(chain: Chain) -> BossRemote:
    return BossRemote({"protocol": "http", "host": chain.laptop.host, "token": "public"})


def _requests(relay: RelayProcess) -> int:
    return int(relay.metrics().get("relay_requests_total", 0))


def test_metadata_passes_through(remote: BossRemote) -> None:
    assert "col1" in remote.list_collections()
    assert set(remote.list_experiments("col1")) == {"exp1", "big", "series"}
    experiment = remote.get_experiment("col1", "exp1")
    assert experiment.num_hierarchy_levels == 3
    frame = remote.get_coordinate_frame(experiment.coord_frame)
    assert (frame.x_stop, frame.y_stop, frame.z_stop) == FRAME_XYZ


@pytest.mark.parametrize("channel", ["ch1", "ch16", "anno"])
@pytest.mark.parametrize("res", [0, 1, 2])
def test_voxels_through_three_hops(remote: BossRemote, channel: str, res: int) -> None:
    resource = remote.get_channel(channel, "col1", "exp1")
    sx, sy, _ = level_shape_xyz(res)
    # the far edge of the level (partial cuboids in x, y and z) and an unaligned interior box
    for x, y, z in (([sx - 333, sx], [sy - 71, sy], [85, 100]),
                    ([17, 530], [250 >> res, 780 >> res], [14, 35])):
        data = remote.get_cutout(resource, res, x, y, z)
        np.testing.assert_array_equal(data, truth(channel, res, (x[0], y[0], z[0]),
                                                  (x[1], y[1], z[1])))


def test_a_warm_front_sends_nothing_down_the_chain(remote: BossRemote, chain: Chain) -> None:
    resource = remote.get_channel("ch1", "col1", "exp1")
    box = ([100, 1300], [50, 900], [3, 40])
    first = remote.get_cutout(resource, 0, *box)
    lab_before, laptop_reads = _requests(chain.lab), chain.laptop.upstream_reads()
    again = remote.get_cutout(resource, 0, *box)
    assert _requests(chain.lab) == lab_before
    assert chain.laptop.upstream_reads() == laptop_reads
    np.testing.assert_array_equal(first, again)


def test_source_errors_keep_status_and_code(chain: Chain, remote: BossRemote) -> None:
    base = chain.laptop.url
    missing = httpx.get(base + "/v1/collection/col1/experiment/exp1/channel/nope/")
    assert missing.status_code == 404 and missing.json()["code"] == 4000
    missing = httpx.get(base + "/v1/cutout/col1/exp1/nope/0/0:10/0:10/0:10/")
    assert missing.status_code == 404 and missing.json()["code"] == 4000
    outside = httpx.get(base + "/v1/cutout/col1/exp1/ch1/0/0:2001/0:10/0:10/")
    assert outside.status_code == 400 and outside.json()["code"] == 1001
    bad_res = httpx.get(base + "/v1/cutout/col1/exp1/ch1/5/0:10/0:10/0:10/")
    assert bad_res.status_code == 400 and bad_res.json()["code"] == 1002
    with pytest.raises(HTTPError, match="404"):
        remote.get_channel("nope", "col1", "exp1")


def test_killing_the_middle_relay_fails_fast_and_restarting_restores(chain: Chain) -> None:
    url = chain.laptop.url + "/v1/cutout/col1/exp1/ch16/0/1500:1600/900:1000/60:70/"
    warm = chain.laptop.url + "/v1/cutout/col1/exp1/ch1/0/0:100/0:100/0:10/"
    assert httpx.get(warm, timeout=60).status_code == 200
    chain.lab.stop()
    # offline, the laptop keeps serving what it holds: metadata and warm cuboids
    assert httpx.get(warm, timeout=60).status_code == 200
    channel = httpx.get(chain.laptop.url + "/v1/collection/col1/experiment/exp1/channel/ch1/")
    assert channel.status_code == 200 and channel.json()["datatype"] == "uint8"
    started = time.monotonic()
    response = httpx.get(url, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code in (502, 503, 504)
    assert set(response.json()) == {"status", "code", "message"}
    assert elapsed < HOP_TIMEOUT + 2
    chain.lab.start()  # the same port again
    # the laptop leaves an unreachable host alone for a few seconds, then reads it again
    answers: list[httpx.Response] = []

    def read_again() -> bool:
        answers.append(httpx.get(url, timeout=60))
        assert answers[-1].status_code in (200, 503), answers[-1].text
        return answers[-1].status_code == 200

    wait_for(read_again, 15, "the laptop to read the lab again")
    response = answers[-1]
    got = np.frombuffer(__import__("blosc").decompress(response.content), np.uint16)
    np.testing.assert_array_equal(got.reshape(10, 100, 100),
                                  truth("ch16", 0, (1500, 900, 60), (1600, 1000, 70)))


@pytest.mark.parametrize("channel", ["ch1", "ch16", "anno"])
def test_first_touch_cuboids_are_forwarded_whole_and_right(
        fixture_sources: list[dict[str, Any]], tmp_path: Path, channel: str) -> None:
    """A cold request of exactly one cuboid is forwarded hop by hop as it arrives
    (``relay.forwarding``): every level, an interior cuboid and the partial one at the far
    corner, each equal to the written voxels, and forwarding counted by both hops. A chain of
    its own: nothing in it is warm."""
    chain = Chain(tmp_path, fixture_sources)
    try:
        _forwarded_and_right(chain, channel)
    finally:
        chain.stop()


def _forwarded_and_right(chain: Chain, channel: str) -> None:
    base = chain.laptop.url
    forwarded = {relay: relay.metrics().get("relay_forwarded_total", 0)
                 for relay in (chain.laptop, chain.lab)}
    asked = 0
    for res in range(3):
        info = httpx.get(f"{base}/v1/downsample/col1/exp1/{channel}/").json()
        cx, cy, cz = info["cuboid_size"][str(res)]
        ex, ey, ez = info["extent"][str(res)]
        last = ((ex - 1) // cx * cx, (ey - 1) // cy * cy, (ez - 1) // cz * cz)
        for start in ((0, 0, cz), last):
            stop = (min(start[0] + cx, ex), min(start[1] + cy, ey), min(start[2] + cz, ez))
            ranges = "/".join(f"{a}:{b}" for a, b in zip(start, stop, strict=True))
            answer = httpx.get(f"{base}/v1/cutout/col1/exp1/{channel}/{res}/{ranges}/",
                               headers={"Accept": "application/blosc"}, timeout=60)
            assert answer.status_code == 200, (ranges, res, info, answer.text)
            assert answer.headers["x-cache"] != "HIT"  # first touch at every hop
            expected = truth(channel, res, start, stop)
            got = np.frombuffer(blosc.decompress(answer.content), expected.dtype)
            np.testing.assert_array_equal(got.reshape(expected.shape), expected)
            asked += 1
    # a frame that arrives whole in one read is answered as it is, checked; the others were
    # forwarded (the 4 MiB ones at the least)
    for relay, before in forwarded.items():
        assert 1 <= relay.metrics()["relay_forwarded_total"] - before <= asked
