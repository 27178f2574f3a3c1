"""Side-by-side benchmarks of the relay and what users would run instead, in one run.

    python bench/run.py [--smoke] [--out docs/benchmarks.md] [--only P3,P6]

Every workload is measured against its comparator in the same run, on the same machine, and
reported as a ratio (absolute times on a shared 2-core box are noise). Load comes from `wrk`
in its own process (one thread), so the load generator never shares the server's interpreter;
the cold-read workloads use a plain sequential urllib3 client, also timed end to end.

Workloads (issue "Performance"):
  P1 warm aligned 512×512×16 uint8 cuboid, blosc: relay vs raw Starlette vs nginx (same bytes)
  P2 warm unaligned 1000×1000×40 cutouts, blosc and npygz: relay vs loopback single-stream TCP
  P3 cold first-touch reads from a local zarr and a local precomputed store vs reading the same
     boxes directly with zarr / cloud-volume and encoding them
  P4 warm aligned 512×512×16 uint8 cuboids: relay vs the original bossphorus (0.1.0, Flask, in
     its own venv; see bench/bossphorus.py), holding the same voxels
  P5 tiny requests (channel metadata; 64³ cutouts) vs a raw Starlette hello route
  P6 warm and cold through a 2- and 3-relay chain vs one relay
  P7 peak RSS while scanning 10× the memory-tier budget
  Curves: warm cutout size from 64³ to 2048×2048×64 (one client), and 1 → 64 concurrent clients
     on one aligned cuboid (p50/p99 latency, throughput); tables here, PNG plots beside the report.
--smoke runs every workload tiny and once, to keep the harness working; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import psutil
import urllib3
import yaml
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bossphorus  # noqa: E402
from bench.serving import wait_ready  # noqa: E402
from tests.servers import RelayProcess, free_port  # noqa: E402

MiB = 2**20
CUBOID = "/v1/cutout/b/e/u8/0/0:512/0:512/0:16/"

# One client, kept: ``httpx.get`` builds a new client (and its TLS context, about 25 ms) per call.
http = httpx.Client(timeout=120)
# Timed sequential reads go through urllib3 (what requests, and so intern, sit on), used
# directly: it receives a 4 MiB body in about 2 ms where httpx and requests take 5-6 ms, time
# that is the client's, not the server's.
_POOL = urllib3.PoolManager(retries=False, timeout=120)


def timed_get(url: str) -> float:
    """Seconds for one GET of ``url``, body received; fails loudly on anything but 200."""
    started = time.perf_counter()
    response = _POOL.request("GET", url, headers={"Accept": "application/blosc"})
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {url}: {response.status} {response.data[:200]!r}")
    return elapsed


@dataclass(frozen=True)
class Mode:
    smoke: bool
    trials: int
    seconds: int
    shape_zyx: tuple[int, int, int]
    tcp_megabytes: int
    cold_reads: int
    rss_budget: int
    sizes_xyz: tuple[tuple[int, int, int], ...]
    clients: tuple[int, ...]


FULL = Mode(False, 5, 5, (64, 2048, 2048), 1024, 8, 24 * MiB,
            ((64, 64, 64), (128, 128, 64), (256, 256, 64), (512, 512, 64), (1024, 1024, 64),
             (2048, 2048, 64)),
            (1, 2, 4, 8, 16, 32, 64))
SMOKE = Mode(True, 1, 1, (32, 1024, 1024), 32, 2, 4 * MiB, ((64, 64, 32), (512, 512, 32)),
             (1, 4))


@dataclass
class Row:
    workload: str
    relay: str
    comparator: str
    ratio: float
    target: str
    met: bool | None
    detail: str = ""


@dataclass
class Curve:
    """One scaling series: x values and, per x, wrk's figures."""

    title: str
    x_label: str
    points: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)


@dataclass
class Report:
    mode: Mode
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)


# --- measuring ------------------------------------------------------------------------------


