"""Connections are bounded: a request head must arrive within ``server.header_timeout``; past
``server.max_connections`` a connection is refused at once; the relay raises its open-file
limit at start and says what it got."""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..servers import RelayProcess, wait_for, write_config

CHANNEL = "/v1/collection/col1/experiment/exp1/channel/ch1/"
IDLE = 1500
SLOW = 20


def _enough_descriptors(needed: int) -> None:
    """This test process opens the idle connections itself: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        assert hard == resource.RLIM_INFINITY or hard >= needed, (
            f"the test needs {needed} open files; the hard limit here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _answers(socks: list[socket.socket], deadline: float) -> list[bytes]:
    """Everything each socket receives until the server closes it (or the deadline)."""
    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_count = len(socks)
        while open_count and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[ready] += chunk
                if not chunk:
                    selector.unregister(ready)
                    open_count -= 1
    return [received[sock] for sock in socks]


def _status(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_idle_and_slow_connections_neither_delay_others_nor_stay(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    """1,500 connections that never send a byte and 20 that send their head a byte at a time
    (slow-loris): a normal request is still answered at once, and every one of them is closed
    with 408 once the header timeout has passed."""
    header_timeout = 3.0
    _enough_descriptors(IDLE + SLOW + 256)
    config = write_config(tmp_path / "relay.yaml", fixture_sources, None,
                          server={"header_timeout": header_timeout})
    with RelayProcess(["--config", str(config)]) as relay:
        idle = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(IDLE)]
        slow = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(SLOW)]
        opened = time.monotonic()
        stop = threading.Event()

        def drip() -> None:
            for byte in b"GET /v1/collection/ HTTP/1.1\r\nHost: localhost\r\n":
                if stop.is_set():
                    return
                for sock in slow:
                    with contextlib.suppress(OSError):  # closed by the server: expected
                        sock.send(bytes([byte]))
                stop.wait(0.25)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            started = time.monotonic()
            response = httpx.get(relay.url + CHANNEL, timeout=10)
            elapsed = time.monotonic() - started
            assert response.status_code == 200 and elapsed < 1.0, elapsed
            answers = _answers(idle + slow, opened + header_timeout + 15)
        finally:
            stop.set()
            dripper.join(timeout=10)
            for sock in idle + slow:
                sock.close()
        closed_after = time.monotonic() - opened
        metrics = relay.metrics()
    statuses = [_status(answer) for answer in answers]
    assert all(status == 408 and body["code"] == 1005 for status, body in statuses)
    assert "server.header_timeout" in statuses[0][1]["message"]
    assert header_timeout <= closed_after < header_timeout + 15
    assert metrics["relay_header_timeouts_total"] == IDLE + SLOW


def test_past_the_connection_cap_a_connection_is_refused_at_once(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    cap = 50
    log = tmp_path / "relay.log"
    config = write_config(tmp_path / "relay.yaml", fixture_sources, None,
                          server={"max_connections": cap, "header_timeout": 60})
    with RelayProcess(["--config", str(config)], log=log) as relay:
        held = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(cap)]
        try:
            started = time.monotonic()
            extra = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(10)]
            answers = _answers(extra, started + 10)
            elapsed = time.monotonic() - started
            for sock in extra:
                sock.close()
        finally:
            for sock in held:
                sock.close()
        # once the held connections are gone, requests are served again
        def served() -> bool:
            status = httpx.get(relay.url + CHANNEL).status_code
            assert status in (200, 503), status
            return status == 200

        wait_for(served, 10, "the closed connections to be counted out")
        metrics = relay.metrics()
    for answer in answers:
        status, body = _status(answer)
        assert status == 503 and body["code"] == 9001
        assert b"retry-after: 1" in answer.lower()
        assert "server.max_connections" in body["message"]
    assert elapsed < 2
    assert metrics["relay_connections_refused_total"] >= 10
    assert log.read_text().count("refusing new ones with 503") == 1  # logged once


def test_the_open_file_limit_is_raised_at_start(tmp_path: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    config = tmp_path / "relay.yaml"
    config.write_text("cache:\n  disk_dir: null\n")
    log = tmp_path / "relay.log"
    with RelayProcess(["--config", str(config)], log=log, preexec=low_limit) as relay:
        assert relay.process is not None
        limits = psutil.Process(relay.process.pid).rlimit(psutil.RLIMIT_NOFILE)
        metrics = relay.metrics()
    assert tuple(limits) == (4096, 4096)
    assert "open-file limit 4096 (was 1024); at most 3584 connections" in log.read_text()
    assert metrics["relay_connections_max"] == 3584
