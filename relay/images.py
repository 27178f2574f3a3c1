"""BossDB's image services: one plane of a channel as a picture (``/v1/image/…``), or one tile
of a plane on a grid of square tiles (``/v1/tile/…``), for a browser or curl.

A plane is read as the cutout of its box is (through the cache, the same size limit and
in-flight budget), then drawn as BossDB draws it (``spdb`` ``imagecube``/``annocube``):
- uint8: grey, the voxels as they are;
- uint16: grey, each voxel's top 8 bits (no windowing);
- uint64 labels: RGBA, each nonzero label a colour of its own (a hash of the id: the same id
  is the same colour in every picture, at every relay), alpha 0 exactly where the label is 0.
``xy`` planes are x wide and y high, ``xz`` x wide and z high, ``yz`` y wide and z high. PNG by
default; JPEG for ``Accept: image/jpeg`` on grey channels (a JPEG has no alpha: a label
picture is PNG only, 400 code 2001).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .codecs import encode_picture
from .errors import DatatypeMismatch, InvalidCutoutArgs
from .geometry import Box, Vec3

__all__ = ["ORIENTATIONS", "Orientation", "picture", "picture_media", "tile_box"]

Orientation = Literal["xy", "xz", "yz"]
ORIENTATIONS: tuple[Orientation, ...] = ("xy", "xz", "yz")


def picture_media(accept: str | None, dtype: np.dtype[np.generic]) -> str:
    """``image/png`` unless the client asks for JPEG (and not PNG)."""
    wants = (accept or "").lower()
    if "image/jpeg" in wants and "image/png" not in wants:
        if dtype == np.uint64:
            raise DatatypeMismatch("A label picture is drawn with transparency: JPEG has "
                                   "none, ask for image/png")
        return "image/jpeg"
    return "image/png"


def tile_box(orientation: Orientation, size: int, x: int, y: int, z: int) -> Box:
    """The box of tile (``x``, ``y``, ``z``) of ``size`` pixels a side: the plane's two axes
    are counted in tiles, the third in voxels (BossDB's ``set_tileargs``)."""
    if size < 1:
        raise InvalidCutoutArgs("A tile is at least one pixel a side")
    if orientation == "xy":
        start, extent = Vec3(x * size, y * size, z), Vec3(size, size, 1)
    elif orientation == "xz":
        start, extent = Vec3(x * size, y, z * size), Vec3(size, 1, size)
    else:
        start, extent = Vec3(x, y * size, z * size), Vec3(1, size, size)
    return Box(start, start + extent)


def _colours(labels: np.ndarray) -> np.ndarray:
    """Each label's RGB (uint8, ``labels.shape + (3,)``): a 64-bit mix of the id (splitmix64's
    finaliser), so neighbouring ids differ, with every channel kept above 48 (never black)."""
    mixed = labels.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        mixed ^= mixed >> np.uint64(30)
        mixed *= np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(27)
        mixed *= np.uint64(0x94D049BB133111EB)
        mixed ^= mixed >> np.uint64(31)
    channels = [(mixed >> np.uint64(shift)) & np.uint64(0xFF) for shift in (0, 8, 16)]
    return np.stack([48 + (c * np.uint64(207)) // np.uint64(255) for c in channels],
                    axis=-1).astype(np.uint8)


def picture(voxels: np.ndarray, orientation: Orientation, media: str) -> bytes:
    """The encoded picture of ``voxels`` (Z, Y, X, one voxel thick across the plane)."""
    if orientation == "xy":
        plane = voxels[0]
    elif orientation == "xz":
        plane = voxels[:, 0, :]
    else:
        plane = voxels[:, :, 0]
    if plane.dtype == np.uint8:
        pixels = plane
    elif plane.dtype == np.uint16:
        pixels = (plane >> 8).astype(np.uint8)
    else:
        labels, inverse = np.unique(plane, return_inverse=True)
        rgba = np.zeros((len(labels), 4), np.uint8)
        rgba[:, :3] = _colours(labels)
        rgba[:, 3] = 255
        rgba[labels == 0] = 0  # transparent black
        pixels = rgba[inverse.reshape(plane.shape)]
    return encode_picture(pixels, media)
