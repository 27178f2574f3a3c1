"""Relays as real subprocesses on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

READY_TIMEOUT = 90.0


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` (a readiness probe, a counter another process moves) until it holds;
    a RuntimeError naming ``what`` after ``within`` seconds. The condition may raise to stop
    the wait early (a process that exited)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {within} s")
        time.sleep(0.02)  # polling the condition, bounded by the deadline


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, sources: list[dict[str, Any]], cache_dir: Path | None,
                 server: dict[str, Any] | None = None, **cache: Any) -> Path:
    config = {
        # the durable state (metadata, reserved ids) beside the config unless a test shares one
        "server": {"host": "127.0.0.1", "state_dir": str(path.parent / f"{path.stem}-state"),
                   **(server or {})},
        "cache": {"disk_dir": str(cache_dir) if cache_dir else None, **cache},
        "sources": sources,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def relay_over(root: Path, sources: list[dict[str, Any]], name: str = "relay",
               **server: Any) -> RelayProcess:
    """A relay (not started) over ``sources``, its config, disk cache and log under ``root``
    named ``name``."""
    config = write_config(root / f"{name}.yaml", sources, root / f"{name}-cache",
                          server=server or None)
    return RelayProcess(["--config", str(config)], log=root / f"{name}.log")


class _Exited(RuntimeError):
    """The process being waited for is gone: no point waiting on."""


class RelayProcess:
    """``python -m relay serve`` in a subprocess on a port the system chooses (``--port 0``,
    reported through ``--port-file``: no free-port race); ``with`` waits for /healthz and stops
    it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None, command: list[str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        """``command`` replaces ``python -m relay serve`` (the port flags are appended);
        ``preexec`` runs in the child before the program (e.g. to lower a resource limit)."""
        import tempfile

        self.port_file = Path(tempfile.mkdtemp(prefix="relay-port-")) / "port"
        self.command = command or [sys.executable, "-m", "relay", "serve"]
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.preexec = preexec
        self.url_scheme = "http"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.url_scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RelayProcess:
        # the first start binds a port the system chooses; a restart takes the same one again
        # (a chain's next relay is configured with it)
        argv = [*self.command, "--port", str(self.port), "--port-file", str(self.port_file),
                *self.args]
        self.port_file.unlink(missing_ok=True)
        if self.log is not None:
            with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(argv, env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT,
                                                preexec_fn=self.preexec)
        else:
            self.process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.STDOUT, preexec_fn=self.preexec)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise _Exited(f"relay exited with {process.returncode}: {argv}")
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
            try:
                # readiness only: a TLS test checks the certificate itself
                return bool(self.port) and httpx.get(self.url + "/healthz", timeout=1.0,
                                                     verify=False).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, READY_TIMEOUT, "relay ready")
        except _Exited:
            raise
        except RuntimeError:
            self.stop()
            raise RuntimeError("relay did not become ready") from None
        return self

    def stop(self) -> int:
        """SIGTERM (graceful: pending cache writes land), then wait."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def upstream_reads(self) -> int:
        return int(self.metrics().get("relay_upstream_reads_total", 0))

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedServer:
    """An ASGI app served by uvicorn in a background thread on loopback: a real socket and a
    real HTTP stack, without a subprocess's start-up time. The socket is bound at construction
    (port 0: no free-port race), so ``url`` is known before the server starts: two servers can
    be configured with each other's address."""

    def __init__(self, app: Any, **options: Any) -> None:
        """``options`` go to ``uvicorn.Config`` (e.g. ``http=BoundedHttpToolsProtocol``, the
        protocol ``relay serve`` runs)."""
        import threading

        import uvicorn

        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()

        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("threaded server did not start")
            return bool(self.server.started)

        wait_for(started, READY_TIMEOUT, "threaded server started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


class StaticFileServer:
    """A plain static file server for a directory, on loopback, in a thread: what a bucket
    behind HTTP looks like to zarr and cloud-volume (GET, 404 for a missing file). ``requested``
    lists every path asked for, so tests can count reads at the store itself."""

    def __init__(self, directory: Path, hang: Callable[[str], bool] | None = None) -> None:
        """``hang(path)``: requests for which it is true are never answered (a store that
        accepts and then hangs), until the server stops."""
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        requested: list[str] = []
        self.requested = requested
        self.stopping = stopping = threading.Event()

        class Quiet(SimpleHTTPRequestHandler):
            def send_head(self) -> Any:
                requested.append(self.path)  # list.append is atomic under the GIL
                if hang is not None and hang(self.path):
                    stopping.wait(120)
                    return None
                return super().send_head()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StaticFileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (cryptography comes with cloud-volume)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ServesOnLoopback:
    """For UpstreamSuite subclasses whose ``write_store`` serves an app: ``serve(app)`` starts it
    in a thread and returns its URL; every server stops after the test."""

    @pytest.fixture(autouse=True)
    def _loopback_servers(self) -> Iterator[None]:
        self._running: list[ThreadedServer] = []
        yield
        for server in self._running:
            server.__exit__()

    def serve(self, app: Any) -> str:
        server = ThreadedServer(app).__enter__()
        self._running.append(server)
        return server.url


def _redis_ping(port: int) -> bytes:
    """The first line of a PING's answer from 127.0.0.1:port (raises OSError if nobody is
    there)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).split(b"\r\n", 1)[0]


class RedisServer:
    """A real ``redis-server`` (Debian's) on loopback, in its own directory, persisting
    nothing: ``kill()`` is SIGKILL, and ``start()`` after it is a restart, empty, on the same
    port. ``cli(...)`` runs ``redis-cli`` against it."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.options = list(options)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with open(self.directory / "redis.log", "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory), *self.options],
                stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}; see "
                                   f"{self.directory / 'redis.log'}")
            try:
                return _redis_ping(self.port) == b"+PONG"
            except OSError:
                return False

        wait_for(answers, 30, "redis-server answering PING")
        return self

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters joined with ``redis-cli --cluster
    create`` (no replicas): a real Redis Cluster, on loopback."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        # the bus port is named: by default it is the port + 10000, which a port the system
        # chose may leave beyond 65535
        self.nodes = [RedisServer(directory / f"node{i}", "--cluster-enabled", "yes",
                                  "--cluster-config-file", "nodes.conf",
                                  "--cluster-port", str(free_port()),
                                  "--cluster-node-timeout", "2000")
                      for i in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def __enter__(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_for(lambda: all("cluster_state:ok" in n.cli("cluster", "info") for n in self.nodes),
                 30, "the Redis Cluster reaching cluster_state:ok")
        return self

    def cli(self, *args: str) -> str:
        """``redis-cli -c`` (follows redirections) through the first node."""
        return self.nodes[0].cli("-c", *args)

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()


REPO = Path(__file__).resolve().parent.parent
FLEET_NGINX = REPO / "docker" / "nginx-fleet.conf"


class NginxBalancer:
    """Debian's nginx with the fleet recipe's own config (docker/nginx-fleet.conf), its relay
    names and port replaced by loopback addresses: the compose file's balancer, on loopback."""

    def __init__(self, directory: Path, backends: list[str]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        text = FLEET_NGINX.read_text()
        for number, backend in enumerate(backends, 1):
            assert f"relay{number}:8000" in text
            text = text.replace(f"relay{number}:8000", backend)
        assert f"relay{len(backends) + 1}:8000" not in text, "as many relays as the recipe"
        text = text.replace("listen 8000;", f"listen 127.0.0.1:{self.port};")
        text = text.replace("pid /tmp/nginx-fleet.pid;", f"pid {directory}/nginx.pid;")
        text = text.replace("error_log /dev/stderr warn;", f"error_log {directory}/error.log;")
        (directory / "nginx.conf").write_text(text)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> NginxBalancer:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"),
             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.directory / 'error.log').read_text()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 30, "nginx answering")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)
