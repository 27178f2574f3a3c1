"""The command line: the demo generator, and the exact command the Docker image runs."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest
import yaml
import zarr

from relay.config import Settings

from .servers import RelayProcess, self_signed

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_serve_loopback_port_8000() -> None:
    settings = Settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)


def test_relay_demo_prints_a_config_that_serves_it(demo_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--dir", str(demo_dir.parent)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    config = yaml.safe_load(result.stdout)
    assert [s["channel"] for s in config["sources"]] == ["em", "seg", "prob"]
    assert Settings(**config).sources[0].kind == "zarr"


def test_the_docker_entry_command(demo_dir: Path, tmp_path: Path) -> None:
    """`relay serve --config /config/relay.yaml` with the image's config file, outside Docker:
    only the environment differs (loopback, a port the system chooses, a temp cache)."""
    relay_bin = shutil.which("relay", path=str(Path(sys.executable).parent))
    assert relay_bin is not None, "the console script `relay` is installed"
    env = {"RELAY_DEMO_DATA": str(demo_dir), "RELAY_SERVER__HOST": "127.0.0.1",
           "RELAY_CACHE_DIR": str(tmp_path / "cache")}
    command = [relay_bin, "serve"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["relay", "serve", "--config", "/config/relay.yaml"]' in dockerfile
    assert "COPY docker/relay.yaml /config/relay.yaml" in dockerfile
    with RelayProcess(["--config", str(ROOT / "docker" / "relay.yaml")], env=env,
                      command=command) as relay:
        response = httpx.get(
            f"{relay.url}/v1/cutout/demo/synthetic/em/1/0:300/0:200/5:9/", timeout=60
        )
        assert response.status_code == 200
        expected = zarr.open_array(str(demo_dir / "em.ome.zarr" / "1"), mode="r")[5:9, :200, :300]
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(4, 200, 300)
        np.testing.assert_array_equal(got, expected)
    assert (tmp_path / "cache").is_dir()  # the cache went where the config said


def test_an_unusable_cache_dir_fails_fast_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "relay.yaml"
    config.write_text(f"cache:\n  disk_dir: {blocker / 'cache'}\n")
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("relay: cannot use cache.disk_dir")
    assert "Traceback" not in result.stderr


def test_tls_serves_https(fixture_sources: list[dict[str, object]], tmp_path: Path) -> None:
    from .servers import write_config

    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path / "relay.yaml", fixture_sources, tmp_path / "cache")
    text = config.read_text().replace("server:\n", f"server:\n  tls_cert: {cert}\n"
                                                   f"  tls_key: {key}\n", 1)
    config.write_text(text)
    process = RelayProcess(["--config", str(config)])
    process.url_scheme = "https"
    with process:
        port = process.port
        response = httpx.get(f"https://127.0.0.1:{port}/latest/collection/col1/experiment/exp1/"
                             "channel/ch1/", verify=ssl.create_default_context(cafile=cert))
        assert response.status_code == 200 and response.json()["datatype"] == "uint8"
        # a relay chained to it verifies its certificate (certifi's CAs): a self-signed one is
        # refused at once, not retried, and the error says why
        asyncio.run(_refused_as_untrusted(f"https://127.0.0.1:{port}"))


async def _refused_as_untrusted(url: str) -> None:
    from relay.config import SourceSettings
    from relay.errors import UpstreamUnavailable
    from relay.model import ChannelRef
    from relay.upstreams.kinds import registry

    upstream = registry.create(SourceSettings(collection="*", kind="boss", url=url, retries=3))
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamUnavailable, match="TLS certificate is not trusted"):
            await upstream.channel_info(ChannelRef("col1", "exp1", "ch1"))
    finally:
        await upstream.aclose()
    assert time.monotonic() - started < 5  # no backoff: retries were not spent on it


def test_tls_needs_both_files(tmp_path: Path) -> None:
    from relay.config import ConfigFileError, load_settings

    config = tmp_path / "relay.yaml"
    config.write_text(f"server:\n  tls_cert: {tmp_path / 'cert.pem'}\n")
    try:
        load_settings(config)
    except ConfigFileError as exc:
        assert "tls_cert and tls_key go together" in str(exc)
    else:
        raise AssertionError("a lone tls_cert was accepted")


def test_port_zero_reports_the_bound_port_and_a_busy_port_is_one_line(tmp_path: Path) -> None:
    """``--port 0`` binds a port the system chooses and writes it to ``--port-file`` (how the
    test suite starts relays without a free-port race); asking for a port that is taken ends
    with one line and status 1."""
    config = tmp_path / "relay.yaml"
    config.write_text("cache:\n  disk_dir: null\n")
    with RelayProcess(["--config", str(config)]) as relay:
        assert relay.port > 0
        assert int(relay.port_file.read_text()) == relay.port
        assert httpx.get(f"{relay.url}/healthz").json() == {"status": "ok"}
        busy = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(config),
                               "--port", str(relay.port)],
                              capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines()[-1].startswith(
        f"relay: cannot serve on 127.0.0.1:{relay.port}")
    assert "Traceback" not in busy.stderr


def test_relay_demo_leaves_its_directory_readable_by_other_users(tmp_path: Path) -> None:
    """A container bakes the demo as root and serves it as another user: every directory of
    it must be searchable and every file readable by others (mkdtemp's 0700 was not)."""
    import os
    import stat

    result = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); from relay.cli import main; "
         f"sys.exit(main(['demo', '--dir', {str(tmp_path)!r}]))"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo-v1"
    paths = [demo, *demo.rglob("*")]
    assert len(paths) > 10
    for path in paths:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        wanted = 0o005 if path.is_dir() else 0o004  # others: r-x on directories, r on files
        assert mode & wanted == wanted, (path, oct(mode))
