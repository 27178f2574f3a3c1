"""The benchmark harness: run modes, the report's rows, the load generator and the servers a
workload compares the relay against, and ``Bench``, what every workload is handed.

Load comes from ``wrk`` in its own process (one thread), so the load generator never shares the
server's interpreter; cold reads use a plain sequential urllib3 client, timed end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import urllib3
import yaml

from bench.serving import wait_ready
from tests.servers import RelayProcess, free_port

__all__ = [
    "CUBOID",
    "FULL",
    "ROOT",
    "SMOKE",
    "Bench",
    "Curve",
    "MiB",
    "Mode",
    "Report",
    "Row",
    "http",
    "median_of",
    "nginx",
    "raw_starlette",
    "start_relay",
    "timed_get",
    "writes_landed",
    "wrk",
]

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
CUBOID = "/v1/cutout/b/e/u8/0/0:512/0:512/0:16/"
T = TypeVar("T")

# One client, kept: ``httpx.get`` builds a new client (and its TLS context) per call.
http = httpx.Client(timeout=120)
# Timed sequential reads go through urllib3 (what requests, and so intern, sit on), used
# directly: it receives a large body faster than httpx or requests, and that time is the
# client's, not the server's.
_POOL = urllib3.PoolManager(retries=False, timeout=120)


# --- run modes and the report's contents ---------------------------------------------------


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


def timed_get(url: str) -> float:
    """Seconds for one GET of ``url``, body received; fails loudly on anything but 200."""
    started = time.perf_counter()
    response = _POOL.request("GET", url, headers={"Accept": "application/blosc"})
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {url}: {response.status} {response.data[:200]!r}")
    return elapsed


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
def direct_starlette(kind: str, url: str) -> Iterator[str]:
    """P3's comparator over HTTP: ``bench/direct_server.py`` reading ``url``."""
    port = free_port()
    with _serving([sys.executable, str(ROOT / "bench" / "direct_server.py"), str(port), kind,
                   url], f"http://127.0.0.1:{port}/hello"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def nginx(root: Path) -> Iterator[str | None]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        yield None
        return
    port = free_port()
    prefix = root / f"nginx-{port}"  # (one per server: P1 and the curves each start one)
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
    """A relay's config file; ``extra`` sets (or, with None, turns off) cache keys."""
    path.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1"},
        "cache": {"memory_bytes": 1024 * MiB, "decoded_bytes": 256 * MiB,
                  "disk_dir": str(cache), "disk_bytes": 8 * 1024 * MiB, **extra},
        "sources": sources,
    }))
    return path


def writes_landed(relay: RelayProcess, within: float = 60.0) -> None:
    """Wait until the relay's write-behind (disk, Redis) has landed."""
    deadline = time.monotonic() + within
    while relay.metrics().get("relay_cache_pending_writes", 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{relay.url}: cache writes still pending after {within} s")
        time.sleep(0.02)


def start_relay(stack: ExitStack, root: Path, name: str, sources: list[dict[str, Any]],
                **extra: Any) -> RelayProcess:
    """A relay over ``sources`` (config, cache and log named ``name`` under ``root``), up until
    ``stack`` closes."""
    config = relay_config(root / f"{name}.yaml", sources, root / f"{name}-cache", **extra)
    relay = RelayProcess(["--config", str(config), "--log-level", "warning"],
                         log=root / f"{name}.log")
    return stack.enter_context(relay)


@dataclass
class Bench:
    """What every workload gets: the run's mode and report, a scratch directory, the volume
    (``data``, Z,Y,X uint8) written to a local zarr store that ``sources`` configures, a warm
    relay over it, a raw Starlette server holding one cuboid's exact bytes, and an exit stack
    that outlives the workload (servers a workload starts stay up until the run ends)."""

    mode: Mode
    report: Report
    root: Path
    stack: ExitStack
    data: np.ndarray
    sources: list[dict[str, Any]]
    relay: RelayProcess
    raw: str

    def enter(self, context: AbstractContextManager[T]) -> T:
        return self.stack.enter_context(context)

    def start_relay(self, name: str, sources: list[dict[str, Any]],
                    stack: ExitStack | None = None, **extra: Any) -> RelayProcess:
        """A relay over ``sources``, up until ``stack`` (default: the run's) closes."""
        return start_relay(stack or self.stack, self.root, name, sources, **extra)
