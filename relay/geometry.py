"""Boxes and vectors.

The one convention, said once: a ``Box`` is half-open ``[start, stop)`` in x, y, z (the order of
a BossDB URL), and every array is Z, Y, X in C order (the order of the BossDB wire format).
``Box.zyx_slices`` is the only place the two orders meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Box", "Vec3"]


class Vec3(NamedTuple):
    x: int
    y: int
    z: int

    # Element-wise, unlike tuple concatenation: a Vec3 is a point, not a sequence.
    def __add__(self, other: tuple[int, int, int]) -> Vec3:  # type: ignore[override]
        return Vec3(self.x + other[0], self.y + other[1], self.z + other[2])

    def __sub__(self, other: tuple[int, int, int]) -> Vec3:
        return Vec3(self.x - other[0], self.y - other[1], self.z - other[2])

    def prod(self) -> int:
        return self.x * self.y * self.z


@dataclass(frozen=True, slots=True)
class Box:
    start: Vec3
    stop: Vec3

    @classmethod
    def of(cls, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Box:
        return cls(Vec3(*start), Vec3(*stop))

    @property
    def size(self) -> Vec3:
        return self.stop - self.start

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        s = self.size
        return (s.z, s.y, s.x)

    @property
    def voxels(self) -> int:
        return self.size.prod()

    # is_empty and intersect run several times per cuboid of every request: spelled out per
    # axis, they cost a third of the generator versions.
    def is_empty(self) -> bool:
        a, b = self.start, self.stop
        return a.x >= b.x or a.y >= b.y or a.z >= b.z

    def contains(self, other: Box) -> bool:
        return all(s <= o for s, o in zip(self.start, other.start, strict=True)) and all(
            o <= s for s, o in zip(self.stop, other.stop, strict=True)
        )

    def intersect(self, other: Box) -> Box | None:
        a, b, c, d = self.start, other.start, self.stop, other.stop
        start = Vec3(max(a.x, b.x), max(a.y, b.y), max(a.z, b.z))
        stop = Vec3(min(c.x, d.x), min(c.y, d.y), min(c.z, d.z))
        box = Box(start, stop)
        return None if box.is_empty() else box

    def zyx_slices(self, origin: Vec3 | None = None) -> tuple[slice, slice, slice]:
        """Slices that select this box from a Z,Y,X array whose [0,0,0] sits at ``origin``."""
        o = origin or Vec3(0, 0, 0)
        return (
            slice(self.start.z - o.z, self.stop.z - o.z),
            slice(self.start.y - o.y, self.stop.y - o.y),
            slice(self.start.x - o.x, self.stop.x - o.x),
        )

    def __str__(self) -> str:
        return "/".join(f"{a}:{b}" for a, b in zip(self.start, self.stop, strict=True))