def wrk(url: str, mode: Mode, connections: int = 1, accept: str = "application/blosc"
        ) -> dict[str, float]:
    """Requests/s, bytes/s and latency percentiles from wrk; fails loudly on any non-2xx."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{mode.seconds}s", "--latency", "--timeout", "60s",
         "-H", f"Accept: {accept}", url],
        capture_output=True, text=True, timeout=mode.seconds + 60, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"cannot parse wrk output for {pattern!r}:\n{out}")
        value, unit = float(match[1]), match[2] if match.lastindex and match.lastindex > 1 else ""
        scale = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "us": 1e-3, "ms": 1.0,
                 "s": 1e3}
        return value * scale.get(unit, 1)

    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)()"),
        "bytes_per_s": number(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)"),
        "p50_ms": number(r"50%\s+([\d.]+)(us|ms|s)"),
        "p99_ms": number(r"99%\s+([\d.]+)(us|ms|s)"),
    }


def median_of(trials: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(trials))


def _rps(url: str, mode: Mode, connections: int) -> float:
    return wrk(url, mode, connections)["rps"]


def _bytes_per_s(url: str, mode: Mode, accept: str) -> float:
    return wrk(url, mode, 1, accept)["bytes_per_s"]


# --- servers ----------------------------------------------------------------------------------


@contextmanager
def _serving(command: list[str], ready_url: str) -> Iterator[None]:
    """A server subprocess, up (its ``ready_url`` answers 200) for the ``with`` block."""
    process = subprocess.Popen(command)
    try:
        wait_ready(ready_url, process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def raw_starlette(blob: Path) -> Iterator[str]:
    port = free_port()
    with _serving([sys.executable, str(ROOT / "bench" / "raw_server.py"), str(port), str(blob)],
                  f"http://127.0.0.1:{port}/hello"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def nginx(root: Path) -> Iterator[str | None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        yield None
        return
    port = free_port()
    prefix = root / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {root}; default_type application/blosc; }}
    }}
}}
""")
    with _serving([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                   "-g", "daemon off; user root;"], f"http://127.0.0.1:{port}/blob"):
        yield f"http://127.0.0.1:{port}"


def relay_config(path: Path, sources: list[dict[str, Any]], cache: Path, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1"},
        "cache": {"memory_bytes": extra.pop("memory_bytes", 1024 * MiB),
                  "decoded_bytes": extra.pop("decoded_bytes", 256 * MiB),
                  "disk_dir": str(cache), "disk_bytes": 8 * 1024 * MiB},
        "sources": sources,
    }))
    return path


def start_relay(stack: ExitStack, root: Path, name: str, sources: list[dict[str, Any]],
                **extra: Any) -> RelayProcess:
    config = relay_config(root / f"{name}.yaml", sources, root / f"{name}-cache", **extra)
    relay = RelayProcess(["--config", str(config), "--log-level", "warning"],
                         log=root / f"{name}.log")
    return stack.enter_context(relay)


# --- workloads --------------------------------------------------------------------------------


def p1(report: Report, relay: RelayProcess, raw: str, static: str | None) -> None:
    url = relay.url + CUBOID
    http.get(url)  # warm
    mode = report.mode
    relay_rps = median_of(mode.trials, lambda: wrk(url, mode, connections=4)["rps"])
    raw_rps = median_of(mode.trials, lambda: wrk(raw + "/blob", mode, connections=4)["rps"])
    report.rows.append(Row("P1 warm 512×512×16 uint8 blosc", f"{relay_rps:.0f} req/s",
                           f"raw Starlette {raw_rps:.0f} req/s", relay_rps / raw_rps,
                           "≥ 0.9", relay_rps / raw_rps >= 0.9))
    if static is None:
        report.notes.append("P1: nginx is not installed; the nginx comparison was not run.")
        return
    nginx_rps = median_of(mode.trials, lambda: wrk(static + "/blob", mode, connections=4)["rps"])
    report.rows.append(Row("P1 warm 512×512×16 uint8 blosc", f"{relay_rps:.0f} req/s",
                           f"nginx static {nginx_rps:.0f} req/s", relay_rps / nginx_rps,
                           "≥ 1.0", relay_rps / nginx_rps >= 1.0))


