"""The adversary's memory cases (issue 25): a coarse read of a large single-scale store, a mesh
of a checkerboard, an object-dtype pickle. Each runs against a relay process with small budgets
while a thread samples its resident memory and another asks ``/healthz`` over and over: the
process stays within its budgets plus a fixed overhead, and keeps answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr

from ..servers import RelayProcess, write_config
from .conftest import RssPeak

MiB = 2**20
#: the budgets the adversary chose: memory tier, decoded cuboids, responses in flight
BUDGETS = {"memory_bytes": 64 * MiB, "decoded_bytes": 16 * MiB}
INFLIGHT = 64 * MiB
#: what the issue allows beyond the budgets: the interpreter and its libraries (about 150 MiB
#: here), a request's working memory, allocator slack
OVERHEAD = 400 * MiB
LIMIT = sum(BUDGETS.values()) + INFLIGHT + OVERHEAD


class HealthProbe:
    """Asks ``/healthz`` back to back in a thread while in use; ``slowest`` is the longest
    answer (a measurement: the event loop must not stall behind the work)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get(self.url + "/healthz").status_code == 200
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.answers += 1
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@contextmanager
def adversary_relay(root: Path, sources: list[dict[str, Any]],
                    **server: Any) -> Iterator[RelayProcess]:
    config = write_config(root / "relay.yaml", sources, root / "cache",
                          server={"max_inflight_bytes": INFLIGHT, **server}, **BUDGETS)
    with RelayProcess(["--config", str(config)], log=root / "relay.log") as relay:
        yield relay


@contextmanager
def watched(relay: RelayProcess) -> Iterator[tuple[RssPeak, HealthProbe]]:
    assert relay.process is not None
    with RssPeak(relay.process.pid) as rss, HealthProbe(relay.url) as health:
        yield rss, health
    print(f"peak RSS {rss.peak / MiB:.0f} MiB (limit {LIMIT / MiB:.0f}); slowest /healthz "
          f"{health.slowest * 1e3:.0f} ms of {health.answers}")
    assert rss.peak <= LIMIT, f"{rss.peak / MiB:.0f} MiB"
    assert health.answers > 0
    assert health.slowest < 0.5


