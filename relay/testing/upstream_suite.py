"""``UpstreamSuite``: what every upstream kind must do, checked against ground truth.

A subclass names its ``kind`` and implements ``write_store``: write the given level arrays
(Z,Y,X, level 0 first, each level halved in x and y) into the backend's own storage under
``path`` and return the source settings (``url`` and any kind-specific keys) that open it.
The suite then reads through the upstream and compares every voxel with those arrays, and,
for a kind that takes writes, writes unaligned boxes and reads them back.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ..config import SourceSettings
from ..errors import MethodNotAllowed, RelayError, UpstreamError
from ..geometry import Box, Vec3
from ..model import ChannelRef
from ..planner import plan
from ..upstreams.base import Upstream
from ..upstreams.kinds import registry

__all__ = ["UpstreamSuite", "ground_truth"]

REF = ChannelRef("col", "exp", "chan")
#: level-0 shape (z, y, x): deliberately not a multiple of any chunk, so edges are partial
SHAPE_ZYX = (20, 70, 90)
VOXEL_SIZE = (4.0, 4.0, 40.0)
CUBOID = (64, 64, 8)  # a multiple of the 32×32×8 chunks subclasses are asked to write


def ground_truth(dtype: str, levels: int, shape_zyx: tuple[int, int, int] = SHAPE_ZYX,
                 seed: int = 1, pyramid: tuple[int, int, int] = (2, 2, 1)) -> list[np.ndarray]:
    """Random level arrays; each level takes every ``pyramid``-th voxel (x, y, z) of the one
    above."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    high = min(int(info.max), 2**63 - 1)
    base = rng.integers(0, high, size=shape_zyx, dtype=np.uint64, endpoint=True)
    if dtype == "uint64":
        base[0, 0, 0] = np.uint64(2**64 - 1)  # the top bit must survive every path
    top = base.astype(dtype)
    out = [top]
    fx, fy, fz = pyramid
    for _ in range(1, levels):
        out.append(np.ascontiguousarray(out[-1][::fz, ::fy, ::fx]))
    return out


