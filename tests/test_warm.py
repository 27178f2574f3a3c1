"""``relay warm``: a region read through a running relay lands in its cache (and in the caches
of the relays behind it), with a progress bar on a terminal (run under ``script``, a real pty),
resumably, and is then served with the store gone."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import zarr
from intern.remote.boss import BossRemote

from relay.demo import demo_sources

from .servers import RelayProcess, ThreadedServer, write_config

SHAPE_ZYX = (40, 200, 300)
CUBOID = [64, 64, 16]
RELAY = [sys.executable, "-m", "relay", "warm"]


def _volume() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, SHAPE_ZYX, dtype=np.uint8)


class Pair:
    """A store relay (over the demo and a local zarr) and a laptop relay reading from it (a
    boss source)."""

    def __init__(self, root: Path, demo_dir: Path) -> None:
        path = root / "em.zarr"
        array = zarr.create_array(str(path), shape=SHAPE_ZYX, chunks=(16, 64, 64),
                                  dtype=np.uint8, fill_value=0)
        array[:] = _volume()
        # the same voxels on a fine grid (1,235 cuboids of 16 × 16 × 8): a run long enough to
        # be interrupted
        fine = root / "fine.zarr"
        array = zarr.create_array(str(fine), shape=SHAPE_ZYX, chunks=(8, 16, 16),
                                  dtype=np.uint8, fill_value=0)
        array[:] = _volume()
        em = {"collection": "w", "experiment": "e", "channel": "em", "kind": "zarr",
              "url": path.as_uri(), "voxel_size": [4, 4, 40], "cuboid": CUBOID}
        store_cfg = write_config(root / "store.yaml", [
            *demo_sources(demo_dir), em,
            {**em, "channel": "fine", "url": fine.as_uri(), "cuboid": [16, 16, 8]}],
            root / "store-cache")
        self.store = RelayProcess(["--config", str(store_cfg)], log=root / "store.log").start()
        laptop_cfg = write_config(root / "laptop.yaml", [
            {"collection": "*", "kind": "boss", "url": self.store.url, "timeout": 5,
             "retries": 0}], root / "laptop-cache")
        self.laptop = RelayProcess(["--config", str(laptop_cfg)],
                                   log=root / "laptop.log").start()

    def stop(self) -> None:
        self.laptop.stop()
        self.store.stop()


@pytest.fixture
def pair(tmp_path: Path, demo_dir: Path) -> Iterator[Pair]:
    pair = Pair(tmp_path, demo_dir)
    yield pair
    pair.stop()


def _in_a_terminal(*args: str) -> subprocess.CompletedProcess[str]:
    """``relay warm`` with a pty for its stdout and stderr (``script`` runs it in one)."""
    command = " ".join([*RELAY, *args])
    return subprocess.run(["script", "-q", "-e", "-c", command, "/dev/null"],
                          capture_output=True, text=True, timeout=300)


def _counts(output: str) -> list[int]:
    """The 'done' figures the bar showed, in order."""
    return [int(done) for done, _ in re.findall(r"(\d+)/(\d+)\S*\s+cuboids", output)]


def test_the_bar_advances_and_a_second_run_reads_nothing_upstream(pair: Pair,
                                                                 demo_dir: Path) -> None:
    box = "100:1000,0:1024,5:40"  # of the demo: 2 × 2 × 3 cuboids of 512 × 512 × 16
    cuboids = 2 * 2 * 3
    first = _in_a_terminal(pair.laptop.url, "demo/synthetic/em", "--box", box,
                           "--concurrency", "1")
    assert first.returncode == 0, first.stdout
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", first.stdout)
    counts = _counts(plain)
    assert len(set(counts)) >= 2 and counts == sorted(counts), plain  # it advanced
    assert counts[-1] == cuboids
    assert f"{cuboids} of {cuboids} cuboids warm" in plain and "0 error(s)" in plain
    assert pair.store.upstream_reads() == cuboids  # each cuboid read from the store once
    laptop_reads = pair.laptop.upstream_reads()

    again = subprocess.run([*RELAY, pair.laptop.url, "demo/synthetic/em", "--box", box],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "\x1b[" not in again.stderr  # not a terminal: plain lines, no bar
    assert f"{cuboids} of {cuboids} cuboids warm" in again.stderr
    assert pair.laptop.upstream_reads() == laptop_reads  # warm: nothing read upstream
    assert pair.store.upstream_reads() == cuboids

    # the fine channel's description, so that the laptop knows it once the store is gone (the
    # laptop reads a boss source in 512 × 512 × 16 cuboids: this warms z 0:16 of the level)
    assert subprocess.run([*RELAY, pair.laptop.url, "w/e/fine", "--box", "0:16,0:16,0:8"],
                          capture_output=True, timeout=300).returncode == 0
    pair.store.stop()  # the store goes away: the warmed box is still served
    remote = BossRemote({"protocol": "http", "host": pair.laptop.host, "token": "public"})
    channel = remote.get_channel("em", "demo", "synthetic")
    got = remote.get_cutout(channel, 0, [100, 1000], [0, 1024], [5, 40])
    truth = zarr.open_array(str(demo_dir / "em.ome.zarr" / "0"), mode="r")
    np.testing.assert_array_equal(got, np.asarray(truth[5:40, 0:1024, 100:1000]))
    # a region never warmed fails, and warm says so: exit status 1, errors counted
    cold = subprocess.run([*RELAY, pair.laptop.url, "w/e/fine", "--box", "0:16,0:16,24:32"],
                          capture_output=True, text=True, timeout=300)
    assert cold.returncode == 1, cold.stderr
    assert "0 of 1 cuboids warm" in cold.stderr and "1 error(s)" in cold.stderr


class _HoldingProxy:
    """Passes requests on to ``upstream``, but holds every cutout after the first ``let``
    until ``release`` is set: a warm that cannot finish before the test interrupts it, on a
    machine of any speed."""

    def __init__(self, upstream: str, let: int) -> None:
        import threading

        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.cutouts = 0
        self.held = threading.Event()
        self.release = threading.Event()
        client = httpx.AsyncClient(base_url=upstream, timeout=60)

        async def forward(request: Request) -> Response:
            if "/cutout/" in request.url.path:
                self.cutouts += 1
                if self.cutouts > let:
                    self.held.set()
                    await asyncio.to_thread(self.release.wait, 120)
            answer = await client.get(request.url.path, params=request.query_params,
                                      headers={"Accept": request.headers.get("accept", "*/*")})
            return Response(answer.content, answer.status_code,
                            media_type=answer.headers.get("content-type"))

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await client.aclose()

        self.app = Starlette(routes=[Route("/{path:path}", forward)], lifespan=lifespan)


def test_ctrl_c_stops_at_once_and_a_rerun_finishes_the_rest(pair: Pair) -> None:
    cuboids = 19 * 13 * 5  # the whole level, 300 × 200 × 40, on the 16 × 16 × 8 grid
    proxy = _HoldingProxy(pair.store.url, let=3)
    with ThreadedServer(proxy.app) as server, subprocess.Popen(
            [*RELAY, server.url, "w/e/fine", "--concurrency", "1"],
            stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        assert f"{cuboids} cuboids of 16×16×8" in process.stderr.readline()  # it has begun
        try:
            assert proxy.held.wait(60), "warm to read three cuboids and ask for a fourth"
            process.send_signal(signal.SIGINT)
            rest = process.stderr.read()
            assert process.wait(timeout=30) == 130
        finally:
            proxy.release.set()
    assert "interrupted after" in rest and "run it again" in rest
    done = pair.store.upstream_reads()
    assert 3 <= done < cuboids
    rerun = subprocess.run([*RELAY, pair.store.url, "w/e/fine", "--concurrency", "8"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{cuboids} of {cuboids} cuboids warm" in rerun.stderr
    # nothing read twice but the one cuboid in flight at Ctrl-C: its read was abandoned with
    # its only client (relay/singleflight.py), so the rerun reads it again
    assert cuboids <= pair.store.upstream_reads() <= cuboids + 1


@pytest.mark.parametrize(("args", "message"), [
    (["w/e"], "expected COLLECTION/EXPERIMENT/CHANNEL"),
    (["w/e/em", "--box", "1:2,3:4"], "expected x0:x1,y0:y1,z0:z1"),
    (["w/e/em", "--box", "5:1,0:1,0:1"], "is empty"),
    (["w/e/em", "--res", "7"], "resolutions 0 to"),
    (["w/e/em", "--box", "900:950,0:10,0:10"], "lies outside"),
    (["w/e/nope"], "404"),
])
def test_mistakes_are_one_line(pair: Pair, args: list[str], message: str) -> None:
    result = subprocess.run([*RELAY, pair.laptop.url, *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode in (1, 2), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
