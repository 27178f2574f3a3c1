"""The boss upstream passes UpstreamSuite unchanged, reading another relay over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relay.app import create_app
from relay.config import Settings
from relay.testing import UpstreamSuite
from relay.testing.upstream_suite import REF

from .servers import ThreadedServer
from .test_upstreams import _write_ome


class TestBossReadingARelay(UpstreamSuite):
    """The suite's store is OME-Zarr, served by an inner relay; the upstream under test is a
    boss source pointed at that relay."""

    kind = "boss"

    @pytest.fixture(autouse=True)
    def _servers(self) -> Iterator[None]:
        self._running: list[ThreadedServer] = []
        yield
        for server in self._running:
            server.__exit__()

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=3)
        inner = Settings(
            sources=[{"collection": REF.collection, "experiment": REF.experiment,
                      "channel": REF.channel, "kind": "zarr", "url": path.as_uri()}],
            cache={"disk_dir": None},
        )
        server = ThreadedServer(create_app(inner)).__enter__()
        self._running.append(server)
        return {"url": server.url, "retries": 0, "timeout": 20}
