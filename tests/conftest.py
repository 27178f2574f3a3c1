from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("relay.testing")

#: An upstream kind from outside the relay, found through its entry point (tests/plugin): on
#: the path before the relay first looks for plugins.
PLUGIN_PATH = Path(__file__).resolve().parent / "plugin"
sys.path.insert(0, str(PLUGIN_PATH))

from starlette.testclient import TestClient  # noqa: E402

from relay.app import create_app  # noqa: E402
from relay.config import Settings  # noqa: E402

from .volumes import write_fixture  # noqa: E402


@pytest.fixture(scope="session")
def fixture_sources(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The §8 conformance fixture, written once per session."""
    return write_fixture(tmp_path_factory.mktemp("stores"))


def make_settings(sources: list[dict[str, Any]], cache_dir: Path | None,
                  **cache: Any) -> Settings:
    # the durable state beside the cache (or in a directory of its own): never the user's
    state = (cache_dir.parent / f"{cache_dir.name}-state" if cache_dir is not None
             else Path(tempfile.mkdtemp(prefix="relay-state-")))
    return Settings(
        sources=sources,
        server={"state_dir": state},
        cache={"disk_dir": cache_dir, "memory_bytes": 256 * 2**20, **cache},
    )


@pytest.fixture
def client(fixture_sources: list[dict[str, Any]], tmp_path: Path) -> Iterator[TestClient]:
    """A relay on the fixture, with a fresh memory and disk cache."""
    app = create_app(make_settings(fixture_sources, tmp_path / "cache"))
    with TestClient(app, raise_server_exceptions=False,
                    base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo, generated once per session (as `relay serve` does on first run)."""
    from relay.demo import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo-root"))


@pytest.fixture(scope="session")
def demo_relay(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`relay serve` with no config (the embedded demo, as `make run` starts it), as a
    subprocess on a free port, shared by the end-to-end tests of real clients."""
    from .servers import RelayProcess

    home = tmp_path_factory.mktemp("demo-home")
    env = {"RELAY_DEMO_DIR": str(demo_dir.parent), "HOME": str(home)}
    with RelayProcess([], env=env, log=home / "relay.log") as process:
        yield process


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real redis-server, shared by a module's tests (each uses keys of its own)."""
    from .servers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real 3-master Redis Cluster, shared by a module's tests."""
    from .servers import RedisClusterServers

    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(params=["server", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of a single redis-server, then of a Redis Cluster: the same tests pass on both."""
    fixture = "redis_server" if request.param == "server" else "redis_cluster"
    url: str = request.getfixturevalue(fixture).url
    return url
