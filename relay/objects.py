"""BossDB's object services, computed by the relay from the voxels it serves, for any source.

``ids``: the exact set of nonzero labels in a region of an annotation channel, at a level, over
the time samples asked for (BossDB reads time 0 only, whatever the URL says; its index of the
interior cuboids is built after the fact and may lag a write: the relay's answer is made from
the voxels as they are, through its cache, and so is never behind one).

A region is read like a cutout (the same size limit, ``server.max_cutout_bytes``, and the same
in-flight budget for its voxels and the sorted copy ``np.unique`` makes), so an answer costs what
the cutout of its region costs, cold or warm.
"""

from __future__ import annotations

import numpy as np

from . import dialect
from .catalog import Catalog, Channel
from .cutout import CutoutRequest, CutoutService
from .errors import BadRequest, DatatypeNotSupported, UpstreamError
from .geometry import Box
from .offload import offload
from .state import DurableState

__all__ = ["ObjectService", "channel_key", "require_annotation"]


def require_annotation(channel: Channel, what: str) -> None:
    """400/2003 unless ``channel`` holds labels (BossDB's check and code)."""
    if channel.info.type != "annotation":
        raise DatatypeNotSupported(
            f"The channel in request has type {channel.info.type}. {what} is only valid for "
            "annotation channels")


def _labels(voxels: np.ndarray) -> np.ndarray:
    labels = np.unique(voxels)
    return np.asarray(labels[labels != 0])


def channel_key(channel: Channel) -> str:
    ref = channel.ref
    return f"{ref.collection}/{ref.experiment}/{ref.channel}"


class ObjectService:
    def __init__(self, cutouts: CutoutService, catalog: Catalog, state: DurableState) -> None:
        self.cutouts = cutouts
        self.catalog = catalog
        self.state = state

    async def reserve(self, channel: Channel, count: int, token: str | None) -> int:
        """The first of ``count`` ids of ``channel`` never handed out before (BossDB's
        ``reserve``): by the BossDB-speaking upstream where one serves the channel (never
        cached: every call is a new block), else from the relay's durable counter."""
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
        start = await self.state.reserve(channel_key(channel), count)
        if start is None:
            raise BadRequest(f"Cannot reserve {count} more ids: the channel's ids would pass "
                             "2^64 - 1")
        return start

    async def ids(self, channel: Channel, resolution: int, box: Box, times: range | None,
                  token: str | None) -> np.ndarray:
        """The sorted, distinct nonzero labels (uint64) of ``box`` at ``resolution``."""
        require_annotation(channel, "Ids")
        read = await self.cutouts.read_cutout(CutoutRequest(channel, resolution, box,
                                                            times=times, token=token))
        voxels = read.voxels
        return np.asarray(await offload(_labels, voxels, nbytes=voxels.nbytes), np.uint64)
