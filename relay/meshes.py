"""Meshes of segmentation in neuroglancer's legacy precomputed format: made by the relay with
zmesh from the cuboids it serves, or passed through from a store that has its own.

A made mesh is split into fragments, one per *mesh cell*: a cuboid of the channel's grid at the
mesh level (``mesh_level``; by default the finest level whose grid has at most ``MESH_CELLS``
cuboids, so a derived level of a large volume). A fragment is zmesh's marching cubes of the
segment's mask over its cell plus one voxel on each high side (so neighbouring fragments meet
without a gap), simplified to within half a voxel, in the channel's physical coordinates
(nanometres, the voxel corner at ``index × resolution``, as neuroglancer places voxels).

Which cells hold a segment: the channel's *label index* at the mesh level (``relay.labels``),
the sorted labels of each cell, made the first time a manifest needs it and cached beside the
cuboids (8 bytes a label), kept true by writes and by a source's ``ttl_seconds``. The first
manifest of a channel therefore reads the whole mesh level, at most ``MESH_CELLS`` cuboids;
every later one costs a cache lookup per cell. A fragment is made once and cached; fragments of
a source with ``ttl_seconds`` or ``writable`` are made afresh each time (a cached fragment could
outlive the voxels it was made from).

Every mesh is bounded in memory. zmesh holds about ``FACE_BYTES`` per face of the segment's
voxel surface at its peak (marching cubes, then simplification), so before meshing a fragment
the relay counts those faces (cheap: neighbouring voxels that differ) and refuses a fragment
whose meshing would pass ``server.max_mesh_bytes`` with 413 naming the setting (a one-voxel
checkerboard of two labels makes a 512 × 512 × 16 cell some six GiB of mesh); what it will hold
is reserved from the in-flight budget first. A merged mesh (``/v1/mesh``) is bounded the same
way by the size of its fragments.

zmesh is used only here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import zmesh

from .budget import ByteBudget, Reservation
from .cache.tiered import TieredCache
from .catalog import Channel
from .cutout import CutoutRequest, CutoutService, key_prefix
from .errors import NotFound, RequestTooLarge
from .geometry import Vec3
from .labels import LabelIndex, grown
from .metrics import Metrics
from .offload import offload
from .planner import CuboidPlan, count_cells, cuboid_box, plan
from .singleflight import SingleFlight

__all__ = [
    "FACE_BYTES",
    "MESH_CELLS",
    "MeshName",
    "MeshService",
    "fragment_name",
    "merged",
    "mesh_faces",
    "parse_name",
]

#: The most cells a mesh level may have: the first manifest of a channel reads them all.
MESH_CELLS = 512
#: What zmesh holds at its peak per face of the voxel surface it meshes (measured: 460-490
#: bytes from 190,000 to 3 million faces), with some room
FACE_BYTES = 512
#: What merging fragments holds per byte of them (the meshes decoded, concatenated and
#: consolidated, and the answer)
MERGE_FACTOR = 6

_NANOMETERS = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
_MANIFEST = re.compile(r"([0-9]{1,20}):0")
_FRAGMENT = re.compile(r"([0-9]{1,20}):0:r([0-9]{1,2})" + r"_(-?[0-9]{1,9})" * 3)
#: a stored mesh directory's own file names (legacy manifests and fragments, multi-resolution
#: ``.index`` files): no slash (and no dot-dot, checked apart)
_STORED = re.compile(r"[A-Za-z0-9_:.-]{1,200}")

#: zmesh's simplification: a reduction of up to 10×, within half a voxel of the surface
_REDUCTION = 10


def fragment_name(segid: int, level: int, index: Vec3) -> str:
    return f"{segid}:0:r{level}_{index.x}_{index.y}_{index.z}"


@dataclass(frozen=True, slots=True)
class MeshName:
    """A made mesh's file name: a manifest (``{id}:0``) or a fragment (``cell`` at ``level``)."""

    segid: int
    level: int | None = None
    cell: Vec3 | None = None


def parse_name(name: str) -> MeshName:
    """``name`` parsed, or NotFound (background, 0, has no mesh; ids are 64-bit)."""
    match = _MANIFEST.fullmatch(name) or _FRAGMENT.fullmatch(name)
    if match is None or not 0 < int(match[1]) < 2**64:
        raise NotFound(f"No mesh file {name[:80]}")
    if match.re is _MANIFEST:
        return MeshName(int(match[1]))
    return MeshName(int(match[1]), int(match[2]),
                    Vec3(int(match[3]), int(match[4]), int(match[5])))


def _resolution_nm(channel: Channel, level: int) -> tuple[float, float, float]:
    to_nm = _NANOMETERS.get(channel.info.voxel_unit, 1.0)
    x, y, z = channel.info.levels[level].voxel_size
    return (x * to_nm, y * to_nm, z * to_nm)


def _mask(labels: np.ndarray, segid: int) -> np.ndarray:
    """Where the Z,Y,X ``labels`` are ``segid`` (nowhere when the dtype cannot hold it: a uint8
    annotation has no segment 300)."""
    if segid > np.iinfo(labels.dtype).max:
        return np.zeros(labels.shape, np.bool_)
    return np.asarray(labels == np.asarray(segid, labels.dtype), np.bool_)


