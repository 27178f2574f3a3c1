"""The dvid upstream against the protocol-faithful DVID double; the double itself checked
against the real intern package's DVID remote and against reference/upstreams.md §1."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lz4.block
import numpy as np
import pytest
from intern.remote.dvid import DVIDRemote

from relay.config import SourceSettings
from relay.errors import BadRequest, ResourceNotFound
from relay.geometry import Box
from relay.testing import UpstreamSuite
from relay.testing.upstream_suite import REF, ground_truth, level_offset
from relay.upstreams.kinds import registry

from .dvid_double import DvidDouble
from .servers import ServesOnLoopback, ThreadedServer


class _DvidSuite(ServesOnLoopback, UpstreamSuite):
    kind = "dvid"


class TestDvidGrayscale(_DvidSuite):
    """uint8blk / uint16blk: coarser levels are the instances name_1, name_2 (own extents)."""

    dtypes = ("uint8", "uint16")

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        double = DvidDouble()
        root = double.add_repo()
        type_name = "uint8blk" if levels[0].dtype == np.uint8 else "uint16blk"
        for r, data in enumerate(levels):
            name = "grayscale" if r == 0 else f"grayscale_{r}"
            double.add_instance(root, name, type_name, voxel_size=(
                voxel_size[0] * 2**r, voxel_size[1] * 2**r, voxel_size[2]))
            double.write(root, name, level_offset(offset, r), data)
        return {"url": self.serve(double.app), "uuid": root[:6], "instance": "grayscale"}


class TestDvidLabelmap(_DvidSuite):
    """labelmap: one instance, levels by ?scale=N, each 2× coarser in x, y and z."""

    dtypes = ("uint64",)
    pyramid = (2, 2, 2)
    offset = (64, 32, 8)

    def writable_levels(self, dtype: str) -> range:
        return range(1)  # DVID makes a label instance's coarser scales itself

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        double = DvidDouble()
        root = double.add_repo()
        double.add_instance(root, "segmentation", "labelmap", voxel_size=voxel_size,
                            max_downres=len(levels) - 1)
        for r, data in enumerate(levels):
            double.write(root, "segmentation", level_offset(offset, r, self.pyramid), data,
                         scale=r)
        double.branch(root)  # a child node: the suite reads the master branch's leaf
        return {"url": self.serve(double.app), "uuid": ":master", "instance": "segmentation"}


# --- the dvid upstream's own behaviours ---------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[DvidDouble, str, str]]:
    double = DvidDouble()
    root = double.add_repo()
    double.add_instance(root, "grayscale", "uint8blk")
    double.add_instance(root, "segmentation", "labelmap", max_downres=1)
    levels = ground_truth("uint64", 2, shape_zyx=(64, 96, 128), pyramid=(2, 2, 2))
    double.write(root, "grayscale", (0, 0, 0), ground_truth("uint8", 1, (64, 96, 128))[0])
    for r, data in enumerate(levels):
        double.write(root, "segmentation", (0, 0, 0), data, scale=r)
    with ThreadedServer(double.app) as server:
        yield double, root, server.url


def _source(url: str, **extra: Any) -> SourceSettings:
    return SourceSettings(collection=REF.collection, experiment=REF.experiment,
                          channel=REF.channel, kind="dvid", url=url, **extra)


async def test_branch_leaf_is_resolved_and_part_of_the_identity(
        served: tuple[DvidDouble, str, str]) -> None:
    double, root, url = served
    upstream = registry.create(_source(url, uuid=":master", instance="grayscale"))
    await upstream.channel_info(REF)
    assert root in upstream.identity
    child = double.branch(root)
    double.write(child, "grayscale", (0, 0, 0), np.full((8, 8, 8), 7, np.uint8))
    fresh = registry.create(_source(url, uuid=f"{root[:5]}:master", instance="grayscale"))
    data = await fresh.read(REF, 0, Box.of((0, 0, 0), (8, 8, 8)))
    assert data is not None and (data == 7).all()
    assert child in fresh.identity and fresh.identity_digest != upstream.identity_digest
    await upstream.aclose()
    await fresh.aclose()


async def test_labels_are_read_lz4_compressed_at_each_scale(
        served: tuple[DvidDouble, str, str]) -> None:
    double, root, url = served
    upstream = registry.create(_source(url, uuid=root, instance="segmentation"))
    info = await upstream.channel_info(REF)
    assert info.dtype == np.uint64 and info.type == "annotation"
    assert [lv.voxel_size for lv in info.levels] == [(8.0, 8.0, 8.0), (16.0, 16.0, 16.0)]
    await upstream.read(REF, 1, Box.of((0, 0, 0), (64, 48, 32)))
    raw_requests = [r for r in double.requests if "/raw/" in r]
    assert raw_requests and all("compression=lz4" in r for r in raw_requests)
    assert "scale=1" in raw_requests[-1]
    await upstream.aclose()


async def test_dvid_text_errors_become_boss_errors(served: tuple[DvidDouble, str, str]) -> None:
    _, root, url = served
    for source, error in (
        (_source(url, uuid=root, instance="nope"), ResourceNotFound),
        (_source(url, uuid="ffffffff", instance="grayscale"), ResourceNotFound),
    ):
        upstream = registry.create(source)
        with pytest.raises(error):
            await upstream.channel_info(REF)
        await upstream.aclose()


async def test_an_absent_single_label_block_reads_as_empty(
        served: tuple[DvidDouble, str, str]) -> None:
    double, root, url = served
    double.add_instance(root, "sparse", "labelmap")
    double.write(root, "sparse", (64, 0, 0), np.ones((64, 64, 64), np.uint64))
    upstream = registry.create(_source(url, uuid=root, instance="sparse", cuboid=(64, 64, 64)))
    await upstream.channel_info(REF)
    # the double, like DVID, answers 400 "unable to get label block" for this request
    assert await upstream.read(REF, 0, Box.of((0, 0, 0), (64, 64, 64))) is None
    data = await upstream.read(REF, 0, Box.of((64, 0, 0), (128, 64, 64)))
    assert data is not None and (data == 1).all()
    await upstream.aclose()


async def test_throttled_503_is_retried(served: tuple[DvidDouble, str, str]) -> None:
    double, root, url = served
    response = httpx.get(f"{url}/api/node/{root}/grayscale/raw/0_1_2/8_8_8/0_0_0?throttle=true")
    assert response.status_code == 200
    double.throttle_busy = True
    busy = httpx.get(f"{url}/api/node/{root}/grayscale/raw/0_1_2/8_8_8/0_0_0?throttle=true")
    assert busy.status_code == 503 and "throttled" in busy.text


def test_missing_uuid_config_is_refused() -> None:
    """Checked with the config, by the kind's own options model (not when first used)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="uuid: Field required"):
        _source("http://127.0.0.1:1", instance="grayscale")