def p2(report: Report, relay: RelayProcess) -> None:
    mode = report.mode
    tcp = median_of(mode.trials, lambda: float(subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tcp_limit.py"), str(mode.tcp_megabytes)],
        capture_output=True, text=True, check=True, timeout=300).stdout))
    z, y, x = mode.shape_zyx
    box = f"100:{min(1100, x)}/50:{min(1050, y)}/3:{min(43, z)}/"
    for accept in ("application/blosc", "application/npygz"):
        url = relay.url + "/v1/cutout/b/e/u8/0/" + box
        http.get(url, headers={"Accept": accept})  # warm
        rate = median_of(mode.trials, functools.partial(_bytes_per_s, url, mode, accept))
        report.rows.append(Row(f"P2 warm 1000×1000×40 {accept.split('/')[1]}",
                               f"{rate / MiB:.0f} MiB/s", f"loopback TCP {tcp / MiB:.0f} MiB/s",
                               rate / tcp, "≥ 0.5", rate / tcp >= 0.5))


def write_precomputed(path: Path, data: np.ndarray) -> None:
    """The same voxels as a neuroglancer-precomputed store: raw 512×512×16 chunks."""
    from cloudvolume import CloudVolume

    z, y, x = data.shape
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=[4, 4, 40], voxel_offset=[0, 0, 0], chunk_size=[512, 512, 16],
        volume_size=[x, y, z])
    volume = CloudVolume(f"file://{path}", info=info, compress=False, progress=False)
    volume.commit_info()
    volume[:, :, :] = np.ascontiguousarray(data.transpose(2, 1, 0))


def _direct_reader(kind: str, url: str) -> Callable[[int, int, int], np.ndarray]:
    """Read a 512×512×16 box at (x0, y0, z0) as Z, Y, X with the store's own library."""
    if kind == "zarr":
        array = zarr.open_array(url, mode="r")
        return lambda x0, y0, z0: np.asarray(array[z0:z0 + 16, y0:y0 + 512, x0:x0 + 512])
    from cloudvolume import CloudVolume

    volume = CloudVolume(url, progress=False)
    return lambda x0, y0, z0: np.asarray(
        volume[x0:x0 + 512, y0:y0 + 512, z0:z0 + 16])[..., 0].transpose(2, 1, 0)