def _fragment(mask: np.ndarray, start: Vec3, resolution: tuple[float, float, float]) -> bytes:
    """The precomputed fragment of the Z,Y,X ``mask`` whose first voxel is ``start`` (zero
    vertices when the mask is empty)."""
    if not mask.any():
        return bytes(zmesh.Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32),
                                None).to_precomputed())
    mesher = zmesh.Mesher(resolution)
    # .T: the x, y, z view of the same bytes (Fortran-ordered), what zmesh indexes
    mesher.mesh(mask.view(np.uint8).T)
    mesh = mesher.get(1, normals=False, reduction_factor=_REDUCTION,
                      max_error=min(resolution) / 2, voxel_centered=True)
    mesher.clear()
    # voxel_centered puts voxel i's centre at (i + ½)·r, so surfaces fall on voxel faces; the
    # cell's corner moves the fragment to where the cell is
    mesh.vertices += np.asarray(start, np.float32) * np.asarray(resolution, np.float32)
    return bytes(mesh.to_precomputed())


def mesh_faces(mask: np.ndarray) -> int:
    """The faces of the voxel surface of a Z,Y,X boolean ``mask``: neighbouring voxels that
    differ, on each axis (what marching cubes turns into triangles)."""
    return sum(int(np.count_nonzero(np.diff(mask.view(np.int8), axis=axis)))
               for axis in range(3))


def merged(fragments: list[bytes], segid: int) -> zmesh.Mesh:
    """One mesh of a segment from its fragments, shared vertices fused."""
    meshes = [zmesh.Mesh.from_precomputed(f) for f in fragments]
    meshes = [m for m in meshes if len(m.vertices)]
    if not meshes:
        return zmesh.Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), None,
                          id=segid)
    mesh = zmesh.Mesh.concatenate(*meshes, id=segid).consolidate()
    return mesh