@pytest.fixture(scope="module")
def large_single_scale(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 16 × 8192 × 8192 uint8 single-scale zarr (1 GiB of voxels), written a band at a time
    from a pattern (so the test writes it quickly), and its level-4 mean, computed here."""
    path = tmp_path_factory.mktemp("large") / "single.zarr"
    shape = (16, 8192, 8192)
    # uncompressed: compressing a GiB would be most of the test's time
    array = zarr.create_array(str(path), shape=shape, chunks=(16, 512, 512), dtype="uint8",
                              zarr_format=3, compressors=None)
    # a band of whole chunks at a time (a chunk written in parts is read and written again)
    x = np.arange(8192, dtype=np.uint16)[None, None, :]
    z = np.arange(16, dtype=np.uint16)[:, None, None]
    bands = []
    for y0 in range(0, 8192, 512):
        y = np.arange(y0, y0 + 512, dtype=np.uint16)[None, :, None]
        band = ((x * 7 + y * 13 + z * 29) % 251).astype(np.uint8)
        array[:, y0:y0 + 512, :] = band
        bands.append(_halved(band))
    level = np.concatenate(bands, axis=1)  # level 1
    for _ in range(3):
        level = _halved(level)
    return path, level


def _halved(voxels: np.ndarray) -> np.ndarray:
    """The relay's mean of every 2 × 2 × 2 block, rounded half up (``relay.pyramid``)."""
    total = np.full([-(-n // 2) for n in voxels.shape], 4, np.uint16)
    for z in (0, 1):
        for y in (0, 1):
            for x in (0, 1):
                total += voxels[z::2, y::2, x::2]
    return np.asarray(total // 8, np.uint8)


def test_a_coarse_read_of_a_large_single_scale_store_stays_in_the_budget(
        tmp_path: Path, large_single_scale: tuple[Path, np.ndarray]) -> None:
    """Finding 4: a 512 × 512 × 1 GET at level 4 of a 1 GiB single-scale zarr peaked at 1.38
    GiB (the whole stored level gathered at once, nothing reserved from the budget)."""
    path, expected = large_single_scale
    source = {"collection": "big", "experiment": "e", "channel": "img", "kind": "zarr",
              "url": str(path)}
    with adversary_relay(tmp_path, [source]) as relay, watched(relay):
        response = httpx.get(f"{relay.url}/v1/cutout/big/e/img/4/0:512/0:512/0:1/", timeout=600)
        assert response.status_code == 200, response.text
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(1, 512, 512)
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def writable_segmentation(tmp_path: Path) -> dict[str, Any]:
    """A writable 16 × 512 × 512 uint64 annotation zarr of zeros: one mesh cell."""
    path = tmp_path / "seg.zarr"
    zarr.create_array(str(path), shape=(16, 512, 512), chunks=(16, 512, 512), dtype="uint64",
                      zarr_format=3, fill_value=0)
    return {"collection": "adv", "experiment": "e", "channel": "seg", "kind": "zarr",
            "url": str(path), "writable": True}


def test_a_checkerboard_mesh_is_refused_within_the_budget(
        tmp_path: Path, writable_segmentation: dict[str, Any]) -> None:
    """Finding 8: a 34 KB POST of a one-voxel checkerboard of two labels made one mesh GET take
    46-49 s, return 63 MB and peak at 2 GiB. Its meshing is now refused (413, naming the
    setting) before zmesh runs, and nothing passes the budgets meanwhile."""
    z, y, x = np.indices((16, 512, 512))
    board = np.where((x + y + z) % 2 == 0, 1, 2).astype(np.uint64)
    body = blosc.compress(board.tobytes(), typesize=8, cname="zstd", clevel=9)
    assert len(body) < 64 * 1024
    with adversary_relay(tmp_path, [writable_segmentation]) as relay:
        created = httpx.post(f"{relay.url}/v1/cutout/adv/e/seg/0/0:512/0:512/0:16/",
                             content=body, headers={"Content-Type": "application/blosc"})
        assert created.status_code == 201, created.text
        with watched(relay):
            for url in ("/v1/mesh/adv/e/seg/1/", "/precomputed/adv/e/seg/mesh/1:0:r0_0_0_0"):
                refused = httpx.get(relay.url + url, timeout=300)
                assert refused.status_code == 413, refused.text
                assert refused.json()["code"] == 2000
                assert "server.max_mesh_bytes" in refused.json()["message"]
        # a segment of an ordinary surface in the same store is meshed as ever
        block = np.zeros((16, 512, 512), np.uint64)
        block[4:12, 100:200, 100:200] = 3
        httpx.post(f"{relay.url}/v1/cutout/adv/e/seg/0/0:512/0:512/0:16/",
                   content=blosc.compress(block.tobytes(), typesize=8),
                   headers={"Content-Type": "application/blosc"}).raise_for_status()
        mesh = httpx.get(f"{relay.url}/v1/mesh/adv/e/seg/3/", timeout=300)
        assert mesh.status_code == 200 and mesh.content.startswith(b"v ")


def test_an_object_array_pickle_costs_nothing(
        tmp_path: Path, writable_segmentation: dict[str, Any]) -> None:
    """Finding 5: a 112-byte POST of a pickled ``ndarray((2**27,), object)`` cost 1 GiB of RSS
    and stalled the event loop for seconds."""
    import pickle

    from ..test_codecs import _Claiming

    body = blosc.compress(pickle.dumps(_Claiming((1, 1, 2**27), "O", []), 2))
    with adversary_relay(tmp_path, [writable_segmentation]) as relay, watched(relay):
        for _ in range(8):
            refused = httpx.post(f"{relay.url}/v1/cutout/adv/e/seg/0/0:512/0:512/0:16/",
                                 content=body,
                                 headers={"Content-Type": "application/blosc-python"})
            assert (refused.status_code, refused.json()["code"]) == (400, 2002), refused.text
