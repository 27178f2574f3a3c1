"""Memory has one budget: cutouts being assembled and bodies being sent are counted against
``server.max_inflight_bytes``; size limits count every byte of the dtype on every data route;
an answer no encoding can carry is refused before anything is read; a client that hangs up
cancels its work; a response nobody reads is dropped after ``send_timeout``."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import zarr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings, SourceSettings
from relay.geometry import Box
from relay.model import ChannelRef
from relay.protocol import BoundedHttpToolsProtocol
from relay.upstreams.kinds import Registry

from ..servers import RelayProcess, ThreadedServer, wait_for, write_config
from .conftest import RssPeak

MiB = 2**20
#: What the relay process holds besides its budgets (the interpreter with numpy, zarr,
#: cloud-volume and uvicorn; cuboids in flight for the request being assembled; allocator
#: slack): the issue's allowance.
OVERHEAD = 400 * MiB


def _noise_store(path: Path, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    data = np.random.default_rng(3).integers(0, 256, shape_zyx, dtype=np.uint8)
    array = zarr.create_array(str(path), shape=shape_zyx, chunks=(16, 512, 512), dtype="uint8",
                              zarr_format=3)
    array[...] = data
    return data


def test_sixteen_near_limit_cutouts_stay_within_the_budgets(tmp_path: Path) -> None:
    """16 clients at once, each asking for a cutout just under server.max_cutout_bytes: without
    one budget each would hold its voxels and its body at once (16 × 62 MiB here)."""
    data = _noise_store(tmp_path / "big.zarr", (32, 1024, 1024))
    memory = decoded = 32 * MiB
    inflight = 96 * MiB
    config = write_config(
        tmp_path / "relay.yaml",
        [{"collection": "c", "experiment": "e", "channel": "big", "kind": "zarr",
          "url": str(tmp_path / "big.zarr")}],
        None, server={"max_cutout_bytes": 32 * MiB, "max_inflight_bytes": inflight,
                      "inflight_wait_seconds": 120},
        memory_bytes=memory, decoded_bytes=decoded)
    boxes = [(0, 31), (1, 32)] * 8  # 31 MiB each

    async def fetch(client: httpx.AsyncClient, z0: int, z1: int) -> None:
        response = await client.get(f"/v1/cutout/c/e/big/0/0:1024/0:1024/{z0}:{z1}/")
        assert response.status_code == 200, response.text
        got = np.frombuffer(blosc.decompress(response.content), np.uint8)
        np.testing.assert_array_equal(got.reshape(z1 - z0, 1024, 1024), data[z0:z1])

    async def all_at_once(url: str) -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            await asyncio.gather(*(fetch(client, z0, z1) for z0, z1 in boxes))

    with RelayProcess(["--config", str(config)]) as relay:
        assert relay.process is not None
        with RssPeak(relay.process.pid) as rss:
            asyncio.run(all_at_once(relay.url))
        metrics = relay.metrics()
    print(f"peak RSS {rss.peak / MiB:.0f} MiB for budgets of {memory / MiB:.0f} + "
          f"{decoded / MiB:.0f} + {inflight / MiB:.0f} MiB")
    assert rss.peak <= memory + decoded + inflight + OVERHEAD
    assert metrics["relay_inflight_bytes"] == 0  # every reservation was given back


@pytest.mark.parametrize("path", [
    # uint64, 2000 × 1000 × 100: 1.6 GB; BossDB's rule counts a quarter (400 MB) and lets it in
    "/v1/cutout/col1/exp1/anno/0/0:2000/0:1000/0:100/",
    "/precomputed/col1/exp1/anno/0/0-2000_0-1000_0-100",
    "/precomputed/col1/big/empty/0/0-2048_0-2048_0-200",
])
def test_size_limits_count_every_byte_on_every_data_route(client: TestClient,
                                                          path: str) -> None:
    response = client.get(path)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == 2000
    assert "server.max_cutout_bytes" in response.json()["message"]
    assert client.app.state.metrics.counters["upstream_reads_total"] == 0  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A uint64 channel of 2048 × 2048 × 80 voxels (2.5 GiB), metadata only."""
    path = tmp_path_factory.mktemp("huge") / "huge.zarr"
    zarr.create_array(str(path), shape=(80, 2048, 2048), chunks=(16, 512, 512), dtype="uint64",
                      zarr_format=3)
    return {"collection": "c", "experiment": "e", "channel": "huge", "kind": "zarr",
            "url": str(path)}


@pytest.mark.parametrize(("accept", "box"), [
    ("application/blosc", "0:2048/0:2048/0:80"),          # 2.5 GiB: past Blosc1's 2 GiB
    ("application/blosc-python", "0:2048/0:2048/0:80"),
    ("image/jpeg", "0:100/0:1000/0:66"),                   # 66 × 1000 rows: past 65,500
])
def test_an_answer_no_encoding_can_carry_is_refused_before_reading(
        huge: dict[str, Any], fixture_sources: list[dict[str, Any]], accept: str,
        box: str) -> None:
    """python-blosc returns an empty frame past 2 GiB (a 200 with an empty body), and libjpeg
    refuses sides past 65,500 (a 500): both are 413 now, before a voxel is read."""
    settings = Settings(sources=[huge, *fixture_sources], cache={"disk_dir": None},
                        server={"max_cutout_bytes": 4 * 2**30})
    channel = "c/e/huge" if accept != "image/jpeg" else "col1/exp1/ch1"
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get(f"/v1/cutout/{channel}/0/{box}/", headers={"Accept": accept})
        assert response.status_code == 413, response.text
        assert response.json()["code"] == 2000
        assert client.app.state.metrics.counters["upstream_reads_total"] == 0  # type: ignore[attr-defined]


