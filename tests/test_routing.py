"""The served route table: one pattern per handler answers both BossDB prefixes and both
spellings of a path (with and without its trailing slash), and nothing else."""

from __future__ import annotations

import pytest
from starlette.routing import Match, Route

from relay.app import create_app
from relay.config import Settings

ROUTES = [route for route in create_app(Settings(sources=[], cache={"disk_dir": None})).routes
          if isinstance(route, Route)]


def _full_matches(path: str) -> list[Route]:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    return [route for route in ROUTES if route.matches(scope)[0] is Match.FULL]


@pytest.mark.parametrize("path", [
    "/collection", "/collection/c", "/collection/c/experiment", "/collection/c/experiment/e",
    "/collection/c/experiment/e/channel", "/collection/c/experiment/e/channel/ch", "/coord",
    "/coord/f", "/downsample/c/e/ch", "/ping", "/cutout/c/e/ch/0/0:8/0:8/0:8",
    "/cutout/c/e/ch/0/0:8/0:8/0:8/0:1",
])
def test_one_route_answers_both_prefixes_and_both_spellings(path: str) -> None:
    matched = {id(route) for prefix in ("/v1", "/latest") for tail in ("", "/")
               for route in _full_matches(prefix + path + tail)}
    assert len(matched) == 1
    for prefix in ("/v1", "/latest"):
        for tail in ("", "/"):
            assert len(_full_matches(prefix + path + tail)) == 1


@pytest.mark.parametrize("path", [
    "/v2/ping/", "/v1/ping//", "/v1ping/", "/latest/coord/f/g/", "/v1//collection/",
    "/precomputed/c/e/ch/info/", "/healthz/", "/x/v1/ping/",
])
def test_nothing_else_matches(path: str) -> None:
    assert _full_matches(path) == []


def test_paths_without_a_slash_variant_stay_exact() -> None:
    assert len(_full_matches("/precomputed/c/e/ch/info")) == 1
    assert len(_full_matches("/healthz")) == 1
