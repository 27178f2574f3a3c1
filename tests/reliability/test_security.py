"""Security: clients cannot steer the relay to hosts the config does not name, CORS origins are
configurable, other Host names are refused (DNS rebinding), TRACE is refused, and numbers in
URLs are ASCII digits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings

from ..faults import FaultServer
from ..servers import ThreadedServer


@pytest.fixture
async def upstream() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


@pytest.mark.parametrize("path", [
    "/v1/collection/evil.example.org/experiment/e/channel/ch/",
    "/v1/collection/user@evil.example.org/experiment/",
    "/v1/cutout/c/e/http:%2F%2Fevil.example.org/0/0:1/0:1/0:1/",
    "/v1/cutout/c/e/ch/0/0:1/0:1/0:1/?url=http://evil.example.org/",
    "/v1/coord/..%2F..%2Fadmin",
    "/v1/collection/%2F%2Fevil.example.org%2Fx/experiment/",
    "/precomputed/c/e/%40evil/info",
])
async def test_names_and_queries_never_reach_another_host(upstream: FaultServer,
                                                          path: str) -> None:
    """Only the configured upstream is ever contacted. There is no network here, so an attempt
    to reach any other host would end in a 502/503/504; instead hostile names are refused (or
    answered by the configured upstream), and nothing of them or of the query reaches it."""
    settings = Settings(sources=[{"collection": "*", "kind": "boss",
                                  "url": upstream.url, "retries": 0}],
                        cache={"disk_dir": None})
    with ThreadedServer(create_app(settings)) as relay:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            response = await client.get(path)
    assert response.status_code in (200, 400, 404), response.text
    assert not any("evil" in target or "url=" in target for target in upstream.targets)


def test_cors_origins_are_configurable(fixture_sources: list[dict[str, Any]]) -> None:
    settings = Settings(sources=fixture_sources, cache={"disk_dir": None},
                        server={"cors_origins": ["https://viewer.example.org"]})
    url = "/v1/collection/col1/experiment/exp1/channel/ch1/"
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        allowed = client.get(url, headers={"Origin": "https://viewer.example.org"})
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.example.org"
        assert "Origin" in allowed.headers["vary"]
        other = client.get(url, headers={"Origin": "https://elsewhere.example.org"})
        assert "access-control-allow-origin" not in other.headers
        preflight = client.options(url, headers={"Origin": "https://elsewhere.example.org",
                                                 "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in preflight.headers


CHANNEL = "/v1/collection/col1/experiment/exp1/channel/ch1/"


@pytest.mark.parametrize(("allowed", "host", "status"), [
    (None, "localhost:8000", 200),
    (None, "LOCALHOST.", 200),
    (None, "127.0.0.1:8000", 200),
    (None, "[::1]:8000", 200),
    (None, "10.1.2.3", 200),                     # an address is its own origin
    (None, "evil.example.org", 400),             # a name that was made to resolve here
    (None, "localhost.evil.example.org", 400),
    (["relay.lab.org"], "relay.lab.org:8000", 200),
    (["relay.lab.org"], "localhost", 400),       # a list replaces the defaults
    ([".lab.org"], "relay.lab.org", 200),
    ([".lab.org"], "lab.org", 200),
    ([".lab.org"], "evil-lab.org", 400),
    (["*"], "evil.example.org", 200),
])
def test_other_host_names_are_refused(fixture_sources: list[dict[str, Any]],
                                      allowed: list[str] | None, host: str, status: int) -> None:
    """DNS rebinding: a page on evil.example.org whose name is made to resolve to 127.0.0.1
    would be same-origin with the relay in the browser; the Host header gives it away."""
    server: dict[str, Any] = {} if allowed is None else {"allowed_hosts": allowed}
    settings = Settings(sources=fixture_sources, cache={"disk_dir": None}, server=server)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get(CHANNEL, headers={"Host": host})
        assert response.status_code == status, response.text
        if status == 400:
            assert response.json()["code"] == 1005
            assert "server.allowed_hosts" in response.json()["message"]
        # a health probe is answered whatever name it used
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_a_wildcard_bind_answers_to_the_machines_own_names() -> None:
    import socket

    from relay.api.middleware import HostFilter

    wildcard = HostFilter(None, "0.0.0.0")
    assert wildcard.allows(f"{socket.gethostname()}:8000")
    assert wildcard.allows("localhost") and not wildcard.allows("evil.example.org")
    assert not HostFilter(None, "127.0.0.1").allows(socket.gethostname() + ".invalid")
    assert HostFilter(["relay.lab.org", "lab"], "0.0.0.0").allows("LAB:8000")


def test_allowed_hosts_may_be_one_comma_separated_string() -> None:
    settings = Settings(server={"allowed_hosts": "lab, relay.lab.org"})
    assert settings.server.allowed_hosts == ("lab", "relay.lab.org")


@pytest.mark.parametrize("path", [CHANNEL, "/no/such/route"])
def test_trace_is_refused_everywhere(fixture_sources: list[dict[str, Any]], path: str) -> None:
    settings = Settings(sources=fixture_sources, cache={"disk_dir": None})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for method in ("TRACE", "TRACK"):
            response = client.request(method, path, headers={"X-Secret": "echo me"})
            assert response.status_code == 405
            assert response.json()["code"] == 1006
            assert "echo me" not in response.text


@pytest.mark.parametrize("path", [
    "/v1/cutout/col1/exp1/ch1/0/0:١٠/0:10/0:10/",       # Arabic-Indic digits
    "/v1/cutout/col1/exp1/ch1/٠/0:10/0:10/0:10/",
    "/v1/cutout/col1/exp1/ch1/0/0:10/0:10/0:１０/",      # full-width digits
    "/v1/cutout/col1/exp1/anno/0/0:10/0:10/0:10/?filter=１,2",
    "/precomputed/col1/exp1/ch1/0/0-６４_0-64_0-16",
    "/precomputed/col1/exp1/ch1/٠/0-64_0-64_0-16",
])
def test_numbers_are_ascii_digits_only(fixture_sources: list[dict[str, Any]], path: str) -> None:
    """Python's \\d and int() take digits of every script; a URL number is ASCII or refused."""
    settings = Settings(sources=fixture_sources, cache={"disk_dir": None})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        response = client.get(path)
    assert response.status_code in (400, 404), response.text
    assert set(response.json()) == {"status", "code", "message"}


