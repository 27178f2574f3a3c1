"""The write path: a POSTed cutout into the store, with every cache of it kept true.

A write goes to the store through the source's upstream (zarr, precomputed and DVID write
themselves; a ``boss`` source forwards the same POST one hop on, where the next relay does all
of this again). Around it, on this relay:

1. the channel's gate is taken for writing (``relay.gate``): store reads in flight finish and
   are cached first, new ones wait, so no read sees the store half-written and nothing read
   before the write is cached after it;
2. every cuboid the box touches — at the written level, at every time written, and at each
   coarser level (derived from it here or further up a chain) — is dropped from the decoded
   cuboids and every tier (a pending write-behind lands first, then is deleted). In a fleet
   (a shared Redis tier), each one's version is also bumped, which makes every other relay's
   copy unreachable: those relays cache a writable source's cuboids under key and version,
   and read the versions from Redis with each request (``CutoutService.versioned``); and each
   is marked as being written, with an expiry, so no relay caches what it reads of them until
   the write is done (nor ever, should this relay die mid-write: the store may then hold the
   box half written, and only the store is to be trusted);
3. the store is written;
4. in a fleet, the versions are bumped once more and the marks cleared;
5. 201.

Dropping before the store write (not only after) is what makes a kill -9 at any point safe:
what the caches hold of the box afterwards is the old voxels only where the store still has
them too. A write that fails leaves the store as the store leaves it; the caches then hold
nothing of the box, so the next read asks the store what it holds. A write refused for what
the store is (read over HTTP, lossy, a locked DVID node; ``Upstream.check_write``) is refused
before anything is dropped. Meshes of a writable source
are never cached (``relay.meshes``), so none can outlive the voxels it was made from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .catalog import Channel
from .cutout import CutoutService, cache_key, channel_prefix, check_cells
from .errors import InvalidResolution, MethodNotAllowed, RelayError, UpstreamUnavailable
from .geometry import Box, Vec3
from .labels import LabelIndex
from .metrics import Metrics
from .planner import plan

__all__ = ["WriteRequest", "WriteService"]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    channel: Channel
    resolution: int
    box: Box
    data: np.ndarray            # T,Z,Y,X: one Z,Y,X array per time sample
    times: range = range(1)
    token: str | None = None    # the caller's Authorization, for sources that forward it


class WriteService:
    def __init__(self, cutouts: CutoutService, metrics: Metrics, labels: LabelIndex) -> None:
        self.cutouts = cutouts
        self.metrics = metrics
        self.labels = labels

    @staticmethod
    def check(channel: Channel, resolution: int) -> None:
        """405 unless the channel's source takes writes at ``resolution``: asked before the
        body is read, so a refused write costs nothing."""
        source = channel.source
        names = f"{channel.ref.collection}/{channel.ref.experiment}/{channel.ref.channel}"
        if not source.writable:
            raise MethodNotAllowed(
                f"{names} is read-only on this relay; set writable: true in its source entry "
                "to let cutout POSTs through to its store (docs/writes.md)")
        if not channel.upstream.writes:
            raise MethodNotAllowed(f"{names}: a {source.kind} source cannot take writes")
        pyramid = channel.pyramid
        if pyramid is not None and pyramid.derives(resolution):
            raise InvalidResolution(
                f"Resolution {resolution} of {names} is made by this relay from resolution "
                f"{pyramid.stored - 1}; write a stored resolution (0 to {pyramid.stored - 1})")

    def touched(self, request: WriteRequest) -> list[str]:
        """The cache keys of every cuboid the write may change: at its level, and at every
        coarser one, the box scaled by their voxel sizes. A coarser level changes at once when
        it is derived from this one, here or by a relay further up a chain; where a store
        keeps its own coarser levels, dropping them costs a read, never a wrong voxel."""
        channel, info = request.channel, request.channel.info
        keys: list[str] = []
        for level, box in self._boxes(request):
            grid = info.levels[level]
            keys += [cache_key(channel, level, t, cuboid, request.token)
                     for t in request.times
                     for cuboid in plan(box, grid.cuboid, grid.origin, grid.bounds)]
        return keys

    def _boxes(self, request: WriteRequest) -> list[tuple[int, Box]]:
        """The written box at its level and at every coarser one, scaled by their voxel
        sizes."""
        info = request.channel.info
        written = info.levels[request.resolution]
        boxes = []
        for level in range(request.resolution, len(info.levels)):
            grid = info.levels[level]
            ratio = [c / w for c, w in zip(grid.voxel_size, written.voxel_size, strict=True)]
            box = Box(Vec3(*(math.floor(s / r) for s, r in zip(request.box.start, ratio,
                                                                strict=True))),
                      Vec3(*(math.ceil(s / r) for s, r in zip(request.box.stop, ratio,
                                                              strict=True))))
            boxes.append((level, box))
        return boxes

    def touched_labels(self, request: WriteRequest) -> list[str]:
        """The label index entries (``relay.labels``) the write makes untrue, at every level
        (its label index covers time 0 only)."""
        if 0 not in request.times:
            return []
        return [key for level, box in self._boxes(request)
                for key in self.labels.touched_keys(request.channel, level, box, request.token)]

    async def write(self, request: WriteRequest) -> None:
        """Write ``request`` to the store, keeping every cache true (see the module); return
        once the store holds it."""
        channel = request.channel
        self.check(channel, request.resolution)
        # every cuboid it touches is dropped one by one: as bounded as a read of the box
        check_cells(channel.info.levels[request.resolution], request.box, len(request.times))
        cutouts, cache = self.cutouts, self.cutouts.cache
        # what the store is refuses a write before anything cached is dropped
        await channel.upstream.check_write(channel.ref, request.resolution)
        keys = self.touched(request)
        fleet = cache is not None and cache.versioned and channel.source.cache
        labels = self.touched_labels(request)
        async with cutouts.gates(channel_prefix(channel)).writing():
            await cutouts.invalidate(channel, keys)
            await cutouts.drop(labels)
            self.metrics.inc("write_invalidated_total", len(keys))
            if fleet:
                assert cache is not None
                # marked as being written for as long as the write may take: a relay of the
                # fleet caches nothing it reads of these cuboids meanwhile, nor after, should
                # this relay die before the write is done (the mark then expires)
                bound = 2 * channel.source.timeout * len(request.times) + 10
                if not await cache.bump(keys, writing_for=bound):
                    self.metrics.inc("write_errors_total")
                    raise UpstreamUnavailable(
                        "The fleet's shared tier (Redis) cannot be reached: a write now would "
                        "leave the other relays serving the old voxels; retry when it is back")
            try:
                for i, t in enumerate(request.times):
                    await channel.upstream.write(channel.ref, request.resolution, request.box,
                                                 request.data[i], t, request.token)
            except RelayError:
                self.metrics.inc("write_errors_total")
                raise
            finally:
                channel.upstream.forget(channel.ref)
                if fleet:
                    assert cache is not None
                    # anything cached under the version of the write (only a relay whose
                    # read outlasted the mark can have), then the version that ends it
                    await cutouts.invalidate(channel, keys)
                    if not await cache.bump(keys):
                        # the store has it; a retry writes the same voxels again, and tells
                        self.metrics.inc("write_errors_total")
                        raise UpstreamUnavailable(
                            "The store took the write, but the fleet's shared tier (Redis) "
                            "could not be told afterwards; retry the write when it is back")
        self.metrics.inc("writes_total")
