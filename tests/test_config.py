"""Config: YAML + RELAY_ environment + ${VAR:-default}; one clear line and exit 2 when bad."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import ConfigFileError, Settings, load_settings
from relay.upstreams.kinds import registry

EXAMPLE = """
server:
  host: 127.0.0.1
  port: 8000
  cors_origins: ["*"]
cache:
  memory_bytes: 512MiB
  disk_dir: ${RELAY_TEST_CACHE:-/tmp/relay-cache}
  disk_bytes: 20GiB
  redis_url: null
sources:
  - collection: demo
    experiment: synthetic
    channel: em
    kind: zarr
    url: file:///data/demo.ome.zarr
    voxel_size: [4, 4, 40]
    voxel_unit: nanometers
  - collection: demo
    experiment: synthetic
    channel: seg
    kind: precomputed
    url: file:///data/demo_precomputed/seg
  - collection: "*"
    kind: boss
    url: ${RELAY_TEST_URL}
    token: ${BOSS_TOKEN:-public}
    cache: true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_design_example_loads_with_expansion(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_URL", "file:///elsewhere")
    monkeypatch.delenv("RELAY_TEST_CACHE", raising=False)
    monkeypatch.delenv("BOSS_TOKEN", raising=False)
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert settings.cache.memory_bytes == 512 * 2**20
    assert settings.cache.disk_bytes == 20 * 2**30
    assert str(settings.cache.disk_dir) == "/tmp/relay-cache"
    # kind options are validated by the kind's own model
    assert registry.create(settings.sources[0]).options.model_dump()["voxel_size"] == (4.0, 4.0,
                                                                                     40.0)
    assert settings.sources[2].url == "file:///elsewhere"
    assert registry.create(settings.sources[2]).options.model_dump()["token"] == "public"
    assert settings.sources[2].experiment == "*"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_CACHE__MEMORY_BYTES", "1GiB")
    monkeypatch.setenv("RELAY_SERVER__PORT", "9001")
    monkeypatch.setenv("RELAY_TEST_URL", "x")
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert settings.cache.memory_bytes == 2**30
    assert settings.server.port == 9001
    assert str(settings.cache.disk_dir) == "/tmp/relay-cache"  # the rest of the file stays


def test_defaults_without_a_file() -> None:
    settings = Settings()
    assert settings.server.port == 8000
    assert settings.cache.disk_dir is not None and settings.cache.disk_dir.is_absolute()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cache:\n  memory_bytes: lots\n", "cache.memory_bytes"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  prot: 80\n", "server.prot: unknown key"),
        ("sources:\n  - collection: a\n    kind: zar\n    url: x\n",
         "sources.0.kind: unknown upstream kind 'zar'"),
        ("sources:\n  - collection: a/b\n    kind: zarr\n    url: x\n", "sources.0.collection"),
        ("sources:\n  - collection: a\n    kind: zarr\n", "sources.0.url: Field required"),
        ("sources:\n  - collection: a\n    kind: zarr\n    url: x\n    axis: zyx\n",
         "sources.0.axis: unknown key for kind zarr"),
        ("sources:\n  - collection: a\n    kind: boss\n    url: x\n    axes: zyx\n",
         "sources.0.axes: unknown key for kind boss"),
        ("sources:\n  - collection: a\n    kind: dvid\n    url: x\n",
         "sources.0.uuid: Field required"),
        ("sources:\n  - collection: a\n    kind: zarr\n    url: x\n    channel_index: -1\n",
         "sources.0.channel_index: Input should be greater than or equal to 0"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        load_settings(write(tmp_path, text))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cache:\n  disk_bytes: -3\n  memory_bytes: plenty\n")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relay: config error:")
    assert "cache." in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr
