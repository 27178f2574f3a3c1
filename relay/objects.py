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

from .catalog import Channel
from .cutout import CutoutRequest, CutoutService
from .errors import DatatypeNotSupported
from .geometry import Box
from .offload import offload

__all__ = ["ObjectService", "require_annotation"]


def require_annotation(channel: Channel, what: str) -> None:
    """400/2003 unless ``channel`` holds labels (BossDB's check and code)."""
    if channel.info.type != "annotation":
        raise DatatypeNotSupported(
            f"The channel in request has type {channel.info.type}. {what} is only valid for "
            "annotation channels")


def _labels(voxels: np.ndarray) -> np.ndarray:
    labels = np.unique(voxels)
    return np.asarray(labels[labels != 0])


class ObjectService:
    def __init__(self, cutouts: CutoutService) -> None:
        self.cutouts = cutouts

    async def ids(self, channel: Channel, resolution: int, box: Box, times: range | None,
                  token: str | None) -> np.ndarray:
        """The sorted, distinct nonzero labels (uint64) of ``box`` at ``resolution``."""
        require_annotation(channel, "Ids")
        read = await self.cutouts.read_cutout(CutoutRequest(channel, resolution, box,
                                                            times=times, token=token))
        voxels = read.voxels
        return np.asarray(await offload(_labels, voxels, nbytes=voxels.nbytes), np.uint64)