# --- the double, held to the reference and to an independent client -----------------------------


def test_intern_dvid_remote_reads_the_double(served: tuple[DvidDouble, str, str]) -> None:
    _, root, url = served
    remote = DVIDRemote({"protocol": "http", "host": url.removeprefix("http://")})
    truth = ground_truth("uint8", 1, (64, 96, 128))[0]
    resource = remote.get_instance(root, "grayscale", datatype="uint8")
    cutout = remote.get_cutout(resource, 0, [10, 77], [5, 50], [3, 40])
    np.testing.assert_array_equal(cutout, truth[3:40, 5:50, 10:77])
    assert remote.get_extents(resource) == [[0, 127], [0, 95], [0, 63]]  # inclusive MaxPoint
    labels = remote.get_instance(root, "segmentation", datatype="uint64")
    np.testing.assert_array_equal(
        remote.get_cutout(labels, 0, [0, 40], [0, 30], [0, 20]),
        ground_truth("uint64", 2, (64, 96, 128), pyramid=(2, 2, 2))[0][:20, :30, :40])
    info = remote.get_info(resource)
    assert info["Extents"]["MaxPoint"] == [127, 95, 63]


def test_double_json_and_errors_follow_the_reference(served: tuple[DvidDouble, str, str]) -> None:
    double, root, url = served
    info = httpx.get(f"{url}/api/node/{root[:4]}/grayscale/info").json()
    assert set(info) == {"Base", "Extended", "Extents"}
    assert info["Base"]["TypeName"] == "uint8blk"
    assert info["Extended"]["BlockSize"] == [32, 32, 32]
    assert info["Extended"]["MinIndex"] == [0, 0, 0] and info["Extended"]["MaxIndex"] == [3, 2, 1]
    double.add_instance(root, "empty", "uint8blk")
    empty = httpx.get(f"{url}/api/node/{root}/empty/info").json()
    assert empty["Extents"] == {"MinPoint": None, "MaxPoint": None}
    bad = httpx.get(f"{url}/api/node/{root}/nope/info")
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/plain")
    assert bad.text.endswith(f"(/api/node/{root}/nope/info).")
    assert "invalid data instance name" in bad.text
    unknown = httpx.get(f"{url}/api/node/zzzz/grayscale/info")
    assert unknown.status_code == 400 and "could not find UUID" in unknown.text
    double.add_repo("other")
    ambiguous = httpx.get(f"{url}/api/node//grayscale/info")  # the empty prefix matches all
    assert ambiguous.status_code == 400 and "more than one UUID matches" in ambiguous.text
    leaf = double.branch(root)
    versions = httpx.get(f"{url}/api/repo/{root}/branch-versions/master").json()
    assert versions == [leaf, root]
    assert httpx.get(f"{url}/api/node/{root}/status").json() == {"Locked": False}
    double.lock(root)
    assert httpx.get(f"{url}/api/node/{root}/status").json() == {"Locked": True}
    # imageblk ignores compression on /raw; labels honour lz4 (bare block) and gzip
    plain = httpx.get(f"{url}/api/node/{root}/grayscale/raw/0_1_2/16_8_4/3_2_1?compression=lz4")
    truth = ground_truth("uint8", 1, (64, 96, 128))[0]
    assert plain.content == truth[1:5, 2:10, 3:19].tobytes()
    labels = ground_truth("uint64", 2, (64, 96, 128), pyramid=(2, 2, 2))
    lz = httpx.get(f"{url}/api/node/{root}/segmentation/raw/0_1_2/16_8_4/3_2_1?compression=lz4")
    assert lz4.block.decompress(lz.content, uncompressed_size=16 * 8 * 4 * 8) == \
        labels[0][1:5, 2:10, 3:19].tobytes()
    gz = httpx.get(f"{url}/api/node/{root}/segmentation/raw/0_1_2/8_8_8/0_0_0?compression=gzip"
                   "&scale=1")
    assert gzip.decompress(gz.content) == labels[1][:8, :8, :8].tobytes()
    bad_comp = httpx.get(f"{url}/api/node/{root}/segmentation/raw/0_1_2/8_8_8/0_0_0"
                         "?compression=zip")
    assert bad_comp.status_code == 400 and "unknown compression" in bad_comp.text


