"""/metrics in Prometheus's format, read back with prometheus-client's own parser: counters are
counters, gauges gauges, latencies histograms by route and cache outcome and by source; the
``X-Cache`` and ``Server-Timing`` headers say the same per response; with ``--workers 2`` any
worker's /metrics counts every worker's requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import zarr
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from relay.app import create_app
from relay.metrics import route_family

from .conftest import make_settings
from .servers import RelayProcess, write_config


def _source(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "em.zarr"
    array = zarr.create_array(str(path), shape=(16, 128, 128), chunks=(16, 64, 64),
                              dtype=np.uint8, fill_value=0)
    array[:] = np.arange(16 * 128 * 128, dtype=np.uint64).reshape(16, 128, 128) % 251
    return [{"collection": "c", "experiment": "e", "channel": "em", "kind": "zarr",
             "url": path.as_uri(), "voxel_size": [4, 4, 40], "cuboid": [64, 64, 16]}]


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(family: Any, suffix: str = "", **labels: str) -> float:
    for sample in family.samples:
        if sample.name == family.name + suffix and all(
                sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise KeyError((family.name, suffix, labels))


def test_the_prometheus_parser_reads_types_and_latencies(tmp_path: Path) -> None:
    app = create_app(make_settings(_source(tmp_path), tmp_path / "cache"))
    cuboid = "/v1/cutout/c/e/em/0/0:64/0:64/0:16/"
    with TestClient(app, base_url="http://localhost") as client:
        cold = client.get(cuboid)
        warm = client.get(cuboid)
        assert (cold.headers["x-cache"], warm.headers["x-cache"]) == ("MISS", "HIT")
        assert 'cache;desc="upstream"' in cold.headers["server-timing"]
        assert 'cache;desc="memory"' in warm.headers["server-timing"]
        assert warm.headers["server-timing"].startswith("app;dur=")
        metadata = client.get("/v1/collection/c/")
        assert "x-cache" not in metadata.headers and "server-timing" in metadata.headers
        missing = client.get("/v1/cutout/c/e/nope/0/0:1/0:1/0:1/")
        assert missing.status_code == 404 and "x-cache" not in missing.headers
        text = client.get("/metrics").text
    families = _families(text)
    assert families["relay_requests"].type == "counter"
    assert _sample(families["relay_requests"], "_total") == 4
    assert families["relay_upstream_reads"].type == "counter"
    latency = families["relay_request_seconds"]
    assert latency.type == "histogram"
    assert _sample(latency, "_count", route="boss_cutout", outcome="upstream") == 1
    assert _sample(latency, "_count", route="boss_cutout", outcome="memory") == 1
    assert _sample(latency, "_count", route="boss_cutout", outcome="error") == 1
    assert _sample(latency, "_count", route="boss_collection", outcome="none") == 1
    assert _sample(latency, "_bucket", route="boss_cutout", outcome="memory", le="+Inf") == 1
    upstream = families["relay_upstream_seconds"]
    assert upstream.type == "histogram"
    assert _sample(upstream, "_count", source="c/e/em") == 1
    assert families["relay_cache_memory_bytes"].type == "gauge"
    assert _sample(families["relay_cache_memory_bytes"]) > 0
    assert families["relay_cache_memory_hits"].type == "counter"
    assert _sample(families["relay_cache_memory_hits"], "_total") >= 1
    assert families["relay_connections_open"].type == "gauge"
    # every family is typed once: the parser would merge a name typed twice
    assert len([line for line in text.splitlines() if line.startswith("# TYPE")]) == len(
        families)


def test_route_families_are_few() -> None:
    assert route_family("/v1/cutout/a/b/c/0/0:1/0:1/0:1/") == "boss_cutout"
    assert route_family("/latest/downsample/a/b/c") == "boss_downsample"
    assert route_family("/v1/collection/a/experiment/b/") == "boss_collection"
    assert route_family("/precomputed/a/b/c/info") == "precomputed_info"
    assert route_family("/precomputed/a/b/c/mesh/info") == "precomputed_mesh"
    assert route_family("/precomputed/a/b/c/0/0-64_0-64_0-16") == "precomputed_chunk"
    assert route_family("/v1/whatever-a-client-sends/x") == "boss_other"
    assert route_family("/anything/else") == "other"


def test_workers_share_their_counters(tmp_path: Path) -> None:
    config = write_config(tmp_path / "relay.yaml", _source(tmp_path), tmp_path / "cache",
                          server={"workers": 2})
    # a new connection per request, so that both workers answer
    with RelayProcess(["--config", str(config)], log=tmp_path / "relay.log") as relay, \
            httpx.Client(timeout=30) as client:
        for _ in range(12):
            response = client.get(f"{relay.url}/v1/cutout/c/e/em/0/0:64/0:64/0:16/",
                                  headers={"Connection": "close"})
            assert response.status_code == 200
        # whichever worker answers /metrics counts all twelve: two workers that both do
        # prove the sum (at most one of them can have served them all)
        workers: set[str] = set()
        for _ in range(200):
            text = client.get(f"{relay.url}/metrics", headers={"Connection": "close"}).text
            families = _families(text)
            assert _sample(families["relay_requests"], "_total") == 12
            workers.update(sample.labels["worker"]
                           for sample in families["relay_connections_open"].samples)
            if len(workers) == 2:
                break
    assert len(workers) == 2, workers  # the live state names the worker that answered