class MeshService:
    """Manifests and fragments of a segmentation channel, made or passed through."""

    def __init__(self, cutouts: CutoutService, cache: TieredCache | None, metrics: Metrics,
                 labels: LabelIndex, budget: ByteBudget, max_mesh_bytes: int) -> None:
        self.cutouts = cutouts
        self.cache = cache
        self.metrics = metrics
        self.labels = labels
        self.budget = budget
        self.max_mesh_bytes = max_mesh_bytes
        self.flights: SingleFlight[str, bytes] = SingleFlight()

    def level(self, channel: Channel) -> int:
        """The mesh level: the configured one, else the finest whose grid is small enough."""
        levels = channel.info.levels
        configured = channel.source.mesh_level
        if configured is not None:
            return min(configured, len(levels) - 1)
        for r, level in enumerate(levels):
            if count_cells(level.bounds, level.cuboid, level.origin, level.bounds) <= MESH_CELLS:
                return r
        return len(levels) - 1

    async def stored(self, channel: Channel) -> bool:
        """Does the store have meshes of its own (which are then served as they are)?"""
        return await channel.upstream.mesh_directory(channel.ref) is not None

    async def file(self, channel: Channel, name: str, token: str | None) -> bytes:
        """The file ``name`` of the channel's mesh directory: a store's own file as it is
        (``info`` included), or a manifest or fragment the relay makes."""
        if await self.stored(channel):
            return await self._stored_file(channel, name)
        parsed = parse_name(name)
        if parsed.cell is None or parsed.level is None:
            return await self.manifest(channel, parsed.segid, token)
        return await self.fragment(channel, parsed.segid, parsed.level, parsed.cell, token)

    async def _stored_file(self, channel: Channel, name: str) -> bytes:
        if not _STORED.fullmatch(name) or ".." in name:
            raise NotFound(f"No mesh file {name[:80]}")

        async def fetch() -> bytes:
            body = await channel.upstream.mesh_file(channel.ref, name)
            if body is None:
                raise NotFound(f"The store has no mesh file {name[:80]}")
            self.metrics.inc("mesh_files_passed_total")
            return body

        return await self._cached(channel, f"{key_prefix(channel, 0)}/mesh/stored/{name}", fetch)

    async def manifest(self, channel: Channel, segid: int, token: str | None) -> bytes:
        level = self.level(channel)
        grid = channel.info.levels[level]
        count = count_cells(grid.bounds, grid.cuboid, grid.origin, grid.bounds)
        if count > MESH_CELLS:
            raise RequestTooLarge(
                f"Mesh level {level} of this channel has {count} cells (at most "
                f"{MESH_CELLS}); set the source's mesh_level to a coarser level")
        cells = list(plan(grid.bounds, grid.cuboid, grid.origin, grid.bounds))
        limit = asyncio.Semaphore(4)

        async def holds(cell: CuboidPlan) -> bool:
            async with limit:
                labels = await self.labels.cell(channel, level, cell, token)
            i = int(np.searchsorted(labels, np.uint64(segid)))
            return i < len(labels) and int(labels[i]) == segid

        found = await asyncio.gather(*(holds(cell) for cell in cells))
        names = [fragment_name(segid, level, cell.index)
                 for cell, hit in zip(cells, found, strict=True) if hit]
        if not names:
            raise NotFound(f"Segment {segid} is not in this channel")
        self.metrics.inc("mesh_manifests_total")
        return json.dumps({"fragments": names}).encode()

    async def fragment(self, channel: Channel, segid: int, level: int, index: Vec3,
                       token: str | None) -> bytes:
        if level != self.level(channel):
            raise NotFound(f"No mesh fragments at level {level}")
        grid = channel.info.levels[level]
        cell = cuboid_box(index, grid.cuboid, grid.origin, grid.bounds)
        if cell is None:
            raise NotFound(f"No mesh cell {index.x}_{index.y}_{index.z}")
        key = (f"{key_prefix(channel, level, token)}/mesh/{grid.cuboid.x}x{grid.cuboid.y}x"
               f"{grid.cuboid.z}/{index.x}_{index.y}_{index.z}/{segid}")

        async def make() -> bytes:
            box = grown(cell, grid.bounds)
            nbytes = box.voxels * channel.info.dtype.itemsize
            # the voxels, their padded copy and its mask, and any derived cuboids made for them
            reservation = await self._reserve(
                2 * nbytes + box.voxels + CutoutService.working_bytes(channel, level, box))
            try:
                # time 0, as the label index its manifests come from
                read = await self.cutouts.read_cutout(CutoutRequest(channel, level, box,
                                                                    times=range(1),
                                                                    token=token))
                # a face on the volume's own boundary has no neighbour cell to make it: one
                # voxel of background beyond that boundary closes the surface there
                low = Vec3(*(int(c == b) for c, b in zip(cell.start, grid.bounds.start,
                                                         strict=True)))
                high = Vec3(*(int(g == b) for g, b in zip(box.stop, grid.bounds.stop,
                                                          strict=True)))
                voxels = np.pad(read.voxels[0], ((low.z, high.z), (low.y, high.y),
                                                 (low.x, high.x)))
                del read
                mask = await offload(_mask, voxels, segid, nbytes=voxels.nbytes)
                del voxels
                faces = await offload(mesh_faces, mask, nbytes=mask.nbytes)
            finally:
                reservation.release()
            meshing = faces * FACE_BYTES
            if meshing > self.max_mesh_bytes:
                raise RequestTooLarge(
                    f"Segment {segid}'s surface in mesh cell {index.x}_{index.y}_{index.z} "
                    f"has {faces} voxel faces: meshing it would take about "
                    f"{meshing // 2**20} MiB, past server.max_mesh_bytes "
                    f"({self.max_mesh_bytes // 2**20} MiB)")
            # one reservation for what is held from here on (asked while holding none: a
            # second one asked beside the first could wait for the first for ever)
            reservation = await self._reserve(mask.nbytes + meshing)
            try:
                self.metrics.inc("mesh_fragments_made_total")
                return await offload(_fragment, mask, box.start - low,
                                     _resolution_nm(channel, level), nbytes=mask.nbytes)
            finally:
                reservation.release()

        return await self._cached(channel, key, make)

    async def mesh(self, channel: Channel, segid: int, token: str | None) -> zmesh.Mesh:
        """The whole mesh of a segment, its fragments merged (413 past
        ``server.max_mesh_bytes``)."""
        if await self.stored(channel):
            manifest = json.loads(await self._stored_file(channel, f"{segid}:0"))
            names = manifest["fragments"]
            fetch = functools.partial(self._stored_file, channel)
        else:
            manifest = json.loads(await self.manifest(channel, segid, token))
            names = manifest["fragments"]
            fetch = functools.partial(self.file, channel, token=token)
        fragments: list[bytes] = []
        held = 0
        for name in names:
            fragments.append(await fetch(name))
            held += len(fragments[-1])
            if held * MERGE_FACTOR > self.max_mesh_bytes:
                raise RequestTooLarge(
                    f"Segment {segid}'s mesh is past {held // 2**20} MiB of fragments: merging "
                    f"it would pass server.max_mesh_bytes ({self.max_mesh_bytes // 2**20} "
                    "MiB); read its fragments from the precomputed mesh route instead")
        reservation = await self._reserve(held * MERGE_FACTOR)
        try:
            return await offload(merged, fragments, segid, nbytes=held)
        finally:
            reservation.release()

    async def _reserve(self, nbytes: int) -> Reservation:
        return self.budget.try_reserve(nbytes) or await self.budget.reserve(nbytes)

    async def _cached(self, channel: Channel, key: str,
                      make: Callable[[], Awaitable[bytes]]) -> bytes:
        """``make()``'s bytes, cached under ``key`` (single-flight; not cached for a source
        whose data may change)."""
        source = channel.source
        cacheable = (self.cache is not None and source.cache and source.ttl_seconds is None
                     and not source.writable)

        async def load() -> bytes:
            if cacheable:
                assert self.cache is not None
                held = await self.cache.get(key)
                if held is not None:
                    return held
            made = await make()
            if cacheable:
                assert self.cache is not None
                await self.cache.put(key, made)
            return made

        return await self.flights.do(key, load)