def test_a_credential_behind_any_origin_is_warned_about_at_start(tmp_path: Path) -> None:
    """The relay still starts (the warning is the point), here stopped by a required source
    nobody listens for, after the warning."""
    from ..servers import free_port

    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"cache": {"disk_dir": None}, "sources": [
        {"collection": "*", "kind": "boss", "url": f"http://127.0.0.1:{free_port()}",
         "token": "secret-token", "required": True, "retries": 0, "timeout": 2}]}))
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert "any web page a user of this relay opens can read through it" in result.stderr
    assert "secret-token" not in result.stderr
    # listing the viewers' origins silences it
    text = yaml.safe_load(config.read_text())
    text["server"] = {"cors_origins": ["https://viewer.example.org"]}
    config.write_text(yaml.safe_dump(text))
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert "any web page" not in result.stderr


async def test_names_an_upstream_lists_are_checked_before_any_url(upstream: FaultServer) -> None:
    """Finding 12 of issue 25: the index page sent names from an upstream's listing into
    upstream URLs unchecked, with the relay's token (``../../internal/admin?x=`` became a
    request path). They are checked like a client's names, and left out."""
    hostile = ["../../internal/admin?x=", "c/../../x", "a b", "c%2F..", "", 7, None]
    upstream.metadata["/v1/collection/"] = {"collections": ["c", *hostile]}
    upstream.metadata["/v1/collection/c/experiment/"] = {"experiments": ["e", *hostile]}
    upstream.metadata["/v1/collection/c/experiment/e/channel/"] = {"channels": ["ch",
                                                                                *hostile]}
    settings = Settings(sources=[{"collection": "*", "kind": "boss", "url": upstream.url,
                                  "retries": 0, "token": "relay-secret"}],
                        cache={"disk_dir": None})
    with ThreadedServer(create_app(settings)) as relay:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            page = await client.get("/")
            listing = await client.get("/v1/collection/")
    assert page.status_code == 200 and "c / e" in page.text
    assert listing.json() == {"collections": ["c"]}
    assert upstream.targets, "the upstream was asked"
    assert not any("internal" in t or ".." in t or "%2F" in t or "None" in t
                   for t in upstream.targets), upstream.targets