def test_double_block_endpoints(served: tuple[DvidDouble, str, str]) -> None:
    _, root, url = served
    truth = ground_truth("uint8", 1, (64, 96, 128))[0]
    blocks = httpx.get(f"{url}/api/node/{root}/grayscale/blocks/1_0_0/2").content
    assert len(blocks) == 2 * 32**3
    first = np.frombuffer(blocks[: 32**3], np.uint8).reshape(32, 32, 32)
    np.testing.assert_array_equal(first, truth[:32, :32, 32:64])
    beyond = httpx.get(f"{url}/api/node/{root}/grayscale/blocks/9_0_0/1").content
    assert beyond == bytes(32**3)  # missing blocks are filled with Background (0)
    framed = httpx.get(f"{url}/api/node/{root}/segmentation/blocks/128_64_64/0_0_0").content
    labels = ground_truth("uint64", 2, (64, 96, 128), pyramid=(2, 2, 2))[0]
    seen = []
    while framed:
        bx, by, bz, n = struct.unpack_from("<iiii", framed)
        payload, framed = framed[16:16 + n], framed[16 + n:]
        block = np.frombuffer(lz4.block.decompress(payload, uncompressed_size=64**3 * 8),
                              np.uint64).reshape(64, 64, 64)
        np.testing.assert_array_equal(block, labels[bz * 64:(bz + 1) * 64,
                                                    by * 64:(by + 1) * 64,
                                                    bx * 64:(bx + 1) * 64])
        seen.append((bx, by, bz))
    assert seen == [(0, 0, 0), (1, 0, 0)]
    unaligned = httpx.get(f"{url}/api/node/{root}/segmentation/blocks/64_64_64/1_0_0")
    assert unaligned.status_code == 400


@pytest.mark.parametrize(("status", "text", "error"), [
    (400, "invalid data instance name 'x' (/api/node/a/x/info).", ResourceNotFound),
    (400, "could not find UUID with partial match to zz (/api/node/zz/x/info).", ResourceNotFound),
    (404, "Could not find the URL: /api/nothing", ResourceNotFound),
    (400, "bad size specified: '0_0_0' (/api/node/a/x/raw/0_1_2/0_0_0/0_0_0).", BadRequest),
])
def test_dvid_plain_text_errors_are_mapped(status: int, text: str, error: type) -> None:
    from relay.upstreams.dvid import _client_error
    from relay.upstreams.http import Reply

    mapped = _client_error(Reply(status, {}, text.encode()))
    assert mapped is not None and type(mapped) is error
    assert text[:40] in mapped.message


def test_double_subvolblocks_and_specificblocks(served: tuple[DvidDouble, str, str]) -> None:
    _, root, url = served
    truth = ground_truth("uint8", 1, (64, 96, 128))[0]

    def frames(body: bytes) -> dict[tuple[int, int, int], bytes]:
        out = {}
        while body:
            bx, by, bz, n = struct.unpack_from("<iiii", body)
            out[(bx, by, bz)], body = body[16:16 + n], body[16 + n:]
        return out

    sub = frames(httpx.get(f"{url}/api/node/{root}/grayscale/subvolblocks/64_32_32/32_0_0"
                           "?compression=uncompressed").content)
    assert sorted(sub) == [(1, 0, 0), (2, 0, 0)]
    np.testing.assert_array_equal(np.frombuffer(sub[(2, 0, 0)], np.uint8).reshape(32, 32, 32),
                                  truth[:32, :32, 64:96])
    assert httpx.get(f"{url}/api/node/{root}/grayscale/subvolblocks/33_32_32/0_0_0"
                     ).status_code == 400
    specific = frames(httpx.get(f"{url}/api/node/{root}/segmentation/specificblocks",
                                params={"blocks": "1,0,0,5,5,5"}).content)
    assert list(specific) == [(1, 0, 0)]  # the block past the data is omitted
    labels = ground_truth("uint64", 2, (64, 96, 128), pyramid=(2, 2, 2))[0]
    block = lz4.block.decompress(specific[(1, 0, 0)], uncompressed_size=64**3 * 8)
    np.testing.assert_array_equal(np.frombuffer(block, np.uint64).reshape(64, 64, 64),
                                  labels[:64, :64, 64:128])
