"""``relay warm URL C/E/CH``: read a region through a running relay, cuboid by cuboid, so that
it lands in that relay's memory, disk and shared tiers (and those of every relay it reads from)
before it is needed — "warm this region before my flight".

The region (``--box``, default the whole level) is planned on the channel's cuboid grid as the
relay reports it (``/v1/downsample``: each level's extent and cuboid size), so each request is
exactly one cached cuboid. A second run over the same region reads nothing upstream: every
cuboid is already warm, which is also what makes an interrupted run resumable (Ctrl-C stops
at once, prints what was done, and exits 130; the cuboids in flight then are abandoned by the
relay with their only client, and read by the next run). Errors do not stop the run: they are
counted, the first few are shown, and the exit status is 1. On a terminal the progress is a bar
(cuboids done of total, MB/s, time left); otherwise a plain line every few seconds.

With ``--index`` (annotation channels) each cuboid is asked for as the ids of its box instead
(``/v1/ids/…``): the relay reads it into its caches as above and also builds the cuboid's
label index entry, so bounding boxes and the ids of large regions are warm too
(docs/objects.md).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from .errors import RelayError
from .geometry import Box, Vec3
from .progress import Tally, progress
from .upstreams.http import HttpPool, HttpSettings, json_body

__all__ = ["WarmPlan", "parse_box", "plan_warm", "warm"]

_RANGE = re.compile(r"\s*(-?[0-9]+)\s*:\s*(-?[0-9]+)\s*")
#: errors shown as they happen; the rest are only counted
_SHOWN_ERRORS = 5


def parse_box(text: str) -> Box:
    """``x0:x1,y0:y1,z0:z1`` (half-open, in the resolution's voxels) as a Box."""
    parts = text.split(",")
    matches = [_RANGE.fullmatch(part) for part in parts]
    if len(parts) != 3 or any(m is None for m in matches):
        raise ValueError(f"--box {text!r}: expected x0:x1,y0:y1,z0:z1")
    (x0, x1), (y0, y1), (z0, z1) = ((int(m[1]), int(m[2])) for m in matches if m)
    box = Box(Vec3(x0, y0, z0), Vec3(x1, y1, z1))
    if box.is_empty():
        raise ValueError(f"--box {text!r} is empty (each range is start:stop, start < stop)")
    return box


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """The cuboids to read: the region (inside the level) cut on the cuboid grid."""

    region: Box
    cuboid: Vec3

    def boxes(self) -> Iterator[Box]:
        r, c = self.region, self.cuboid
        starts = [range(r.start[a] - r.start[a] % c[a], r.stop[a], c[a]) for a in range(3)]
        for z, y, x in itertools.product(starts[2], starts[1], starts[0]):
            cell = Box(Vec3(x, y, z), Vec3(x + c.x, y + c.y, z + c.z)).intersect(r)
            if cell is not None:
                yield cell

    @property
    def count(self) -> int:
        n = 1
        for a in range(3):
            first = self.region.start[a] - self.region.start[a] % self.cuboid[a]
            n *= -(-(self.region.stop[a] - first) // self.cuboid[a])
        return n


def plan_warm(downsample: dict[str, Any], frame: dict[str, Any], res: int,
              box: Box | None) -> WarmPlan:
    """The plan for level ``res`` of a channel described by BossDB's downsample and
    coordinate-frame JSON (the relay's own, or BossDB's)."""
    key = str(res)
    if key not in downsample.get("extent", {}):
        levels = downsample.get("num_hierarchy_levels", 1)
        raise ValueError(f"--res {res}: the channel has resolutions 0 to {levels - 1}")
    stop = Vec3(*(int(v) for v in downsample["extent"][key]))
    cuboid = Vec3(*(int(v) for v in downsample.get("cuboid_size", {}).get(key, (512, 512, 16))))
    scale = [round(downsample["voxel_size"][key][a] / downsample["voxel_size"]["0"][a])
             for a in range(3)]
    start = Vec3(*(int(frame[f"{axis}_start"]) // max(1, s)
                   for axis, s in zip("xyz", scale, strict=True)))
    level = Box(start, stop)
    region = level if box is None else box.intersect(level)
    if region is None:
        raise ValueError(f"--box {box} lies outside resolution {res} ({level})")
    return WarmPlan(region, cuboid)


async def warm(url: str, channel: str, res: int = 0, box: Box | None = None,
               concurrency: int = 4, token: str | None = None, out: TextIO = sys.stderr,
               bar: bool | None = None, index: bool = False) -> int:
    """Warm the region (and with ``index`` its label index); the process's exit status (0, 1
    on errors)."""
    collection, experiment, name = channel.split("/")
    base = url.rstrip("/")
    pool = HttpPool()
    settings = HttpSettings(connect=5, read=120, total=600, retries=3)
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        where = f"relay at {base}"
        downsample = json_body(await pool.get(
            f"{base}/v1/downsample/{collection}/{experiment}/{name}/", settings, where=where,
            headers=headers), where)
        experiment_json = json_body(await pool.get(
            f"{base}/v1/collection/{collection}/experiment/{experiment}/", settings,
            where=where, headers=headers), where)
        frame = json_body(await pool.get(f"{base}/v1/coord/{experiment_json['coord_frame']}/",
                                         settings, where=where, headers=headers), where)
        plan = plan_warm(downsample, frame, res, box)
        tally = Tally(plan.count, "cuboids")
        print(f"relay warm: {plan.count} cuboids of {plan.cuboid.x}×{plan.cuboid.y}×"
              f"{plan.cuboid.z} at resolution {res} in {plan.region}"
              f"{', with their label index' if index else ''}", file=out)
        boxes = plan.boxes()
        service = "ids" if index else "cutout"
        cutout = f"{base}/v1/{service}/{collection}/{experiment}/{name}/{res}"
        wanted = {**headers, "Accept": "application/json" if index else "application/blosc"}

        async def worker() -> None:
            for cell in boxes:  # shared: each worker takes the next cuboid
                try:
                    reply = await pool.get(f"{cutout}/{cell}/", settings, where=where,
                                           headers=wanted, max_bytes=cell.voxels * 8 + 65536)
                except RelayError as exc:
                    tally.failed += 1
                    if tally.failed <= _SHOWN_ERRORS:
                        print(f"relay warm: {cell}: {exc.status} {exc.message}", file=out)
                    continue
                tally.done += 1
                tally.nbytes += len(reply.content)

        try:
            async with progress(tally, "warming", out, bar):
                await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
            print(f"relay warm: interrupted after {tally.done} of {tally.total} cuboids; run "
                  "it again to go on (what is warm costs nothing upstream)", file=out)
            raise
    finally:
        await pool.aclose()
    print(f"relay warm: {tally.done} of {tally.total} cuboids warm "
          f"({tally.nbytes / 1e6:.1f} MB in {tally.seconds:.1f} s, {tally.rate:.1f} MB/s); "
          f"{tally.failed} error(s)", file=out)
    return 1 if tally.failed else 0
