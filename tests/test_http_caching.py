"""HTTP caching of data for browsers and CDNs (relay/api/validators.py): a strong ETag that
changes with the cuboids' versions, 304 to a conditional GET, Cache-Control from the source's
policy, and never a shared-cacheable answer that depends on a credential."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings

CUBOID = "/v1/cutout/c/e/em/0/0:64/0:64/0:16/"
UNALIGNED = "/v1/cutout/c/e/em/0/10:100/0:64/0:16/"
CHUNK = "/precomputed/c/e/em/0/0-64_0-64_0-16"


def _source(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    path = tmp_path / "em.zarr"
    if not path.exists():
        array = zarr.create_array(str(path), shape=(16, 128, 128), chunks=(16, 64, 64),
                                  dtype=np.uint8, fill_value=0)
        array[:] = 9
    return {"collection": "c", "experiment": "e", "channel": "em", "kind": "zarr",
            "url": path.as_uri(), "voxel_size": [4, 4, 40], "cuboid": [64, 64, 16], **extra}


def _client(tmp_path: Path, source: dict[str, Any], **server: Any) -> TestClient:
    settings = Settings(sources=[source], cache={"disk_dir": None}, server=server)
    return TestClient(create_app(settings), base_url="http://localhost")


@pytest.mark.parametrize("path", [CUBOID, UNALIGNED, CHUNK])
def test_a_conditional_get_with_the_etag_is_304(tmp_path: Path, path: str) -> None:
    with _client(tmp_path, _source(tmp_path)) as client:
        first = client.get(path)
        etag = first.headers["etag"]
        assert first.status_code == 200 and etag.startswith('"') and len(etag) == 34
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        again = client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert client.get(path, headers={"If-None-Match": f'W/{etag}, "x"'}).status_code == 304
        other = client.get(path, headers={"If-None-Match": '"something-else"'})
        assert other.status_code == 200 and other.content == first.content


def test_the_etag_names_the_representation_and_the_version(tmp_path: Path) -> None:
    with _client(tmp_path, _source(tmp_path)) as client:
        blosc = client.get(CUBOID, headers={"Accept": "application/blosc"})
        npygz = client.get(CUBOID, headers={"Accept": "application/npygz"})
        assert blosc.headers["etag"] != npygz.headers["etag"]
        assert "Accept" in blosc.headers["vary"]
        assert client.get(UNALIGNED).headers["etag"] != blosc.headers["etag"]
        # read upstream again (access-mode=raw): a new version, a new tag; the old one is 200
        refreshed = client.get(CUBOID + "?access-mode=raw",
                               headers={"Accept": "application/blosc"})
        assert refreshed.headers["etag"] != blosc.headers["etag"]
        after = client.get(CUBOID, headers={"Accept": "application/blosc",
                                            "If-None-Match": blosc.headers["etag"]})
        assert after.status_code == 200
        gzipped = client.get(CHUNK, headers={"Accept-Encoding": "gzip"})
        plain = client.get(CHUNK, headers={"Accept-Encoding": "identity"})
        assert gzipped.headers["etag"] != plain.headers["etag"]
        assert "Accept-Encoding" in plain.headers["vary"]


@pytest.mark.parametrize("policy", [{"ttl_seconds": 600}, {"writable": True},
                                    {"cache": False}], ids=["ttl", "writable", "uncached"])
def test_data_that_may_change_is_revalidated(tmp_path: Path, policy: dict[str, Any]) -> None:
    """Finding 7 of issue 25: a writable source was sent ``max-age=31536000, immutable``, so
    browsers and CDNs kept the old voxels for a year after a write. Data that may change is
    ``no-cache``: asked again each time, 304 while its ETag holds, 200 once it changed."""
    with _client(tmp_path, _source(tmp_path, **policy)) as client:
        first = client.get(CUBOID)
        assert first.headers["cache-control"] == "public, no-cache"
        if policy.get("cache") is False:
            return
        again = client.get(CUBOID, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        if policy.get("writable"):
            import blosc

            written = client.post(CUBOID, content=blosc.compress(
                np.full((16, 64, 64), 3, np.uint8).tobytes(), typesize=8),
                headers={"Content-Type": "application/blosc"})
            assert written.status_code == 201
        else:
            client.get(CUBOID + "?access-mode=raw")  # read afresh: a new version
        after = client.get(CUBOID, headers={"If-None-Match": first.headers["etag"]})
        assert after.status_code == 200 and after.headers["etag"] != first.headers["etag"]


def test_an_answer_behind_a_token_is_private(tmp_path: Path) -> None:
    with _client(tmp_path, _source(tmp_path), tokens=["secret"]) as client:
        response = client.get(CUBOID, headers={"Authorization": "Token secret"})
        assert response.status_code == 200
        assert response.headers["cache-control"].startswith("private, ")
        assert "Authorization" in response.headers["vary"]
