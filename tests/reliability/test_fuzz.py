"""schemathesis against the relay's own OpenAPI document (every operation, about 5,500
generated requests), and absurd request heads sent to a real server: never a 5xx, every error
BossDB JSON, and memory bounded."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from starlette.testclient import TestClient

from relay.app import create_app
from relay.protocol import MAX_HEAD_BYTES

from ..conftest import make_settings
from ..servers import RelayProcess, write_config
from .conftest import check_boss_answer

EXAMPLES_PER_OPERATION = 500


@pytest.fixture(scope="module")
def app(fixture_sources: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = make_settings(fixture_sources, tmp_path_factory.mktemp("fuzz") / "cache")
    # schemathesis loads the document as "testserver"
    server = settings.server.model_copy(update={"allowed_hosts": ("localhost", "testserver")})
    return create_app(settings.model_copy(update={"server": server}))


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False,
                    base_url="http://localhost") as test_client:
        yield test_client


def test_schemathesis_over_every_operation(app: Any, client: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results)  # the document itself is valid
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 15  # every route of the dialect is in the document
    sent = [0]

    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def send(case: Any) -> None:
            request = case.as_transport_kwargs(base_url="http://localhost")
            request.pop("cookies", None)  # none in the schema; per-request cookies are deprecated
            response = client.request(**request)
            sent[0] += 1
            check_boss_answer(response)

        send()
    total = sent[0]
    print(f"schemathesis: {total} requests over {len(operations)} operations, no 5xx")
    assert total >= 5000


@pytest.fixture(scope="module")
def relay(fixture_sources: list[dict[str, Any]],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    root: Path = tmp_path_factory.mktemp("heads")
    config = write_config(root / "relay.yaml", fixture_sources, None)
    with RelayProcess(["--config", str(config)]) as server:
        yield server


def _send_head(port: int, start: bytes, filler: bytes, megabytes: int) -> bytes:
    """Send ``start`` and then up to ``megabytes`` MiB of ``filler`` (a head that never ends);
    return what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start)
        try:
            for _ in range(megabytes * 2**20 // max(1, len(filler))):
                sock.sendall(filler)
        except OSError:
            pass  # the server hung up: what we want, once it has answered
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


@pytest.mark.parametrize(("start", "filler"), [
    (b"GET /v1/collection/ HTTP/1.1\r\nHost: localhost\r\nX-Big: ", b"a" * 65536),  # a huge header
    (b"GET /v1/collection/" , b"a" * 65536),                                    # a huge URL
    (b"GET /v1/collection/ HTTP/1.1\r\nHost: localhost\r\n", b"X-Many: y\r\n" * 6000),  # many
])
def test_absurd_request_heads_are_refused_with_bounded_memory(
        relay: RelayProcess, start: bytes, filler: bytes) -> None:
    assert relay.process is not None
    process = psutil.Process(relay.process.pid)
    before = process.memory_info().rss
    answer = _send_head(relay.port, start, filler, 64)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.Response(431, content=body).json() == {
        "status": 431, "code": 1005,
        "message": f"Request line and headers are over {MAX_HEAD_BYTES} bytes"}
    # 64 MiB offered; the relay kept at most a request head's worth
    assert process.memory_info().rss - before < 16 * 2**20
    assert httpx.get(relay.url + "/healthz", timeout=10).status_code == 200


def test_a_request_that_is_not_http_gets_boss_json(relay: RelayProcess) -> None:
    answer = _send_head(relay.port, b"\x16\x03\x01 not http at all\r\n\r\n", b"x", 0)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert httpx.Response(400, content=body).json()["status"] == 400


def test_a_long_but_reasonable_head_is_served(relay: RelayProcess) -> None:
    response = httpx.get(relay.url + "/v1/collection/",
                         headers={"X-State": "a" * (MAX_HEAD_BYTES // 2)}, timeout=10)
    assert response.status_code == 200
