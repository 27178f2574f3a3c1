"""The services' workloads (docs/services.md): what the relay computes, against computing the
same thing in process with the same libraries.

  P10 a cold derived-level cuboid (512×512×16 of level 2 of the run's single-scale zarr: made
      from 2048×2048×16 stored voxels) vs reading those voxels with zarr, averaging them with
      numpy and encoding the result, in process
  P11 one segment's mesh, cold (manifest from a fresh label index, every fragment made) and
      warm, vs zmesh on the segment's bounding-box cutout read with zarr, in process
  P14 BossDB's object services (docs/objects.md): the ids of a 1024×1024×64 uint64 region and
      one segment's tight bounding box, cold (a fresh relay: every cuboid read and indexed)
      and warm, vs zarr's read of the region and numpy's unique / nonzero on it, in process
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from typing import Any

import blosc
import numpy as np
import zarr
import zmesh

from bench.harness import Bench, Row, http, timed_get

__all__ = ["p10", "p11", "p14"]


def p10(bench: Bench) -> None:
    z, y, x = bench.mode.shape_zyx
    level = 2 if min(x, y) >= 2048 else 1  # the smoke run's volume has one derived level
    factor = 2 ** level  # 2×2×1 per level
    side = 512 * factor
    slabs = list(range(0, z, 16))[:bench.mode.trials]
    relay_times: list[float] = []
    with ExitStack() as stack:
        relay = bench.start_relay("p10", bench.sources, stack)
        for z0 in slabs:  # each slab's level-2 cuboid is new: every stored voxel read cold
            relay_times.append(timed_get(
                f"{relay.url}/v1/cutout/b/e/u8/{level}/0:512/0:512/{z0}:{z0 + 16}/"))
        if relay.upstream_reads() != len(slabs) * factor * factor:
            raise RuntimeError(f"P10: {relay.upstream_reads()} upstream reads for {len(slabs)}"
                               f" level-{level} cuboids")
    array = zarr.open_array(bench.sources[0]["url"], mode="r")
    direct_times: list[float] = []
    for z0 in slabs:
        started = time.perf_counter()
        voxels = np.asarray(array[z0:z0 + 16, :side, :side])
        blocks = voxels.reshape(16, 512, factor, 512, factor).sum(axis=(2, 4), dtype=np.uint32)
        mean = ((blocks + factor * factor // 2) // (factor * factor)).astype(np.uint8)
        blosc.compress(np.ascontiguousarray(mean), typesize=1, clevel=5, cname="lz4")
        direct_times.append(time.perf_counter() - started)
    relay_s, direct_s = statistics.median(relay_times), statistics.median(direct_times)
    bench.report.rows.append(Row(
        f"P10 cold derived level-{level} 512×512×16 cuboid", f"{relay_s * 1e3:.0f} ms",
        f"zarr read + numpy mean + blosc {direct_s * 1e3:.0f} ms", relay_s / direct_s,
        "≤ 2 (time)", relay_s / direct_s <= 2,
        detail=f"{len(slabs)} cuboids, each from {factor * factor} stored ones"))


def _labels(shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Background blocks of ids and one ball-like segment (id 7) across several cells."""
    z, y, x = shape_zyx
    zz, yy, xx = np.ogrid[0:z, 0:y, 0:x]
    labels = (100 + (zz // 16) * 1000 + (yy // 128) * 10 + xx // 128).astype(np.uint64)
    cy, cx, cz = y // 2, x // 2, z // 2
    radius = min(y, x) // 5
    ball = ((yy - cy) ** 2 + (xx - cx) ** 2 + ((zz - cz) * 8) ** 2) < radius ** 2
    labels[ball] = 7
    box = (slice(0, z), slice(cy - radius, cy + radius + 1), slice(cx - radius, cx + radius + 1))
    return labels, box


def _label_store(bench: Bench, name: str) -> tuple[Any, dict[str, Any], tuple[slice, ...],
                                                   tuple[int, int, int]]:
    """``_labels`` of a quarter of the run's volume in a uint64 zarr: the array, its source,
    the segment's box and the shape (Z, Y, X)."""
    z, y, x = bench.mode.shape_zyx
    shape = (z, y // 2, x // 2)
    labels, box = _labels(shape)
    path = bench.root / f"{name}-seg.zarr"
    array = zarr.create_array(str(path), shape=shape, chunks=(16, 512, 512), dtype=np.uint64,
                              fill_value=0, zarr_format=3)
    array[...] = labels
    source = {"collection": "b", "experiment": "e", "channel": "seg", "kind": "zarr",
              "url": str(path), "voxel_size": [4, 4, 40], "type": "annotation"}
    return array, source, box, shape


def p11(bench: Bench) -> None:
    array, source, box, shape = _label_store(bench, "p11")
    route = "/v1/mesh/b/e/seg/7/?format=precomputed"
    cold: list[float] = []
    warm: list[float] = []
    for trial in range(bench.mode.trials):
        with ExitStack() as stack:
            relay = bench.start_relay(f"p11-{trial}", [source], stack)
            cold.append(_timed(relay.url + route))
            warm.append(statistics.median(_timed(relay.url + route) for _ in range(3)))
    direct: list[float] = []
    for _ in range(bench.mode.trials):
        started = time.perf_counter()
        cutout = np.asarray(array[box]) == 7
        mesher = zmesh.Mesher((4, 4, 40))
        mesher.mesh(cutout.view(np.uint8).T)
        mesher.get(1, normals=False, reduction_factor=10, max_error=2,
                   voxel_centered=True).to_precomputed()
        direct.append(time.perf_counter() - started)
    cold_s, warm_s, direct_s = (statistics.median(t) for t in (cold, warm, direct))
    comparator = f"zarr cutout + zmesh in process {direct_s * 1e3:.0f} ms"
    bench.report.rows.append(Row(
        "P11 mesh of one segment, cold", f"{cold_s * 1e3:.0f} ms", comparator, cold_s / direct_s,
        "≤ 5 (time)", cold_s / direct_s <= 5,
        detail=f"{shape[2]}×{shape[1]}×{shape[0]} uint64, a fresh relay each time"))
    bench.report.rows.append(Row(
        "P11 mesh of one segment, warm", f"{warm_s * 1e3:.0f} ms", comparator, warm_s / direct_s,
        "≤ 0.5 (time)", warm_s / direct_s <= 0.5))


def p14(bench: Bench) -> None:
    array, source, _, shape = _label_store(bench, "p14")
    region = f"0:{shape[2]}/0:{shape[1]}/0:{shape[0]}"
    routes = {"ids": f"/v1/ids/b/e/seg/0/{region}/",
              "box": "/v1/boundingbox/b/e/seg/0/7/?type=tight"}
    cold: dict[str, list[float]] = {name: [] for name in routes}
    warm: dict[str, list[float]] = {name: [] for name in routes}
    for trial in range(bench.mode.trials):
        for name, route in routes.items():
            with ExitStack() as stack:  # a fresh relay: nothing cached, nothing indexed
                relay = bench.start_relay(f"p14-{name}-{trial}", [source], stack)
                cold[name].append(_timed(relay.url + route))
                warm[name].append(statistics.median(_timed(relay.url + route)
                                                    for _ in range(3)))
    direct: dict[str, list[float]] = {"ids": [], "box": []}
    for _ in range(bench.mode.trials):
        started = time.perf_counter()
        found = np.unique(np.asarray(array[...]))
        found = found[found != 0]
        direct["ids"].append(time.perf_counter() - started)
        started = time.perf_counter()
        where = np.nonzero(np.asarray(array[...]) == 7)
        [(int(axis.min()), int(axis.max()) + 1) for axis in where]
        direct["box"].append(time.perf_counter() - started)
    what = {"ids": f"ids of a {shape[2]}×{shape[1]}×{shape[0]} uint64 region",
            "box": "tight bounding box of one segment"}
    numpy = {"ids": "np.unique", "box": "np.nonzero"}
    for name in routes:
        cold_s, warm_s, direct_s = (statistics.median(t[name]) for t in (cold, warm, direct))
        comparator = f"zarr read + {numpy[name]} in process {direct_s * 1e3:.0f} ms"
        bench.report.rows.append(Row(
            f"P14 {what[name]}, cold", f"{cold_s * 1e3:.0f} ms", comparator, cold_s / direct_s,
            "≤ 2 (time)", cold_s / direct_s <= 2,
            detail="a fresh relay each time: every cuboid read and indexed"))
        bench.report.rows.append(Row(
            f"P14 {what[name]}, warm", f"{warm_s * 1e3:.0f} ms", comparator, warm_s / direct_s,
            "≤ 0.1 (time)", warm_s / direct_s <= 0.1))


def _timed(url: str) -> float:
    started = time.perf_counter()
    response = http.get(url, timeout=600)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
    return elapsed
