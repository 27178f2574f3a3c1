"""Logs a request can be followed through: one access line per request with its id, the id
passed down a chain of relays (and a W3C traceparent with it), in text or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr

from .servers import RelayProcess, wait_for, write_config

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Chain:
    """laptop → lab → institute (JSON logs) → a local zarr."""

    def __init__(self, root: Path) -> None:
        path = root / "em.zarr"
        array = zarr.create_array(str(path), shape=(16, 128, 128), chunks=(16, 64, 64),
                                  dtype=np.uint8, fill_value=0)
        array[:] = 7
        source = {"collection": "c", "experiment": "e", "channel": "em", "kind": "zarr",
                  "url": path.as_uri(), "voxel_size": [4, 4, 40], "cuboid": [64, 64, 16]}
        self.logs: dict[str, Path] = {}
        self.relays: dict[str, RelayProcess] = {}
        upstream: list[dict[str, Any]] = [source]
        for name, log_format in (("institute", "json"), ("lab", "text"), ("laptop", "text")):
            config = write_config(root / f"{name}.yaml", upstream, root / f"{name}-cache",
                                  server={"log_format": log_format})
            self.logs[name] = root / f"{name}.log"
            self.relays[name] = RelayProcess(["--config", str(config)],
                                             log=self.logs[name]).start()
            upstream = [{"collection": "*", "kind": "boss", "url": self.relays[name].url}]

    def access(self, name: str) -> list[str]:
        return [line for line in self.logs[name].read_text().splitlines()
                if "relay.access" in line]

    def stop(self) -> None:
        for relay in reversed(self.relays.values()):
            relay.stop()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    chain = Chain(tmp_path)
    yield chain
    chain.stop()


def _lines_with(chain: Chain, text: str) -> dict[str, list[str]]:
    return {name: [line for line in chain.access(name) if text in line]
            for name in chain.relays}


def test_a_request_id_is_in_the_access_log_of_every_hop(chain: Chain) -> None:
    laptop = chain.relays["laptop"].url
    cuboid = "/v1/cutout/c/e/em/0/0:64/0:64/0:16/"
    given = httpx.get(laptop + cuboid, headers={"X-Request-Id": "follow-me-1",
                                                "traceparent": TRACEPARENT}, timeout=30)
    assert given.status_code == 200 and given.headers["x-request-id"] == "follow-me-1"
    wait_for(lambda: all(_lines_with(chain, "follow-me-1").values()), 10,
             "the id in all three access logs")
    # the institute logs JSON lines: the id, the forwarded traceparent, and the facts
    # (the hops' metadata requests for it carry the same id: the cutout's line is the one)
    lines = [json.loads(text) for text in _lines_with(chain, "follow-me-1")["institute"]]
    line = next(entry for entry in lines if "/cutout/" in entry["path"])
    assert line["request_id"] == "follow-me-1" and line["traceparent"] == TRACEPARENT
    assert line["status"] == 200 and line["outcome"] == "upstream" and line["bytes"] > 0
    assert line["path"].startswith("/v1/cutout/c/e/em/0/")
    laptop_line = next(text for text in _lines_with(chain, "follow-me-1")["laptop"]
                       if "/cutout/" in text)
    assert '"GET /v1/cutout/c/e/em/0/0:64/0:64/0:16/" 200' in laptop_line
    assert " upstream id=follow-me-1" in laptop_line

    # no id given: the laptop makes one, and the hops behind it log the same
    made = httpx.get(laptop + "/v1/cutout/c/e/em/0/64:128/0:64/0:16/", timeout=30)
    rid = made.headers["x-request-id"]
    assert len(rid) == 16
    def logged_everywhere() -> bool:
        text_lines = _lines_with(chain, f"id={rid}")
        json_lines = _lines_with(chain, f'"request_id": "{rid}"')
        return bool(text_lines["laptop"] and text_lines["lab"] and json_lines["institute"])

    wait_for(logged_everywhere, 10, "the made id in all three access logs")

    # a warm repeat stays at the laptop: HIT, and only the laptop logs it
    again = httpx.get(laptop + cuboid, headers={"X-Request-Id": "follow-me-2"}, timeout=30)
    assert again.headers["x-cache"] == "HIT"
    wait_for(lambda: bool(_lines_with(chain, "follow-me-2")["laptop"]), 10, "the laptop line")
    assert not _lines_with(chain, "follow-me-2")["lab"]


def test_an_id_that_is_not_a_plain_token_is_replaced(chain: Chain) -> None:
    response = httpx.get(chain.relays["laptop"].url + "/v1/collection/",
                         headers={"X-Request-Id": "bad id\twith <stuff>"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-request-id"] != "bad id\twith <stuff>"
    assert len(response.headers["x-request-id"]) == 16


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_access_log_keeps_tokens_out_and_its_lines_whole(tmp_path: Path,
                                                             log_format: str) -> None:
    """Findings 9 and 13 of issue 25: the viewer's ``/?token=T`` was written to the access log
    in clear, and a ``%0a`` in any URL forged a whole extra line of the text log."""
    secret = "s3cret-viewer-token"
    config = write_config(tmp_path / "relay.yaml", [], None,
                          server={"log_format": log_format, "tokens": [secret]})
    log = tmp_path / "relay.log"
    forged = "%0a2026-01-01 00:00:00,000 INFO relay.access: 6.6.6.6 %22GET /forged%22 200"
    with RelayProcess(["--config", str(config)], log=log) as relay:
        httpx.get(f"{relay.url}/?token={secret}", follow_redirects=False)
        httpx.get(f"{relay.url}/healthz")
        httpx.get(f"{relay.url}/v1/collection/x{forged}/",
                  headers={"Authorization": f"Token {secret}"})
        httpx.get(f"{relay.url}/v1/collection/?access_token={secret}&t%6Fken={secret}",
                  headers={"Authorization": f"Token {secret}"})
        wait_for(lambda: "access_token=" in log.read_text(), 30, "the last access line")
    text = log.read_text()
    assert secret not in text
    assert text.count("REDACTED") >= 3
    lines = text.splitlines()
    assert not any("6.6.6.6" in line and "/forged" in line and line.find("6.6.6.6") < 40
                   for line in lines)
    (escaped,) = [line for line in lines if "forged" in line]
    if log_format == "json":
        assert json.loads(escaped)["path"].startswith("/v1/collection/x%0A2026")
    else:
        assert '"GET /v1/collection/x%0A2026-01-01%2000:00:00,000' in escaped
