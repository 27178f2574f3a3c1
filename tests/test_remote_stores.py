"""zarr and precomputed stores read over HTTP: UpstreamSuite, unchanged, against real stores
written to a temp dir and served by a plain static file server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relay.testing import UpstreamSuite

from .servers import StaticFileServer
from .test_upstreams import TestPrecomputed, _write_ome


class _OverHttp:
    read_only_store = True  # HTTP has no way to write zarr or precomputed

    @pytest.fixture(autouse=True)
    def _static(self, tmp_path: Path) -> Iterator[None]:
        with StaticFileServer(tmp_path) as server:
            self._server = server
            yield

    def _url(self, path: Path, root: Path) -> str:
        return f"{self._server.url}/{path.relative_to(root).as_posix()}"


class TestZarrOverHttp(_OverHttp, UpstreamSuite):
    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=3)
        return {"url": self._url(path, path.parent)}


class TestZarrV2OverHttp(_OverHttp, UpstreamSuite):
    kind = "zarr"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        _write_ome(path, levels, voxel_size, offset, zarr_format=2)
        return {"url": self._url(path, path.parent)}


class _UncompressedPrecomputed(TestPrecomputed):
    compress = False


class TestPrecomputedOverHttp(_OverHttp, UpstreamSuite):
    kind = "precomputed"

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        # A plain file server serves files by their names: write chunks uncompressed (a bucket
        # would hold gzip under the bare name with Content-Encoding: gzip).
        _UncompressedPrecomputed().write_store(path, levels, voxel_size, offset)
        return {"url": self._url(path, path.parent)}


async def test_missing_chunks_are_an_error_when_fill_missing_is_off(tmp_path: Path) -> None:
    """A store whose chunk files cannot be found (here: .gz names a plain server does not map)
    reads as zeros with fill_missing (the default, for sparse volumes) and as a 502 without."""
    from relay.config import SourceSettings
    from relay.errors import UpstreamError
    from relay.testing.upstream_suite import REF, ground_truth
    from relay.upstreams.kinds import registry

    levels = ground_truth("uint8", 1)
    TestPrecomputed().write_store(tmp_path / "store", levels, (4.0, 4.0, 40.0), (0, 0, 0))
    with StaticFileServer(tmp_path) as server:
        source = SourceSettings(collection="col", experiment="exp", channel="chan",
                                kind="precomputed", url=f"{server.url}/store",
                                fill_missing=False)
        upstream = registry.create(source)
        info = await upstream.channel_info(REF)
        with pytest.raises(UpstreamError):
            await upstream.read(REF, 0, info.levels[0].bounds)
        await upstream.aclose()