def level_offset(offset: tuple[int, int, int], level: int,
                 pyramid: tuple[int, int, int] = (2, 2, 1)) -> tuple[int, int, int]:
    x, y, z = (o // f**level for o, f in zip(offset, pyramid, strict=True))
    return (x, y, z)


class UpstreamSuite(ABC):
    kind: ClassVar[str]
    #: how many levels the backend can hold (plain arrays: 1)
    levels: ClassVar[int] = 3
    #: whether the backend can place the volume at a non-zero voxel offset
    supports_offset: ClassVar[bool] = True
    offset: ClassVar[tuple[int, int, int]] = (64, 32, 5)  # x, y, z at level 0
    #: the datatypes the backend can hold
    dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "uint64")
    #: how much coarser each level is per axis (x, y, z): (2, 2, 1) anisotropic, (2, 2, 2)
    #: isotropic (then ``offset`` must divide by 2^(levels-1))
    pyramid: ClassVar[tuple[int, int, int]] = (2, 2, 1)

    #: a kind that takes writes (``Upstream.writes``) but whose store, as the subclass makes
    #: it, cannot (zarr or precomputed read over HTTP): a write must then be a clear 405
    read_only_store: ClassVar[bool] = False

    def writable_levels(self, dtype: str) -> range:
        """The levels the store takes writes at (all, unless the backend makes its coarser
        levels itself, as DVID does for label instances)."""
        return range(self.levels)

    @abstractmethod
    def write_store(
        self,
        path: Path,
        levels: list[np.ndarray],
        voxel_size: tuple[float, float, float],
        offset: tuple[int, int, int],
    ) -> dict[str, Any]:
        """Write ``levels`` with 32×32×8 (x, y, z) chunks; return the source settings."""

    # --- fixtures ---------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # every test that takes `dtype` (directly or through a fixture) runs once per dtype
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", self.dtypes)

    @pytest.fixture
    def truth(self, dtype: str) -> list[np.ndarray]:
        return ground_truth(dtype, self.levels, pyramid=self.pyramid)

    @pytest.fixture
    def origin(self) -> tuple[int, int, int]:
        return self.offset if self.supports_offset else (0, 0, 0)

    @pytest.fixture
    def source(
        self, tmp_path: Path, truth: list[np.ndarray], origin: tuple[int, int, int]
    ) -> SourceSettings:
        settings = self.write_store(tmp_path / "store", truth, VOXEL_SIZE, origin)
        return SourceSettings(
            collection=REF.collection, experiment=REF.experiment, channel=REF.channel,
            kind=self.kind, cuboid=CUBOID, **settings,
        )

    @pytest.fixture
    async def upstream(self, source: SourceSettings) -> Any:
        upstream = registry.create(source)
        yield upstream
        await upstream.aclose()

    async def _read(self, upstream: Upstream, level: int, box: Box) -> np.ndarray:
        data = await upstream.read(REF, level, box)
        info = await upstream.channel_info(REF)
        return np.zeros(box.shape_zyx, info.dtype) if data is None else data

    def _expected(self, truth: list[np.ndarray], origin: tuple[int, int, int], level: int,
                  box: Box) -> np.ndarray:
        return truth[level][box.zyx_slices(Vec3(*level_offset(origin, level, self.pyramid)))]

    # --- the suite --------------------------------------------------------------------------

    def test_kind_is_registered(self) -> None:
        assert registry.get(self.kind).kind == self.kind

    async def test_channel_info(
        self, upstream: Upstream, truth: list[np.ndarray], dtype: str,
        origin: tuple[int, int, int],
    ) -> None:
        info = await upstream.channel_info(REF)
        assert info.dtype == np.dtype(dtype)
        assert info.type == ("annotation" if dtype == "uint64" else "image")
        assert len(info.levels) == len(truth)
        for r, (level, array) in enumerate(zip(info.levels, truth, strict=True)):
            z, y, x = array.shape
            start = Vec3(*level_offset(origin, r, self.pyramid))
            assert level.bounds == Box(start, start + (x, y, z))
            assert level.voxel_size == pytest.approx(
                tuple(v * f**r for v, f in zip(VOXEL_SIZE, self.pyramid, strict=True))
            )
            assert level.cuboid == Vec3(*CUBOID)

    async def test_every_cuboid_of_every_level(
        self, upstream: Upstream, truth: list[np.ndarray], origin: tuple[int, int, int]
    ) -> None:
        info = await upstream.channel_info(REF)
        for r, level in enumerate(info.levels):
            out = np.zeros(level.bounds.shape_zyx, info.dtype)
            for cuboid in plan(level.bounds, level.cuboid, level.origin, level.bounds):
                data = await self._read(upstream, r, cuboid.box)
                assert data.shape == cuboid.box.shape_zyx
                assert data.dtype == info.dtype
                out[cuboid.dst] = data[cuboid.src]
            np.testing.assert_array_equal(out, truth[r])

    async def test_unaligned_boxes(
        self, upstream: Upstream, truth: list[np.ndarray], origin: tuple[int, int, int]
    ) -> None:
        info = await upstream.channel_info(REF)
        rng = np.random.default_rng(5)
        for r, level in enumerate(info.levels):
            lo, hi = np.array(level.bounds.start), np.array(level.bounds.stop)
            for _ in range(6):
                a = rng.integers(lo, hi)
                b = rng.integers(a + 1, hi + 1)
                box = Box(Vec3(*map(int, a)), Vec3(*map(int, b)))
                np.testing.assert_array_equal(
                    await self._read(upstream, r, box), self._expected(truth, origin, r, box)
                )

    async def test_far_corner_voxel(
        self, upstream: Upstream, truth: list[np.ndarray], origin: tuple[int, int, int]
    ) -> None:
        info = await upstream.channel_info(REF)
        for r, level in enumerate(info.levels):
            stop = level.bounds.stop
            box = Box(stop - (1, 1, 1), stop)
            np.testing.assert_array_equal(
                await self._read(upstream, r, box), self._expected(truth, origin, r, box)
            )

    async def test_concurrent_reads(
        self, upstream: Upstream, truth: list[np.ndarray], origin: tuple[int, int, int]
    ) -> None:
        info = await upstream.channel_info(REF)
        level = info.levels[0]
        boxes = [c.box for c in plan(level.bounds, Vec3(32, 32, 8), level.origin, level.bounds)]
        results = await asyncio.gather(*(self._read(upstream, 0, box) for box in boxes))
        for box, data in zip(boxes, results, strict=True):
            np.testing.assert_array_equal(data, self._expected(truth, origin, 0, box))

    async def test_unknown_level_is_an_error(self, upstream: Upstream) -> None:
        info = await upstream.channel_info(REF)
        with pytest.raises(RelayError):
            await upstream.read(REF, len(info.levels), info.levels[0].bounds)

    async def test_writes_read_back_and_change_nothing_else(
        self, source: SourceSettings, truth: list[np.ndarray], origin: tuple[int, int, int],
        dtype: str,
    ) -> None:
        """Unaligned boxes written at every level the store takes writes at read back as
        written, and every other voxel of the level is what it was; a kind or store that takes
        none says so with 405."""
        upstream = registry.create(source.model_copy(update={"writable": True}))
        try:
            info = await upstream.channel_info(REF)
            first = info.levels[0].bounds
            if not upstream.writes or self.read_only_store:
                with pytest.raises(MethodNotAllowed):
                    await upstream.write(REF, 0, first, np.zeros(first.shape_zyx, dtype))
                return
            rng = np.random.default_rng(9)
            for r in self.writable_levels(dtype):
                level = info.levels[r]
                expected = truth[r].copy()
                start = Vec3(*level_offset(origin, r, self.pyramid))
                lo, hi = np.array(level.bounds.start), np.array(level.bounds.stop)
                for _ in range(3):
                    a = rng.integers(lo, hi)
                    b = rng.integers(a + 1, np.minimum(hi, a + 40) + 1)
                    box = Box(Vec3(*map(int, a)), Vec3(*map(int, b)))
                    data = ground_truth(dtype, 1, box.shape_zyx, seed=int(rng.integers(99)))[0]
                    await upstream.write(REF, r, box, data)
                    expected[box.zyx_slices(start)] = data
                np.testing.assert_array_equal(await self._read(upstream, r, level.bounds),
                                              expected)
        finally:
            await upstream.aclose()

    async def test_missing_store_is_an_upstream_error(self, source: SourceSettings,
                                                      tmp_path: Path) -> None:
        missing = source.model_copy(update={"url": (tmp_path / "nothing-here").as_uri()})
        upstream = registry.create(missing)
        try:
            with pytest.raises(UpstreamError):
                await upstream.channel_info(REF)
        finally:
            await upstream.aclose()
