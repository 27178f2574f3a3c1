"""Metadata answers kept as rendered bytes (relay.api.rendered): the same bytes as rendering
afresh, made once per TTL, never for an error, per caller credential, and cleared by a write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest
import zarr
from starlette.testclient import TestClient

from relay.app import create_app

from .conftest import make_settings

CHANNEL = "/v1/collection/c/experiment/e/channel/ch/"


def _client(tmp_path: Path, ttl: float) -> TestClient:
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(8, 32, 32), chunks=(8, 32, 32),
                      dtype="uint8", zarr_format=3)[:] = 3
    source = {"collection": "c", "experiment": "e", "channel": "ch", "kind": "zarr",
              "url": (tmp_path / "a.zarr").as_uri(), "metadata_ttl_seconds": ttl,
              "writable": True}
    app = create_app(make_settings([source], None))
    return TestClient(app, base_url="http://localhost")


def _counted(client: TestClient) -> list[str]:
    """Count the metadata service's channel answers (each one a rendering)."""
    made: list[str] = []
    service = client.app.state.metadata  # type: ignore[attr-defined]
    original = service.channel

    async def channel(*args: Any) -> Any:
        made.append(args[2])
        return await original(*args)

    service.channel = channel
    return made


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, 60.0) as client:
        yield client


def test_an_answer_is_made_once_and_sent_as_rendered(client: TestClient) -> None:
    made = _counted(client)
    first, second = client.get(CHANNEL), client.get(CHANNEL)
    assert made == ["ch"]
    assert first.content == second.content
    assert second.headers["content-type"] == "application/json"
    # the bytes Starlette's JSONResponse would send
    assert second.content == json.dumps(first.json(), ensure_ascii=False,
                                         separators=(",", ":")).encode()


def test_errors_are_never_kept(client: TestClient) -> None:
    made = _counted(client)
    for _ in range(2):
        response = client.get("/v1/collection/c/experiment/e/channel/nope/")
        assert response.status_code == 404
    assert made == ["nope", "nope"]


def test_each_credential_has_its_own(client: TestClient) -> None:
    made = _counted(client)
    client.get(CHANNEL, headers={"Authorization": "Token a"})
    client.get(CHANNEL, headers={"Authorization": "Token b"})
    client.get(CHANNEL, headers={"Authorization": "Token a"})
    assert made == ["ch", "ch"]


def test_a_write_clears_them(client: TestClient) -> None:
    made = _counted(client)
    client.get(CHANNEL)
    body = blosc.compress(np.ones((1, 2, 2), np.uint8).tobytes(), typesize=8)
    created = client.post("/v1/cutout/c/e/ch/0/0:2/0:2/0:1/", content=body,
                          headers={"Content-Type": "application/blosc"})
    assert created.status_code == 201, created.text
    client.get(CHANNEL)
    assert made == ["ch", "ch"]


def test_a_ttl_of_zero_keeps_nothing(tmp_path: Path) -> None:
    with _client(tmp_path, 0.0) as client:
        made = _counted(client)
        client.get(CHANNEL)
        client.get(CHANNEL)
        assert made == ["ch", "ch"]
