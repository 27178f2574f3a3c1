"""Bad input never yields a 500 or a traceback: always BossDB JSON with a 4xx status."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ..servers import RelayProcess, write_config
from .conftest import check_boss_answer

NASTY_NAMES = ["..", ".", "%2e%2e", "%2E%2E%2F", "a/b", "\x00", "a\x00b", "x" * 10_000, "ü",
               " ", "%00", "col1 ", "*", "-", "col1;drop", "${HOME}", "\\..\\", "", "con"]
NASTY_RANGES = ["10:5", "5:5", "-1:5", "a:b", "1.5:3", "9" * 30 + ":1", "0:" + "9" * 30, "0:",
                ":5", "0:10:20", "0-10", "1e3:2e3", "0x0:0x10", "٣:٥", "0:2001", "0:10"]
NASTY_RES = ["0", "1", "2", "3", "9", "10", "-1", "a", "00", "٣"]

names = st.one_of(st.sampled_from(["col1", "exp1", "ch1", "anno"]), st.sampled_from(NASTY_NAMES),
                  st.text(max_size=40))
ranges = st.one_of(st.sampled_from(NASTY_RANGES),
                   st.builds(lambda a, b: f"{a}:{b}", st.integers(-5, 3000),
                             st.integers(-5, 3000)),
                   st.text(max_size=20))
accepts = st.one_of(st.none(), st.sampled_from(["*/*", "image/jpeg", "application/npygz",
                                                "text/csv", "application/blosc;q=0", ",,,",
                                                "image/*;q=abc", "a" * 5000]),
                    st.text(max_size=50))
queries = st.one_of(st.none(), st.sampled_from(
    ["filter=1,2", "filter=", "filter=-1", "filter=" + ",".join(["1"] * 5000),
     "access-mode=raw", "access-mode=bogus", "no-cache=maybe", "iso=true", "window=0,255",
     "filter=99999999999999999999999"]))


def _segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(c=names, e=names, ch=names, res=st.one_of(st.sampled_from(NASTY_RES), st.text(max_size=5)),
       x=ranges, y=ranges, z=ranges, t=st.one_of(st.none(), ranges), accept=accepts,
       query=queries, prefix=st.sampled_from(["/v1", "/latest", "/v0.7", "/v2", ""]))
def test_generated_cutout_urls(client: TestClient, c: str, e: str, ch: str, res: str, x: str,
                               y: str, z: str, t: str | None, accept: str | None,
                               query: str | None, prefix: str) -> None:
    parts = [c, e, ch, res, x, y, z] + ([t] if t is not None else [])
    url = prefix + "/cutout/" + "/".join(_segment(p) for p in parts) + "/"
    if query:
        url += "?" + query
    headers = {"Accept": accept} if accept is not None else {}
    try:
        response = client.get(url, headers=headers)
    except UnicodeEncodeError:
        return  # a header no HTTP client can send
    check_boss_answer(response)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=names, e=names, ch=names,
       kind=st.sampled_from(["channel", "experiment", "collection", "coord", "downsample"]))
def test_generated_metadata_urls(client: TestClient, c: str, e: str, ch: str, kind: str) -> None:
    s = [_segment(p) for p in (c, e, ch)]
    url = {
        "channel": f"/v1/collection/{s[0]}/experiment/{s[1]}/channel/{s[2]}/",
        "experiment": f"/v1/collection/{s[0]}/experiment/{s[1]}",
        "collection": f"/v1/collection/{s[0]}/experiment/",
        "coord": f"/v1/coord/{s[0]}",
        "downsample": f"/v1/downsample/{s[0]}/{s[1]}/{s[2]}",
    }[kind]
    check_boss_answer(client.get(url))


@pytest.fixture(scope="module")
def hostile(fixture_sources: list[dict[str, Any]],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    config = write_config(root / "relay.yaml", fixture_sources, root / "cache")
    with RelayProcess(["--config", str(config)]) as relay:
        yield relay, root


def _raw_get(port: int, path: str) -> bytes:
    """Send the path byte for byte: HTTP clients would normalise away the dot segments."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return raw


@pytest.mark.parametrize(("path", "status"), [
    ("/v1/collection/../../../etc/passwd", 404),
    ("/v1/collection/%2e%2e/experiment/%2e%2e/channel/%2e%2e/", 404),
    ("/v1/cutout/col1/exp1/..%2f..%2fetc/0/0:1/0:1/0:1/", 404),
    ("/v1/cutout/col1/exp1/ch1%00/0/0:1/0:1/0:1/", 404),
    ("/v1/cutout/col1/exp1/ch1/0/0:1/0:1/0:1/%00/", 400),
    ("/v1/cutout/col1/exp1/" + "x" * 10_000 + "/0/0:1/0:1/0:1/", 404),
    ("/v1/coord/%ff%fe", 404),
    ("/v1/cutout/col1/exp1/ch1/0/0:10/0:10/0:10/?filter=%00", 400),
    ("/v1//collection//col1//experiment//exp1", 200),  # merged slashes: a valid request
])
def test_raw_hostile_paths_on_a_real_server(hostile: tuple[RelayProcess, Path], path: str,
                                            status: int) -> None:
    relay, root = hostile
    raw = _raw_get(relay.port, path)
    assert int(raw.split(b" ", 2)[1]) == status, raw[:300]
    assert b"Traceback" not in raw
    if status != 200:
        assert b'"code":' in raw
    # nothing was created outside the cache directory
    assert sorted(p.name for p in root.iterdir()) == ["cache", "relay.yaml"]