# --- a client that hangs up -------------------------------------------------------------------


class Gate:
    """Upstream reads that start, then wait for a gate; counted, cancellations included."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.finished = 0
        self.open = threading.Event()
        self.started_event = threading.Event()
        self.want = 1
        self.all_cancelled = threading.Event()


def _gated_registry(gate: Gate) -> Registry:
    from ..test_cutout import FakeUpstream

    class GatedUpstream(FakeUpstream):
        async def read(self, ref: ChannelRef, level: int, box: Box, t: int = 0,
                       token: str | None = None) -> np.ndarray | None:
            gate.started += 1
            if gate.started >= gate.want:
                gate.started_event.set()
            try:
                while not gate.open.is_set():
                    await asyncio.sleep(0.01)  # a slow store, polled so it can be cancelled
            except asyncio.CancelledError:
                gate.cancelled += 1
                if gate.cancelled == gate.started:
                    gate.all_cancelled.set()
                raise
            gate.finished += 1
            return await super().read(ref, level, box, t, token)

    registry = Registry()
    registry.register("gated", GatedUpstream)
    return registry


def _gated_app(gate: Gate, **server: Any) -> Starlette:
    source = SourceSettings(collection="c", experiment="e", channel="ch", kind="zarr", url="x")
    settings = Settings(sources=[source.model_copy(update={"kind": "gated"})],
                        cache={"disk_dir": None}, server=server)
    return create_app(settings, _gated_registry(gate))


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()


def _send(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return sock


def test_a_client_that_hangs_up_cancels_its_upstream_reads(gate: Gate) -> None:
    """The whole 40 × 30 × 20 volume is 18 cuboids of 16 × 16 × 8; the relay reads at most 8
    at once. The client hangs up while they are in flight: they are cancelled, and no further
    read starts."""
    gate.want = 8
    with ThreadedServer(_gated_app(gate), http=BoundedHttpToolsProtocol) as relay:
        sock = _send(relay.port, "/v1/cutout/c/e/ch/0/0:40/0:30/0:20/")
        assert gate.started_event.wait(30)
        sock.close()
        assert gate.all_cancelled.wait(30), (gate.started, gate.cancelled)
        gate.open.set()
        health = httpx.get(relay.url + "/healthz")  # the relay carries on
    assert health.status_code == 200
    assert gate.started == 8 and gate.finished == 0


def _waiters(app: Starlette) -> int:
    """Requests waiting on the app's one upstream read in flight."""
    flights = app.state.cutouts.flights._flights
    return sum(flight.waiters for flight in flights.values())


def test_a_read_another_request_waits_on_is_not_cancelled(gate: Gate) -> None:
    app = _gated_app(gate)
    with ThreadedServer(app, http=BoundedHttpToolsProtocol) as relay:
        leaver = _send(relay.port, "/v1/cutout/c/e/ch/0/0:16/0:16/0:8/")  # one cuboid
        assert gate.started_event.wait(30)
        stayer = _send(relay.port, "/v1/cutout/c/e/ch/0/0:16/0:16/0:8/")
        # the second request joins the first one's read
        wait_for(lambda: _waiters(app) >= 2, 30, "the second request to join the read")
        leaver.close()
        gate.open.set()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += stayer.recv(65536)
        stayer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert (gate.started, gate.cancelled, gate.finished) == (1, 0, 1)


def test_a_response_nobody_reads_is_dropped_after_the_send_timeout(tmp_path: Path) -> None:
    data = _noise_store(tmp_path / "big.zarr", (32, 1024, 1024))
    settings = Settings(sources=[{"collection": "c", "experiment": "e", "channel": "big",
                                  "kind": "zarr", "url": str(tmp_path / "big.zarr")}],
                        cache={"disk_dir": None}, server={"send_timeout": 1})
    app = create_app(settings)
    with ThreadedServer(app, http=BoundedHttpToolsProtocol) as relay:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", relay.port))
        sock.sendall(b"GET /v1/cutout/c/e/big/0/0:1024/0:1024/0:32/ HTTP/1.1\r\n"
                     b"Host: localhost\r\n\r\n")  # and never read
        counters = app.state.metrics.counters  # a live view
        wait_for(lambda: counters["send_timeouts_total"] >= 1, 30,
                 "the unread response to be dropped")
        assert app.state.budget.used == 0  # its body is no longer held
        sock.close()
        # and a reader that does read gets every byte
        response = httpx.get(relay.url + "/v1/cutout/c/e/big/0/0:1024/0:1024/0:32/",
                             timeout=60)
    got = np.frombuffer(blosc.decompress(response.content), np.uint8)
    np.testing.assert_array_equal(got.reshape(data.shape), data)
