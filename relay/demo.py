"""The embedded demo: a synthetic EM-like volume and its segmentation, built on first run.

``ensure_demo(root)`` generates, once, a 1024×1024×64 (x, y, z) uint8 image at 4×4×40 nm with
four resolution levels (2×2×1 downsampling), a uint64 segmentation of the same space whose
objects are the image's cells (its membranes are the label boundaries), and a uint16
membrane-probability channel,
and writes each as OME-Zarr (NGFF 0.5, zarr v3) and as neuroglancer precomputed. Generation
is deterministic (fixed seed), takes seconds, and publishes the directory with one rename, so
an interrupted first run leaves nothing half-written behind.

The cells are tubes: a 2-D Voronoi tessellation whose seeds drift slowly with z, so the
objects run through the stack the way neurites do.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEMO_CHANNELS",
    "DEMO_SHAPE_ZYX",
    "DEMO_VOXEL_SIZE",
    "DemoVolumes",
    "default_demo_dir",
    "demo_sources",
    "ensure_demo",
    "generate",
]

log = logging.getLogger(__name__)

DEMO_VERSION = "demo-v1"
DEMO_SHAPE_ZYX = (64, 1024, 1024)
DEMO_VOXEL_SIZE = (4.0, 4.0, 40.0)  # x, y, z nanometres
DEMO_LEVELS = 4
CHUNK_XYZ = (256, 256, 16)
_SEED = 20261125
#: the channels also written as precomputed (every channel is written as OME-Zarr)
PRECOMPUTED_CHANNELS = ("em", "seg")

#: channel name → (dtype, the kind of store it is served from, what it is)
DEMO_CHANNELS: dict[str, tuple[str, str, str]] = {
    "em": ("uint8", "zarr", "synthetic EM-like image"),
    "seg": ("uint64", "precomputed", "segmentation of the em channel's cells"),
    "prob": ("uint16", "zarr", "membrane probability map of the em channel"),
}


@dataclass(frozen=True)
class DemoVolumes:
    """Level-0 arrays, Z,Y,X."""

    em: np.ndarray
    seg: np.ndarray
    prob: np.ndarray

    def channel(self, name: str) -> np.ndarray:
        array: np.ndarray = getattr(self, name)
        return array


def default_demo_dir() -> Path:
    env = os.environ.get("RELAY_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache_home).expanduser() / "relay" / "demo"


def _labels(rng: np.random.Generator) -> np.ndarray:
    """Voronoi tubes at quarter resolution in x and y; returns uint64 labels (Z, Y/4, X/4)."""
    z_len, y_len, x_len = DEMO_SHAPE_ZYX
    q, cell = 4, 16
    ly, lx = y_len // q, x_len // q
    gy, gx = ly // cell, lx // cell
    base = rng.random((gy, gx, 2))
    drift = rng.normal(0.0, 0.012, (gy, gx, 2))
    yy, xx = np.mgrid[0:ly, 0:lx].astype(np.float32)
    cy, cx = (yy // cell).astype(np.int64), (xx // cell).astype(np.int64)
    labels = np.empty((z_len, ly, lx), np.uint64)
    for z in range(z_len):
        pos = (base + drift * z) % 1.0
        best = np.full((ly, lx), np.inf, np.float32)
        label = np.zeros((ly, lx), np.uint64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = np.clip(cy + dy, 0, gy - 1), np.clip(cx + dx, 0, gx - 1)
                d = (yy - (ny + pos[ny, nx, 0]) * cell) ** 2
                d += (xx - (nx + pos[ny, nx, 1]) * cell) ** 2
                closer = d < best
                best[closer] = d[closer]
                # ids spread over 64 bits, as real segmentations' are
                label[closer] = (ny * gx + nx + 1)[closer].astype(np.uint64) * np.uint64(
                    0x9E3779B1
                )
        labels[z] = label
    return labels


def _blur3(volume: np.ndarray) -> np.ndarray:
    """Sum over a 3×3 neighbourhood in x and y (edges keep their value ×9): a cheap box blur."""
    rows = volume * 3
    rows[:, 1:-1, :] = volume[:, :-2, :] + volume[:, 1:-1, :] + volume[:, 2:, :]
    out = rows * 3
    out[:, :, 1:-1] = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    return out


def generate() -> DemoVolumes:
    rng = np.random.default_rng(_SEED)
    small = _labels(rng)
    seg = small.repeat(4, axis=1).repeat(4, axis=2)
    # Membranes are the label boundaries, found at quarter resolution: 4 voxels (16 nm) thick
    # at full resolution, about what real EM shows at 4 nm.
    edge = np.zeros(small.shape, bool)
    edge[:, 1:, :] |= small[:, 1:, :] != small[:, :-1, :]
    edge[:, :, 1:] |= small[:, :, 1:] != small[:, :, :-1]
    # each cell gets its own shade, derived from its id
    shade = np.int16(130) + ((small >> np.uint64(9)) % np.uint64(75)).astype(np.int16)
    shade[edge] = 45
    # the blur softens the staircase of the quarter-resolution tessellation
    smooth = _blur3(shade.repeat(4, axis=1).repeat(4, axis=2)) // 9
    # uint16: a membrane-probability map, as a boundary classifier would produce: dark is likely
    prob = (np.clip(150 - smooth, 0, 105) * 624).astype(np.uint16)
    image = smooth
    # Grain at half resolution: EM-like texture that still compresses (the demo stays small).
    z, y, x = image.shape
    grain = rng.integers(-3, 4, (z, y // 2, 1, x // 2, 1), dtype=np.int16)
    image += np.broadcast_to(grain, (z, y // 2, 2, x // 2, 2)).reshape(image.shape)
    em = np.clip(image, 0, 255).astype(np.uint8)
    return DemoVolumes(em=em, seg=seg, prob=prob)


def downsample(array: np.ndarray) -> np.ndarray:
    """The next level of a Z,Y,X array: 2×2 in x and y (the mean for images; the top-left
    voxel for labels, which must stay ids that exist)."""
    if array.dtype == np.uint64:
        return np.ascontiguousarray(array[:, ::2, ::2])
    z, y, x = array.shape
    blocks = array.reshape(z, y // 2, 2, x // 2, 2).astype(np.uint32)
    mean: np.ndarray = ((blocks.sum(axis=(2, 4)) + 2) // 4).astype(array.dtype)
    return mean


def pyramid(array: np.ndarray, levels: int = DEMO_LEVELS) -> list[np.ndarray]:
    out = [array]
    while len(out) < levels:
        out.append(downsample(out[-1]))
    return out


def _write_ome_zarr(path: Path, levels: list[np.ndarray]) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets: list[dict[str, Any]] = []
    for level, data in enumerate(levels):
        compressor = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
        array = group.create_array(
            str(level),
            shape=data.shape,
            chunks=(CHUNK_XYZ[2], CHUNK_XYZ[1], CHUNK_XYZ[0]),
            dtype=data.dtype,
            compressors=[compressor],
            dimension_names=("z", "y", "x"),
        )
        array[...] = data
        scale = [DEMO_VOXEL_SIZE[2], DEMO_VOXEL_SIZE[1] * 2**level, DEMO_VOXEL_SIZE[0] * 2**level]
        datasets.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": path.stem,
                "axes": [
                    {"name": "z", "type": "space", "unit": "nanometer"},
                    {"name": "y", "type": "space", "unit": "nanometer"},
                    {"name": "x", "type": "space", "unit": "nanometer"},
                ],
                "datasets": datasets,
            }
        ],
    }


def _write_precomputed(path: Path, levels: list[np.ndarray]) -> None:
    from cloudvolume import CloudVolume

    dtype = levels[0].dtype
    segmentation = dtype == np.uint64
    z, y, x = levels[0].shape
    info: dict[str, Any] = CloudVolume.create_new_info(
        num_channels=1,
        layer_type="segmentation" if segmentation else "image",
        data_type=dtype.name,
        encoding="compressed_segmentation" if segmentation else "raw",
        resolution=list(DEMO_VOXEL_SIZE),
        voxel_offset=[0, 0, 0],
        volume_size=[x, y, z],
        chunk_size=list(CHUNK_XYZ),
    )
    url = path.resolve().as_uri()
    volume = CloudVolume(url, info=info, progress=False)
    for _ in range(1, len(levels)):
        volume.add_scale((2 ** len(volume.info["scales"]), 2 ** len(volume.info["scales"]), 1),
                         chunk_size=list(CHUNK_XYZ))
    volume.commit_info()
    for level, data in enumerate(levels):
        compress = None if segmentation else "gzip"  # compressed_segmentation is small already
        writer = CloudVolume(url, mip=level, progress=False, compress=compress)
        writer[:, :, :] = data.transpose(2, 1, 0)[..., np.newaxis]


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: set it straight back
    os.umask(mask)
    return mask


def ensure_demo(root: Path | None = None) -> Path:
    """The demo directory under ``root``, generating it first if it is not there yet."""
    root = root or default_demo_dir()
    final = root / DEMO_VERSION
    if (final / "COMPLETE").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log.warning("generating the demo dataset in %s (first run only)...", final)
    work = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=root))
    try:
        volumes = generate()
        for name in DEMO_CHANNELS:
            levels = pyramid(volumes.channel(name))
            _write_ome_zarr(work / f"{name}.ome.zarr", levels)
            if name in PRECOMPUTED_CHANNELS:
                _write_precomputed(work / "precomputed" / name, levels)
        (work / "COMPLETE").write_text(DEMO_VERSION + "\n")
        # mkdtemp made the work directory private (0700); the published one is as readable as
        # any directory this user makes (a container's non-root user must read what root baked)
        work.chmod(0o777 & ~_umask())
        try:
            work.rename(final)
        except OSError:
            if not (final / "COMPLETE").exists():  # not a concurrent first run that won
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.warning("demo dataset ready in %.1f s", time.monotonic() - started)
    return final


def demo_sources(directory: Path) -> list[dict[str, Any]]:
    """The ``sources:`` that serve the demo as ``demo/synthetic/{em,seg,em16}``."""
    sources = []
    for name, (dtype, kind, what) in DEMO_CHANNELS.items():
        url = (
            (directory / f"{name}.ome.zarr").as_uri()
            if kind == "zarr"
            else (directory / "precomputed" / name).as_uri()
        )
        sources.append(
            {
                "collection": "demo",
                "experiment": "synthetic",
                "channel": name,
                "kind": kind,
                "url": url,
                "description": f"{what} ({dtype})",
            }
        )
    return sources