def p3(report: Report, root: Path, sources: dict[str, dict[str, Any]]) -> None:
    """First touch of never-read cuboids through a fresh relay, against reading the same
    boxes straight from the store with its own library and encoding them as the relay would.
    Every read is of a cuboid no earlier read touched (the relay caches what it reads)."""
    mode = report.mode
    z, y, x = mode.shape_zyx
    corners = [(bx * 512, by * 512, bz * 16) for bz in range(z // 16)
               for by in range(y // 512) for bx in range(x // 512)]
    per_trial = min(mode.cold_reads, len(corners) // mode.trials)
    for kind, source in sources.items():
        read = _direct_reader(kind, source["url"])
        with ExitStack() as stack:
            relay = start_relay(stack, root, f"p3-{kind}", [source])
            relay_times: list[float] = []
            direct_times: list[float] = []
            picked = corners[:per_trial * mode.trials]
            for x0, y0, z0 in picked:
                url = (f"{relay.url}/v1/cutout/b/e/u8/0/{x0}:{x0 + 512}/{y0}:{y0 + 512}/"
                       f"{z0}:{z0 + 16}/")
                relay_times.append(timed_get(url))
        # after the relay has stopped (its write-behind landed): the direct reads do not share
        # the CPU with the relay's disk writes
        for x0, y0, z0 in picked:
            started = time.perf_counter()
            data = np.ascontiguousarray(read(x0, y0, z0))
            blosc.compress(data, typesize=1, clevel=5, cname="lz4")
            direct_times.append(time.perf_counter() - started)
        relay_s, direct_s = statistics.median(relay_times), statistics.median(direct_times)
        library = "zarr" if kind == "zarr" else "cloud-volume"
        report.rows.append(Row(f"P3 cold 512×512×16 from local {kind}",
                               f"{relay_s * 1e3:.1f} ms",
                               f"{library} read + blosc encode {direct_s * 1e3:.1f} ms",
                               relay_s / direct_s, "≤ 1.3 (time)", relay_s / direct_s <= 1.3,
                               detail=f"{len(relay_times)} first-touch reads"))


def p4(report: Report, relay: RelayProcess, root: Path, data: np.ndarray) -> None:
    """The same warm aligned cuboids from the relay and from bossphorus; and what bossphorus
    gets wrong, recorded rather than benchmarked."""
    mode = report.mode
    python = bossphorus.ensure_venv()
    with bossphorus.serving(python, root / "bossphorus", free_port(),
                            root / "bossphorus.log") as url:
        corners = [(x0, y0, 0) for y0 in (0, 512) for x0 in (0, 512)]
        for x0, y0, z0 in corners:
            bossphorus.upload(url, "b/e/u8", data[z0:z0 + 16, y0:y0 + 512, x0:x0 + 512],
                              (x0, y0, z0))
        wrong = 0
        for x0, y0, z0 in corners:
            path = f"/v1/cutout/b/e/u8/0/{x0}:{x0 + 512}/{y0}:{y0 + 512}/{z0}:{z0 + 16}/"
            got = np.frombuffer(blosc.decompress(http.get(url + path).content),
                                np.uint8).reshape(16, 512, 512)
            wrong += int(np.count_nonzero(got != data[z0:z0 + 16, y0:y0 + 512, x0:x0 + 512]))
        unaligned = http.get(url + "/v1/cutout/b/e/u8/0/100:612/0:512/0:16/")
        relay_rps = median_of(mode.trials, lambda: wrk(relay.url + CUBOID, mode, 4)["rps"])
        old_rps = median_of(mode.trials, lambda: wrk(url + CUBOID, mode, 4)["rps"])
    report.rows.append(Row("P4 warm aligned 512×512×16 uint8", f"{relay_rps:.0f} req/s",
                           f"bossphorus 0.1.0 {old_rps:.0f} req/s", relay_rps / old_rps,
                           "≥ 10", relay_rps / old_rps >= 10))
    total = len(corners) * 512 * 512 * 16
    report.notes.append(
        f"P4: bossphorus returned {wrong} of {total} voxels wrong ({100 * wrong / total:.0f} %) "
        f"for the {len(corners)} aligned cuboids uploaded to it through its own POST route, and "
        f"{unaligned.status_code} for an unaligned cutout (the relay: 0 wrong, 200). Its upload "
        "reshapes the Z,Y,X body as X,Y,Z and stores it under swapped axes, so reads come back "
        "scrambled or as zeros: its req/s is for answers that are mostly wrong.")


def curves(report: Report, relay: RelayProcess) -> None:
    """Warm latency and throughput against cutout size (one client) and client count."""
    mode = report.mode
    # every box is as deep as four cuboids, so each one is assembled (P1 covers the one-cuboid
    # case, which is served as stored)
    size = Curve("warm cutout size, one client (uint8, blosc)", "voxels")
    for x, y, z in mode.sizes_xyz:
        url = relay.url + f"/v1/cutout/b/e/u8/0/0:{x}/0:{y}/0:{z}/"
        http.get(url).raise_for_status()  # warm
        size.points.append((f"{x}×{y}×{z}", x * y * z, wrk(url, mode, 1)))
    clients = Curve("warm aligned 512×512×16 cuboid, concurrent clients", "clients")
    for count in mode.clients:
        clients.points.append((str(count), count, wrk(relay.url + CUBOID, mode, count)))
    report.curves += [size, clients]


def p5(report: Report, relay: RelayProcess, raw: str) -> None:
    mode = report.mode
    hello = median_of(mode.trials, lambda: wrk(raw + "/hello", mode, 8, "*/*")["rps"])
    depth = min(64, mode.shape_zyx[0])
    for label, path in (("channel metadata", "/v1/collection/b/experiment/e/channel/u8/"),
                        ("64³ cutout", f"/v1/cutout/b/e/u8/0/64:128/64:128/0:{depth}/")):
        http.get(relay.url + path)
        rps = median_of(mode.trials, functools.partial(_rps, relay.url + path, mode, 8))
        report.rows.append(Row(f"P5 tiny: {label}", f"{rps:.0f} req/s",
                               f"raw Starlette hello {hello:.0f} req/s", rps / hello, "≥ 0.8",
                               rps / hello >= 0.8))


def p6(report: Report, one: RelayProcess, chain: list[RelayProcess], root: Path,
       sources: list[dict[str, Any]]) -> None:
    mode = report.mode
    for relay in (one, *chain):
        http.get(relay.url + CUBOID)
    single = median_of(mode.trials, lambda: wrk(one.url + CUBOID, mode, 4)["rps"])
    z, y, x = mode.shape_zyx
    for hops, front in ((2, chain[0]), (3, chain[1])):
        rps = median_of(mode.trials, functools.partial(_rps, front.url + CUBOID, mode, 4))
        report.rows.append(Row(f"P6 warm through {hops} relays", f"{rps:.0f} req/s",
                               f"one relay {single:.0f} req/s", rps / single, "≥ 0.9",
                               rps / single >= 0.9))
    # Cold: fresh relays over the store, so nothing a workload before read is cached anywhere
    # (the curves read the whole volume through the first relay); both read the same cuboids.
    cuboids = [(bx, by) for by in range(y // 512) for bx in range(x // 512)]
    picks = cuboids[:min(mode.cold_reads, len(cuboids))]

    def cold(relay: RelayProcess) -> float:
        return statistics.median(
            timed_get(f"{relay.url}/v1/cutout/b/e/u8/0/{bx * 512}:{bx * 512 + 512}/"
                      f"{by * 512}:{by * 512 + 512}/{z - 16}:{z}/")
            for bx, by in picks)

    with ExitStack() as stack:
        one_s = cold(start_relay(stack, root, "p6-one", sources))
    with ExitStack() as stack:
        inner = start_relay(stack, root, "p6-origin", sources)
        for hop in ("p6-hop2", "p6-hop3"):
            inner = start_relay(stack, root, hop, [{"collection": "*", "kind": "boss",
                                                    "url": inner.url}])
        three_s = cold(inner)
    report.rows.append(Row("P6 cold through 3 relays", f"{three_s * 1e3:.1f} ms",
                           f"one relay {one_s * 1e3:.1f} ms", three_s / one_s,
                           "≤ 1.5 (time)", three_s / one_s <= 1.5,
                           detail=f"{len(picks)} first-touch reads each"))


def p7(report: Report, root: Path, sources: list[dict[str, Any]]) -> None:
    mode = report.mode
    budget = mode.rss_budget
    with ExitStack() as stack:
        # the memory budget is split between the tier (packed) and the decoded cuboids
        relay = start_relay(stack, root, "p7", sources, memory_bytes=budget // 2,
                            decoded_bytes=budget // 2)
        process = psutil.Process(relay.process.pid if relay.process else 0)
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                done.wait(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        z, y, x = mode.shape_zyx
        slabs = itertools.cycle([(y0, z0) for z0 in range(0, z, 16) for y0 in range(0, y, 512)])
        scanned = 0
        while scanned < 10 * budget:  # the volume is re-read if it is smaller than 10× budget
            y0, z0 = next(slabs)
            url = f"{relay.url}/v1/cutout/b/e/u8/0/0:{x}/{y0}:{y0 + 512}/{z0}:{z0 + 16}/"
            http.get(url).raise_for_status()
            scanned += x * 512 * 16
        done.set()
        sampler.join()
    growth = peak - baseline
    report.rows.append(Row("P7 peak RSS scanning 10× the memory budget",
                           f"+{growth / MiB:.0f} MiB over start ({peak / MiB:.0f} MiB)",
                           f"budget {budget / MiB:.0f} MiB (memory + decoded) + 250 MiB",
                           growth / (budget + 250 * MiB), "≤ 1.0",
                           growth <= budget + 250 * MiB,
                           detail=f"scanned {scanned / MiB:.0f} MiB"))


# --- report -----------------------------------------------------------------------------------


KEPT = "<!-- written by hand from here on; bench/run.py keeps it when it rewrites the figures -->"


def write_report(report: Report, out: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `{' '.join(sys.argv)}`"
        f" on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "Each figure is the median of "
        f"{report.mode.trials} trial(s); ratios compare numbers taken in the same run. Load: "
        "`wrk -t1` in its own process (P1, P2, P5, P6 warm); a sequential urllib3 client (P3, "
        "P6 cold) or httpx client (P7).",
        "",
        "| workload | relay | comparator | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        met = "yes" if row.met else "no" if row.met is not None else "—"
        lines.append(f"| {row.workload} | {row.relay} | {row.comparator} | {row.ratio:.2f} | "
                     f"{row.target} | {met} |")
    if report.notes:
        lines += ["", *[f"- {note}" for note in report.notes]]
    for number, curve in enumerate(report.curves, 1):
        image = out.with_name(f"{out.stem}-curve{number}.png")
        plot(curve, image)
        lines += ["", f"## Scaling: {curve.title}", "",
                  f"| {curve.x_label} | req/s | MiB/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for label, _, figures in curve.points:
            lines.append(f"| {label} | {figures['rps']:.0f} | "
                         f"{figures['bytes_per_s'] / MiB:.0f} | {figures['p50_ms']:.2f} | "
                         f"{figures['p99_ms']:.2f} |")
        lines += ["", f"![{curve.title}]({image.name})"]
    # The explanations of missed targets are written by hand, from profiles, below the marker:
    # a new run replaces the figures above it and keeps them.
    kept = out.read_text().partition(KEPT)[2] if out.exists() and KEPT in out.read_text() else ""
    lines += ["", KEPT + (kept or "\n")]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def plot(curve: Curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    xs = [x for _, x, _ in curve.points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [f["p50_ms"] for _, _, f in curve.points], "o-", label="p50")
    left.plot(xs, [f["p99_ms"] for _, _, f in curve.points], "s--", label="p99")
    left.set(xlabel=curve.x_label, ylabel="latency (ms)", xscale="log", yscale="log")
    left.legend()
    key, unit = ("bytes_per_s", "MiB/s") if curve.x_label == "voxels" else ("rps", "req/s")
    scale = MiB if key == "bytes_per_s" else 1
    right.plot(xs, [f[key] / scale for _, _, f in curve.points], "o-")
    for label, x, figures in curve.points:
        right.annotate(label, (x, figures[key] / scale), textcoords="offset points",
                       xytext=(4, 4), fontsize=7)
    right.set(xlabel=curve.x_label, ylabel=unit, xscale="log")
    fig.suptitle(f"relay: {curve.title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


WORKLOADS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "CURVES")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, once: keep the harness alive")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--only", type=lambda text: set(text.upper().split(",")),
                        default=set(WORKLOADS),
                        help="a comma-separated subset of " + ",".join(WORKLOADS)
                             + " (for working on one; the report then holds only those)")
    args = parser.parse_args()
    unknown = args.only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    want = args.only.__contains__
    mode = SMOKE if args.smoke else FULL
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    report = Report(mode)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        data = np.random.default_rng(0).integers(0, 256, mode.shape_zyx, dtype=np.uint8)
        store = root / "u8.zarr"
        array = zarr.create_array(str(store), shape=data.shape, chunks=(16, 512, 512),
                                  dtype="uint8", zarr_format=3)
        array[...] = data
        sources = [{"collection": "b", "experiment": "e", "channel": "u8", "kind": "zarr",
                    "url": str(store), "voxel_size": [4, 4, 40]}]
        relay = start_relay(stack, root, "relay", sources)
        blob = http.get(relay.url + CUBOID).content  # the relay's exact bytes
        (root / "blob").write_bytes(blob)
        raw = stack.enter_context(raw_starlette(root / "blob"))
        if want("P1"):
            p1(report, relay, raw, stack.enter_context(nginx(root)))
        if want("P2"):
            p2(report, relay)
        if want("P3"):
            write_precomputed(root / "u8-precomputed", data)
            p3(report, root, {
                "zarr": sources[0],
                "precomputed": {**sources[0], "kind": "precomputed",
                                "url": f"file://{root / 'u8-precomputed'}"},
            })
        if want("P4"):
            p4(report, relay, root, data)
        if want("P5"):
            p5(report, relay, raw)
        if want("CURVES"):
            curves(report, relay)
        if want("P6"):
            lab = start_relay(stack, root, "hop2", [{"collection": "*", "kind": "boss",
                                                     "url": relay.url}])
            front = start_relay(stack, root, "hop3", [{"collection": "*", "kind": "boss",
                                                       "url": lab.url}])
            p6(report, relay, [lab, front], root, sources)
        if want("P7"):
            p7(report, root, sources)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
