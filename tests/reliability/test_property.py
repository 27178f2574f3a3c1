"""Hypothesis: any box of a random volume, read through one relay and through a chain of two,
equals the numpy slice of what was written, for uint8, uint16 and uint64, cold or warm, edge
cuboids included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.app import create_app
from relay.config import Settings

from ..servers import ThreadedServer

SHAPE_ZYX = (40, 200, 300)  # not a multiple of the 128 × 128 × 16 cuboid in any axis
DTYPES = ("uint8", "uint16", "uint64")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


@pytest.fixture(scope="module")
def volumes(root: Path) -> dict[str, np.ndarray]:
    """The ground truth per dtype, written to ``root/<dtype>.zarr``."""
    rng = np.random.default_rng(5)
    out = {}
    for dtype in DTYPES:
        info = np.iinfo(dtype)
        data = rng.integers(0, info.max, SHAPE_ZYX, dtype=dtype, endpoint=True)
        array = zarr.create_array(str(root / f"{dtype}.zarr"), shape=SHAPE_ZYX,
                                  chunks=(8, 64, 64), dtype=dtype, zarr_format=3)
        array[...] = data
        out[dtype] = data
    return out


@pytest.fixture(scope="module")
def chain(root: Path, volumes: dict[str, np.ndarray]) -> Iterator[tuple[str, str]]:
    """(inner relay URL, front relay URL); the front relay reads the inner one over HTTP."""
    sources = [{"collection": "p", "experiment": "e", "channel": dtype, "kind": "zarr",
                "url": str(root / f"{dtype}.zarr"), "cuboid": [128, 128, 16]}
               for dtype in DTYPES]
    inner = Settings(sources=sources, cache={"disk_dir": None})
    with ThreadedServer(create_app(inner)) as inner_server:
        front = Settings(sources=[{"collection": "*", "kind": "boss", "url": inner_server.url,
                                   "retries": 0}], cache={"disk_dir": None})
        with ThreadedServer(create_app(front)) as front_server:
            yield inner_server.url, front_server.url


def _extent(size: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(0, size - 1), st.integers(1, size)).map(
        lambda p: (p[0], min(size, p[0] + p[1])))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(DTYPES), x=_extent(SHAPE_ZYX[2]), y=_extent(SHAPE_ZYX[1]),
       z=_extent(SHAPE_ZYX[0]), through_chain=st.booleans())
def test_any_box_equals_the_written_voxels(volumes: dict[str, np.ndarray], chain: tuple[str, str],
                                           dtype: str, x: tuple[int, int], y: tuple[int, int],
                                           z: tuple[int, int], through_chain: bool) -> None:
    base = chain[1] if through_chain else chain[0]
    url = f"{base}/v1/cutout/p/e/{dtype}/0/{x[0]}:{x[1]}/{y[0]}:{y[1]}/{z[0]}:{z[1]}/"
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    shape = (z[1] - z[0], y[1] - y[0], x[1] - x[0])
    got = np.frombuffer(blosc.decompress(response.content), dtype=dtype).reshape(shape)
    np.testing.assert_array_equal(got, volumes[dtype][z[0]:z[1], y[0]:y[1], x[0]:x[1]])
