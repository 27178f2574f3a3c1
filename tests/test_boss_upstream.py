"""The boss upstream passes UpstreamSuite unchanged, reading another relay over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relay.app import create_app
from relay.config import Settings
from relay.testing import UpstreamSuite
from relay.testing.upstream_suite import REF

from .servers import ServesOnLoopback
from .test_upstreams import _write_ome


class TestBossReadingARelay(ServesOnLoopback, UpstreamSuite):
    """The suite's store is OME-Zarr, served by an inner relay; the upstream under test is a
    boss source pointed at that relay."""

    kind = "boss"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=3)
        inner = Settings(
            sources=[{"collection": REF.collection, "experiment": REF.experiment,
                      "channel": REF.channel, "kind": "zarr", "url": path.as_uri(),
                      "writable": True}],
            cache={"disk_dir": None},
        )
        return {"url": self.serve(create_app(inner)), "retries": 0, "timeout": 20}
