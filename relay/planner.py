"""Box → aligned cuboids. Pure functions, property-tested in tests/test_planner.py.

A channel level has a cuboid grid (``cuboid`` voxels per cell, cells aligned to ``origin``) and
``bounds``. A request box is covered by every grid cell it touches; each cell is clipped to the
bounds (edge cuboids are clipped, never dropped), and carries the two slices that move its
overlap with the request from the cuboid array into the output array.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from .geometry import Box, Vec3

__all__ = ["CuboidPlan", "count_cells", "cuboid_box", "exact_cuboid", "plan"]


@dataclass(frozen=True, slots=True)
class CuboidPlan:
    index: Vec3                             # grid cell, counted from the grid origin
    box: Box                                # the cell clipped to the bounds: what is fetched
    src: tuple[slice, slice, slice]         # Z,Y,X slices into the cuboid array
    dst: tuple[slice, slice, slice]         # Z,Y,X slices into the output array


def cuboid_box(index: Vec3, cuboid: Vec3, origin: Vec3, bounds: Box) -> Box | None:
    """The grid cell ``index`` clipped to ``bounds`` (None when the cell lies outside)."""
    start = Vec3(*(o + i * c for o, i, c in zip(origin, index, cuboid, strict=True)))
    return Box(start, start + cuboid).intersect(bounds)


def _cells(lo: int, hi: int, origin: int, size: int) -> range:
    # floor division for the first cell and ceiling for the last: a partial trailing cuboid is
    # covered (bossphorus-rs used floor for both ends and served zeros there).
    return range((lo - origin) // size, -((origin - hi) // size))


def count_cells(request: Box, cuboid: Vec3, origin: Vec3, bounds: Box) -> int:
    """How many cuboids ``plan`` would yield, without enumerating them."""
    inside = request.intersect(bounds)
    if inside is None:
        return 0
    count = 1
    for a in range(3):
        count *= len(_cells(inside.start[a], inside.stop[a], origin[a], cuboid[a]))
    return count


def exact_cuboid(request: Box, cuboid: Vec3, origin: Vec3, bounds: Box) -> CuboidPlan | None:
    """The plan of ``request`` when it is exactly one grid cell (clipped to the bounds), else
    None: what ``plan`` would yield alone, found without enumerating (the hot path of every
    aligned read)."""
    # The cell holding the request's first voxel; the request need not start on a grid line,
    # since a cell may be clipped at its start by bounds that do not.
    index = Vec3(*((start - o) // size
                   for start, o, size in zip(request.start, origin, cuboid, strict=True)))
    if cuboid_box(index, cuboid, origin, bounds) != request:
        return None
    whole = request.zyx_slices(request.start)
    return CuboidPlan(index=index, box=request, src=whole, dst=whole)


def plan(request: Box, cuboid: Vec3, origin: Vec3, bounds: Box) -> Iterator[CuboidPlan]:
    """Cover the part of ``request`` inside ``bounds``; the rest of the output stays fill."""
    inside = request.intersect(bounds)
    if inside is None:
        return
    # Each axis on its own (a cell's extent, its slices), then their product: boxes are
    # intersected per axis instead of per cell, which was most of a small cutout's planning.
    axes = [_axis(inside.start[a], inside.stop[a], origin[a], cuboid[a], bounds.start[a],
                  bounds.stop[a], request.start[a]) for a in range(3)]
    for (ix, x0, x1, sx, dx), (iy, y0, y1, sy, dy), (iz, z0, z1, sz, dz) in itertools.product(
            *axes):
        yield CuboidPlan(index=Vec3(ix, iy, iz), box=Box(Vec3(x0, y0, z0), Vec3(x1, y1, z1)),
                         src=(sz, sy, sx), dst=(dz, dy, dx))


def _axis(lo: int, hi: int, origin: int, size: int, bound_lo: int, bound_hi: int,
          request_lo: int) -> list[tuple[int, int, int, slice, slice]]:
    """Along one axis, for each cell the part ``[lo, hi)`` of the request (inside the bounds)
    touches: its index, its extent clipped to the bounds, and the slices that move its
    overlap with the request out of the cuboid and into the output."""
    cells = []
    for i in _cells(lo, hi, origin, size):
        start = max(origin + i * size, bound_lo)
        stop = min(origin + (i + 1) * size, bound_hi)
        a, b = max(start, lo), min(stop, hi)
        cells.append((i, start, stop, slice(a - start, b - start),
                      slice(a - request_lo, b - request_lo)))
    return cells
