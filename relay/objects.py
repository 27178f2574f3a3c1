"""BossDB's object services, computed by the relay from the voxels it serves, for any source.

- ``ids``: the exact set of nonzero labels in a region of an annotation channel, at a level,
  over the time samples asked for. At time 0 it is BossDB's own algorithm with an index that
  is never behind a write (BossDB's is built after the fact, and reads time 0 whatever the URL
  says): the cells of the level's grid that lie wholly inside the region answer from the label
  index (below: one cache lookup each once built), the partial cells at its edges from their
  voxels; a region is bounded by ``server.max_index_bytes``, and only a cell's voxels are held
  at once. Other time samples are read like the cutout of the region (its size limit,
  ``server.max_cutout_bytes``, and the in-flight budget).
- ``extent`` (BossDB's bounding box): where one id lies at a level, from the label index's
  bounds entries (``relay.labels``): each cell of the level's grid holds its labels and each
  one's lowest and highest voxel inside it, made from the cell's voxels on first use, cached
  like a cuboid and dropped by any write that touches the cell. A cold answer reads the whole
  level once (bounded by ``server.max_index_bytes``, logged as it goes); every answer after
  that is one cache lookup per cell. Time 0, as BossDB.
- ``reserve``: blocks of ids never handed out twice, from the relay's durable state
  (``relay.state``); a channel's first block starts above the largest id its voxels hold.

Where a BossDB-speaking source (BossDB, another relay) serves the channel, bounding boxes and
reservations are its own (passed on, never cached: a write or a reservation changes them);
ids are computed here from the cuboids, which this relay keeps true across writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from . import dialect
from .budget import ByteBudget
from .catalog import Catalog, Channel
from .cutout import CutoutRequest, CutoutService
from .errors import BadRequest, DatatypeNotSupported, RequestTooLarge, UpstreamError
from .geometry import Box, Vec3
from .labels import LabelIndex, distinct
from .offload import offload
from .planner import CuboidPlan, plan
from .state import DurableState

__all__ = ["ObjectService", "channel_key", "require_annotation"]

log = logging.getLogger(__name__)

#: cells of a level indexed at once (each reserves its own bytes from the budget)
INDEX_PARALLEL = 4
#: seconds between two progress lines of a long index build
PROGRESS_EVERY = 10.0


def require_annotation(channel: Channel, what: str) -> None:
    """400/2003 unless ``channel`` holds labels (BossDB's check and code)."""
    if channel.info.type != "annotation":
        raise DatatypeNotSupported(
            f"The channel in request has type {channel.info.type}. {what} is only valid for "
            "annotation channels")


def channel_key(channel: Channel) -> str:
    ref = channel.ref
    return f"{ref.collection}/{ref.experiment}/{ref.channel}"


def _labels(voxels: np.ndarray) -> np.ndarray:
    labels = distinct(voxels)
    return np.asarray(labels[labels != 0])


class ObjectService:
    def __init__(self, cutouts: CutoutService, catalog: Catalog, labels: LabelIndex,
                 state: DurableState, budget: ByteBudget, max_index_bytes: int) -> None:
        self.cutouts = cutouts
        self.budget = budget
        self.catalog = catalog
        self.labels = labels
        self.state = state
        self.max_index_bytes = max_index_bytes

    @staticmethod
    def indexed(channel: Channel, times: range | None) -> bool:
        """Are the ids of this time range answered with the label index (time 0 only)?"""
        if times is None:
            return channel.info.default_time_sample == 0
        return times == range(1)

    async def ids(self, channel: Channel, resolution: int, box: Box, times: range | None,
                  token: str | None) -> np.ndarray:
        """The sorted, distinct nonzero labels (uint64) of ``box`` at ``resolution``. Unless
        ``indexed``, the caller has checked the region's size and reserved its voxels and a
        sorted copy."""
        require_annotation(channel, "Ids")
        if not self.indexed(channel, times):
            read = await self.cutouts.read_cutout(CutoutRequest(channel, resolution, box,
                                                                times=times, token=token))
            voxels = read.voxels
            return np.asarray(await offload(_labels, voxels, nbytes=voxels.nbytes), np.uint64)
        found: list[np.ndarray] = []

        async def visit(cell: CuboidPlan) -> None:
            part = cell.box.intersect(box)
            assert part is not None
            if part == cell.box:  # wholly inside: the index's labels of the cell
                labels, _ = await self.labels.bounds(channel, resolution, cell, token)
                found.append(labels)
                return
            nbytes = part.voxels * channel.info.dtype.itemsize
            peak = 2 * nbytes + CutoutService.working_bytes(channel, resolution, part)
            reservation = self.budget.try_reserve(peak) or await self.budget.reserve(peak)
            try:
                read = await self.cutouts.read_cutout(CutoutRequest(channel, resolution, part,
                                                                    times=range(1),
                                                                    token=token))
                found.append(await offload(_labels, read.voxels, nbytes=nbytes))
            finally:
                reservation.release()

        await self._each_cell(channel, resolution, "The ids of a region", visit, box)
        if not found:
            return np.zeros(0, np.uint64)
        return np.unique(np.concatenate(found).astype(np.uint64, copy=False))

    async def _each_cell(self, channel: Channel, level: int, what: str,
                         visit: Callable[[CuboidPlan], Awaitable[None]],
                         region: Box | None = None) -> None:
        """``visit`` every cell of ``level``'s grid in ``region`` (default the whole level), a
        few at a time, after checking the region against ``server.max_index_bytes``; progress
        is logged while it lasts."""
        grid = channel.info.levels[level]
        region = grid.bounds if region is None else region
        nbytes = region.voxels * channel.info.dtype.itemsize
        if nbytes > self.max_index_bytes:
            whole = "the region" if region != grid.bounds else f"resolution {level} whole"
            raise RequestTooLarge(
                f"{what} of {channel_key(channel)} would index {whole} "
                f"({nbytes / 2**30:.1f} GiB of voxels), past server.max_index_bytes "
                f"({self.max_index_bytes / 2**30:.1f} GiB); raise it to allow this")
        cells = iter(plan(region, grid.cuboid, grid.origin, grid.bounds))
        total = max(1, region.voxels)
        done = 0
        started = last = time.monotonic()

        async def worker() -> None:
            nonlocal done, last
            for cell in cells:  # one shared iterator: each cell is visited once
                await visit(cell)
                inside = cell.box.intersect(region)
                done += inside.voxels if inside is not None else 0
                if time.monotonic() - last > PROGRESS_EVERY:
                    last = time.monotonic()
                    log.info("%s of %s, resolution %d: %.0f%% of the label index in %.0f s",
                             what, channel_key(channel), level, 100 * done / total,
                             last - started)

        await asyncio.gather(*(worker() for _ in range(INDEX_PARALLEL)))

    async def extent(self, channel: Channel, level: int, label: int,
                     token: str | None) -> tuple[Vec3, Vec3] | None:
        """The lowest and highest voxel of ``label`` at ``level`` (inclusive), or None when no
        voxel holds it."""
        require_annotation(channel, "Bounding box")
        low = np.full(3, np.iinfo(np.int64).max, np.int64)
        high = np.full(3, -1, np.int64)
        wanted = np.uint64(label)

        async def visit(cell: CuboidPlan) -> None:
            labels, coords = await self.labels.bounds(channel, level, cell, token)
            at = int(np.searchsorted(labels, wanted))
            if at < len(labels) and labels[at] == wanted:
                np.minimum(low, coords[at, :3], out=low)
                np.maximum(high, coords[at, 3:], out=high)

        await self._each_cell(channel, level, "A bounding box", visit)
        if high[0] < 0:
            return None
        return Vec3(*map(int, low)), Vec3(*map(int, high))

    async def largest(self, channel: Channel, token: str | None) -> int:
        """The largest label the channel's voxels hold at resolution 0 (0 for none)."""
        largest = 0

        async def visit(cell: CuboidPlan) -> None:
            nonlocal largest
            labels, _ = await self.labels.bounds(channel, 0, cell, token)
            if len(labels):
                largest = max(largest, int(labels[-1]))

        await self._each_cell(channel, 0, "Reserving the first ids", visit)
        return largest

    async def reserve(self, channel: Channel, count: int, token: str | None) -> int:
        """The first of ``count`` ids of ``channel`` never handed out before (BossDB's
        ``reserve``): by the BossDB-speaking upstream where one serves the channel (never
        cached: every call is a new block), by the store where it keeps a counter of its own
        (a DVID labelmap), else from the relay's durable counter, whose first block starts
        above the largest id the channel holds."""
        require_annotation(channel, "Reserve ids")
        speaker = self.catalog.speaks_boss(channel.upstream)
        if speaker is not None:
            ref = channel.ref
            body = await speaker.boss_call(
                "GET", dialect.reserve(ref.collection, ref.experiment, ref.channel, count),
                token)
            try:
                return int(body["start_id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise UpstreamError(f"the upstream's reserve answer has no start_id: "
                                    f"{str(body)[:80]}") from exc
        owned = await channel.upstream.reserve_ids(channel.ref, count)
        if owned is not None:  # the store's own counter (DVID labelmap's nextlabel)
            return owned
        key = channel_key(channel)
        floor = 1
        if await self.state.reserved(key) is None:  # the first block: above what is there
            floor = await self.largest(channel, token) + 1
        start = await self.state.reserve(key, count, floor)
        if start is None:
            raise BadRequest(f"Cannot reserve {count} more ids: the channel's ids would pass "
                             "2^64 - 1")
        return start
