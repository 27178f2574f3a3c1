"""A disk that fills up, turns read-only or fails mid-write: the relay answers every request
from upstream, logs the failure once, counts every one, never crashes, and leaves no partial
value file behind. Faults are injected at the disk tier's value-file writer
(``hooked_relay``), the place a full or read-only file system would first refuse."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from ..servers import write_config
from .conftest import NoiseStore, decode, hooked_relay
from .hooked_relay import WRITE_ERROR


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS", "EIO"])
def test_a_failing_disk_slows_the_relay_down_but_never_fails_it(
        noise: NoiseStore, tmp_path: Path, fault: str) -> None:
    cache_dir, log = tmp_path / "cache", tmp_path / "relay.log"
    # one packed cuboid in memory and no decoded ones: reads must go past memory
    config = write_config(tmp_path / "relay.yaml", [noise.source], cache_dir,
                          memory_bytes=300_000, decoded_bytes=0)
    corners = noise.cuboid_boxes()
    with hooked_relay(config, {WRITE_ERROR: fault}, log=log) as relay:
        empty = relay.metrics()["relay_cache_disk_bytes"]  # the index database alone
        for _ in range(2):
            for corner in corners:
                response = httpx.get(relay.url + noise.url(corner), timeout=60)
                assert response.status_code == 200, response.text
                np.testing.assert_array_equal(decode(response.content), noise.truth(corner))
        metrics = relay.metrics()
        # every cuboid was read upstream twice: nothing could be kept on disk
        assert metrics["relay_upstream_reads_total"] >= 2 * len(corners) - 1
        assert metrics["relay_cache_disk_errors_total"] >= 2 * len(corners) - 1
        assert metrics["relay_cache_disk_bytes"] == empty
        assert relay.process is not None and relay.process.poll() is None
    text = log.read_text()
    failures = [line for line in text.splitlines() if "cache tier disk failed on put" in line]
    assert len(failures) == 1, text[-3000:]  # logged once, not once per cuboid
    assert "Traceback" not in text
    # no half-written value file is left to fill the disk further
    assert not list(cache_dir.rglob("*.val"))
