"""Startup refuses, in one line, a required source that does not answer; an optional one does
not stop the relay (its requests get the upstream error instead)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from ..servers import RelayProcess, free_port, write_config


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def _dead_boss(required: bool) -> dict[str, Any]:
    # a loopback port nobody listens on: connection refused, at once
    return {"collection": "remote", "kind": "boss", "url": f"http://127.0.0.1:{free_port()}",
            "retries": 0, "timeout": 2, "required": required}


def test_a_required_boss_source_that_does_not_answer_stops_startup(tmp_path: Path) -> None:
    config = write_config(tmp_path / "relay.yaml", [_dead_boss(True)], None)
    result = _serve(config)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: required source remote/*/* (boss) does not answer: "), last
    assert "127.0.0.1" in last  # which host, so the user can tell which source
    assert "Traceback" not in result.stderr


def test_a_required_store_that_is_missing_stops_startup(tmp_path: Path) -> None:
    source = {"collection": "c", "experiment": "e", "channel": "ch", "kind": "zarr",
              "url": str(tmp_path / "nowhere.zarr"), "required": True}
    config = write_config(tmp_path / "relay.yaml", [source], None)
    result = _serve(config)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "relay: required source c/e/ch (zarr) does not answer: ")
    assert "Traceback" not in result.stderr


def test_an_optional_source_that_does_not_answer_is_an_error_per_request(
        fixture_sources: list[dict[str, Any]], tmp_path: Path) -> None:
    sources = [*fixture_sources, _dead_boss(False)]
    config = write_config(tmp_path / "relay.yaml", sources, None)
    with RelayProcess(["--config", str(config)]) as relay:
        dead = httpx.get(relay.url + "/v1/collection/remote/experiment/", timeout=30)
        assert dead.status_code == 503 and dead.json()["code"] == 5001
        alive = httpx.get(relay.url + "/v1/cutout/col1/exp1/ch1/0/0:10/0:10/0:10/", timeout=30)
        assert alive.status_code == 200
