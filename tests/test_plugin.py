"""A kind from outside the relay, installed through the ``relay.upstreams`` entry point
(tests/plugin): it declares an option of its own, passes ``UpstreamSuite`` unchanged, and a
typo in its option stops ``relay serve`` with a config error naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from relay.testing import UpstreamSuite
from relay.upstreams.kinds import registry

from .conftest import PLUGIN_PATH


class TestNpyPlugin(UpstreamSuite):
    kind = "npy"
    levels = 1
    supports_offset = False

    def write_store(self, path: Path, levels: list[np.ndarray],
                    voxel_size: tuple[float, float, float],
                    offset: tuple[int, int, int]) -> dict[str, Any]:
        path.mkdir(parents=True)
        np.save(path / "volume.npy", levels[0].transpose(2, 1, 0))  # stored x, y, z
        return {"url": str(path / "volume.npy"), "order": "xyz", "voxel_size": voxel_size}


def test_the_plugin_was_found_through_its_entry_point() -> None:
    cls = registry.get("npy")
    assert cls.__module__ == "relay_npy"
    assert set(cls.Options.model_fields) == {"mmap", "order", "voxel_size"}


def test_a_typo_in_a_plugin_option_is_a_startup_config_error(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.uint8))
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"cache": {"disk_dir": None}, "sources": [
        {"collection": "c", "kind": "npy", "url": str(tmp_path / "v.npy"), "mmapp": False}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PLUGIN_PATH), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"relay: config error: {config}: sources.0.mmapp: unknown key for kind npy"), lines
    assert "mmap, order, voxel_size" in lines[0]
