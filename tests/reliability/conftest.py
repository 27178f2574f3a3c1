"""Shared parts of the reliability suite: an incompressible store (so every cached cuboid is a
file of its own in the disk tier, like real EM data), and a relay started through the fault
hook."""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import psutil
import pytest
import zarr

from relay.cache import DiskTier
from relay.codecs import unpack_cuboid

from ..servers import RelayProcess

#: 256 × 256 × 64 voxels, served as 128 × 128 × 16 cuboids (256 KiB each): 16 cuboids.
SHAPE_ZYX = (64, 256, 256)
CUBOID_XYZ = (128, 128, 16)
_CORNER = re.compile(r"/r0/t0/(\d+)x(\d+)x(\d+)/(\d+)_(\d+)_(\d+)$")


@dataclass(frozen=True)
class NoiseStore:
    data: np.ndarray  # the ground truth, z, y, x
    source: dict[str, Any]

    def cuboid_boxes(self) -> list[tuple[int, int, int]]:
        """The (x0, y0, z0) corner of every cuboid of the volume."""
        cx, cy, cz = CUBOID_XYZ
        z, y, x = self.data.shape
        return [(x0, y0, z0) for z0 in range(0, z, cz) for y0 in range(0, y, cy)
                for x0 in range(0, x, cx)]

    def url(self, corner: tuple[int, int, int], query: str = "") -> str:
        (x0, y0, z0), (cx, cy, cz) = corner, CUBOID_XYZ
        return (f"/v1/cutout/rel/noise/img/0/{x0}:{x0 + cx}/{y0}:{y0 + cy}/{z0}:{z0 + cz}/"
                + (f"?{query}" if query else ""))

    def truth(self, corner: tuple[int, int, int]) -> np.ndarray:
        (x0, y0, z0), (cx, cy, cz) = corner, CUBOID_XYZ
        return self.data[z0:z0 + cz, y0:y0 + cy, x0:x0 + cx]


def decode(body: bytes, dtype: str = "uint8") -> np.ndarray:
    cx, cy, cz = CUBOID_XYZ
    return np.frombuffer(blosc.decompress(body), dtype=dtype).reshape(cz, cy, cx)


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> NoiseStore:
    path = tmp_path_factory.mktemp("noise") / "img.zarr"
    data = np.random.default_rng(7).integers(1, 256, SHAPE_ZYX, dtype=np.uint8)  # never 0
    array = zarr.create_array(str(path), shape=data.shape, chunks=(16, 64, 64), dtype="uint8",
                              zarr_format=3)
    array[...] = data
    source = {"collection": "rel", "experiment": "noise", "channel": "img", "kind": "zarr",
              "url": str(path), "cuboid": list(CUBOID_XYZ)}
    return NoiseStore(data, source)


def check_offline(cache_dir: Path, noise: NoiseStore) -> tuple[int, int]:
    """Every entry left on disk: (entries byte-identical to the store, entries found damaged
    and removed). A damaged entry that read as valid would fail here."""
    disk = DiskTier(cache_dir, 2**30)
    good = 0
    try:
        for key in list(disk._cache.iterkeys()):
            payload = disk._get(key)
            if payload is None:
                continue
            match = _CORNER.search(key)
            assert match is not None, key
            size, index = [int(v) for v in match.groups()[:3]], [int(v) for v in match.groups()[3:]]
            assert tuple(size) == CUBOID_XYZ
            corner = (index[0] * size[0], index[1] * size[1], index[2] * size[2])
            np.testing.assert_array_equal(unpack_cuboid(payload), noise.truth(corner))
            good += 1
        return good, disk.stats()["corrupt"]
    finally:
        disk._cache.close()


def check_boss_answer(response: Any) -> None:
    """No 5xx; anything but a 200 is BossDB JSON with its status, short, without a traceback."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"status", "code", "message"}
        assert body["status"] == response.status_code
        assert isinstance(body["code"], int) and isinstance(body["message"], str)
        assert len(body["message"]) <= 300
        assert "Traceback" not in response.text


def hooked_relay(config: Path, env: dict[str, str], log: Path | None = None) -> RelayProcess:
    """The relay program with ``tests.reliability.hooked_relay``'s disk-write hook."""
    command = [sys.executable, "-m", "tests.reliability.hooked_relay", "serve"]
    return RelayProcess(["--config", str(config)], env=env, log=log, command=command)


class RssPeak:
    """The peak resident memory of a process (this one by default), sampled in a thread while
    in use: a measurement, not a synchronisation. ``grew`` is the peak above the start."""

    def __init__(self, pid: int | None = None, interval: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.base: int = self.process.memory_info().rss
        self.peak: int = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    @property
    def grew(self) -> int:
        return self.peak - self.base

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
