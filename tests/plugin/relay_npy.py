"""An upstream kind from outside the relay: a single ``.npy`` file, read memory-mapped.

It is what a third party would ship as its own package: a ``relay.upstreams`` entry point
(``relay_npy-0.1.dist-info/entry_points.txt`` beside this module stands in for the installed
package's metadata) naming an ``Upstream`` subclass with options of its own. The test suite
puts this directory on ``sys.path`` (tests/conftest.py), so the relay finds the kind the way it
finds any plugin, through the entry point.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import numpy as np

from relay.errors import ResourceNotFound, UpstreamError
from relay.geometry import Box, Vec3
from relay.model import ChannelInfo, ChannelRef, Level, default_cuboid
from relay.upstreams.base import NoOptions, Upstream


class NpyOptions(NoOptions):
    #: read through a memory map (false: the whole file is loaded once)
    mmap: bool = True
    #: the array's axis order
    order: Literal["zyx", "xyz"] = "zyx"
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)


class NpyUpstream(Upstream):
    kind = "npy"
    Options = NpyOptions
    options: NpyOptions

    def _array(self) -> np.ndarray:
        parts = urlsplit(self.source.url)
        path = parts.path if parts.scheme == "file" else self.source.url
        try:
            data: np.ndarray = np.load(path, mmap_mode="r" if self.options.mmap else None)
        except (OSError, ValueError) as exc:
            raise UpstreamError(f"{self.where}: cannot read it as .npy: {exc}") from exc
        return data if self.options.order == "zyx" else data.transpose(2, 1, 0)

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        z, y, x = self._array().shape
        cuboid = Vec3(*self.source.cuboid) if self.source.cuboid else default_cuboid((32, 32, 8))
        level = Level(voxel_size=self.options.voxel_size, bounds=Box.of((0, 0, 0), (x, y, z)),
                      cuboid=cuboid, origin=Vec3(0, 0, 0))
        dtype = self._array().dtype.newbyteorder("<")
        return ChannelInfo(dtype=dtype, type="annotation" if dtype == np.uint64 else "image",
                           levels=(level,))

    async def read(self, ref: ChannelRef, level: int, box: Box, t: int = 0,
                   token: str | None = None) -> np.ndarray | None:
        if level != 0:
            raise ResourceNotFound(f"resolution {level} not found")
        return np.ascontiguousarray(self._array()[box.zyx_slices()])
