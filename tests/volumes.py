"""Ground-truth volumes for the HTTP tests, defined by formulas so any box can be checked
without holding the arrays: the stores are written from the same formulas, slab by slab.

Fixture of reference/bossdb-dialect.md §8: collection ``col1``, experiment ``exp1``, frame
0:2000 × 0:1000 × 0:100 at 4×4×40 nm, three anisotropic levels (level r holds every 2^r-th
voxel of level 0 in x and y), channels ``ch1`` (uint8 image), ``ch16`` (uint16 image) and
``anno`` (uint64 annotation, labels in 0:1024 × 0:1024 × 0:32, zero elsewhere), all zarr v3
with 512×512×16 chunks. ``col1/big/empty`` is a metadata-only 2048×2048×200 uint8 array for
size-limit tests; ``col1/series/ch`` a 3-sample time series (t, z, y, x).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

FRAME_XYZ = (2000, 1000, 100)
LEVELS = 3
ANNO_XYZ = (1024, 1024, 32)
VOXEL = (4.0, 4.0, 40.0)
SERIES_T = 3


def _grid(box_start: tuple[int, int, int], box_stop: tuple[int, int, int],
          level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 coordinates (z, y, x broadcastable) of a level-``level`` box."""
    (x0, y0, z0), (x1, y1, z1) = box_start, box_stop
    z = np.arange(z0, z1, dtype=np.int64)[:, None, None]
    y = np.arange(y0, y1, dtype=np.int64)[None, :, None] << level
    x = np.arange(x0, x1, dtype=np.int64)[None, None, :] << level
    return z, y, x


def level_shape_xyz(level: int, xyz: tuple[int, int, int] = FRAME_XYZ) -> tuple[int, int, int]:
    return (-(-xyz[0] >> level), -(-xyz[1] >> level), xyz[2])


def truth(channel: str, level: int, start: tuple[int, int, int],
          stop: tuple[int, int, int], t: int = 0) -> np.ndarray:
    """The voxels of a box at a level, exactly as written upstream (zeros outside the data)."""
    z, y, x = _grid(start, stop, level)
    shape_xyz = level_shape_xyz(level)
    inside = (x < shape_xyz[0] << level) & (y < shape_xyz[1] << level) & (z < shape_xyz[2])
    if channel == "ch1":
        values = ((x * 7 + y * 3 + z * 11) % 251).astype(np.uint8)
    elif channel == "ch16":
        values = ((x * 131 + y * 17 + z * 1031) % 65521).astype(np.uint16)
    elif channel == "anno":
        inside = inside & (x < ANNO_XYZ[0]) & (y < ANNO_XYZ[1]) & (z < ANNO_XYZ[2])
        values = ((x // 100) + (y // 100) * 11 + (z // 8) * 1000).astype(np.uint64) + np.uint64(
            2**40
        )
    elif channel == "series":
        values = ((x + y * 5 + z * 13 + t * 101) % 256).astype(np.uint8)
    else:
        raise KeyError(channel)
    out = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), values.dtype)
    out[...] = np.where(inside, values, 0)
    return out


def _ome_attrs(levels: int, axes: str) -> dict[str, Any]:
    def scale(r: int) -> list[float]:
        per = {"t": 1.0, "z": VOXEL[2], "y": VOXEL[1] * 2**r, "x": VOXEL[0] * 2**r}
        return [per[a] for a in axes]

    return {
        "version": "0.5",
        "multiscales": [{
            "axes": [{"name": a, "type": "time" if a == "t" else "space"} for a in axes],
            "datasets": [
                {"path": str(r), "coordinateTransformations": [{"type": "scale",
                                                                 "scale": scale(r)}]}
                for r in range(levels)
            ],
        }],
    }


def _write_channel(path: Path, channel: str, dtype: str) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for r in range(LEVELS):
        sx, sy, sz = level_shape_xyz(r)
        array = group.create_array(str(r), shape=(sz, sy, sx), chunks=(16, 512, 512),
                                   dtype=dtype)
        limit = ANNO_XYZ if channel == "anno" else (sx << r, sy << r, sz)
        wx, wy, wz = min(sx, -(-limit[0] >> r)), min(sy, -(-limit[1] >> r)), min(sz, limit[2])
        for z0 in range(0, wz, 16):
            z1 = min(z0 + 16, wz)
            array[z0:z1, :wy, :wx] = truth(channel, r, (0, 0, z0), (wx, wy, z1))
    group.attrs["ome"] = _ome_attrs(LEVELS, "zyx")


def _write_series(path: Path) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    sx, sy, sz = 300, 200, 20
    array = group.create_array("0", shape=(SERIES_T, sz, sy, sx), chunks=(1, 16, 128, 128),
                               dtype="uint8")
    for t in range(SERIES_T):
        array[t] = truth("series", 0, (0, 0, 0), (sx, sy, sz), t=t)
    group.attrs["ome"] = _ome_attrs(1, "tzyx")


def write_fixture(root: Path) -> list[dict[str, Any]]:
    """Write every store under ``root``; return the ``sources:`` that serve them."""
    root.mkdir(parents=True, exist_ok=True)
    sources: list[dict[str, Any]] = []
    for channel, dtype in (("ch1", "uint8"), ("ch16", "uint16"), ("anno", "uint64")):
        path = root / f"{channel}.ome.zarr"
        _write_channel(path, channel, dtype)
        sources.append({"collection": "col1", "experiment": "exp1", "channel": channel,
                        "kind": "zarr", "url": path.as_uri()})
    big = zarr.create_array(str(root / "big.zarr"), shape=(200, 2048, 2048),
                            chunks=(16, 512, 512), dtype="uint8", zarr_format=3)
    assert big.nchunks_initialized == 0
    sources.append({"collection": "col1", "experiment": "big", "channel": "empty",
                     "kind": "zarr", "url": (root / "big.zarr").as_uri(),
                     "voxel_size": [4, 4, 40]})
    _write_series(root / "series.ome.zarr")
    sources.append({"collection": "col1", "experiment": "series", "channel": "ch",
                    "kind": "zarr", "url": (root / "series.ome.zarr").as_uri()})
    return sources
