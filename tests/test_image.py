"""The Docker image, built from the Dockerfile and run for real, without a Docker daemon.

Debian's ``buildah`` builds the Dockerfile (chroot isolation, host network) over a stand-in for
``python:3.11-slim``, which cannot be pulled here: a Debian bookworm root file system with
python3 and its venv module, made with ``mmdebstrap`` and imported with ``podman import``. The
machine's CA bundle is mounted into the build for pip (``PIP_CERT``); nothing of this machine
goes into the Dockerfile. ``buildah run`` then runs the image's own command as the image's user:
the demo it baked in is read with intern, and the compose file's two-relay chain (a lab relay
and a laptop relay with the laptop config mounted as compose mounts it) answers through the
laptop relay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
import zarr
from intern.remote.boss import BossRemote

from .servers import wait_for

ROOT = Path(__file__).resolve().parent.parent
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TAG = f"relay-test-{os.getpid()}"
BASE = f"localhost/{TAG}-base:bookworm"
IMAGE = f"localhost/{TAG}:latest"
READY = 120.0


def _run(command: list[str], timeout: float = 900) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rootfs = tmp_path_factory.mktemp("image") / "rootfs.tar"
    _run(["mmdebstrap", "--quiet", "--variant=apt",
          "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs)])
    _run(["podman", "import", "--quiet", str(rootfs), BASE])
    rootfs.unlink()
    # the docker format, as `docker build` makes: OCI configs have no HEALTHCHECK
    build = ["buildah", "bud", "--quiet", "--format", "docker", "--isolation", "chroot",
             "--network", "host", "--build-arg", f"BASE={BASE}", "-t", IMAGE]
    if os.path.exists(CA_BUNDLE):  # pip reaches the index as it does on this machine
        build += ["--build-arg", "PIP_CERT=/run/host-ca.crt",
                  "-v", f"{CA_BUNDLE}:/run/host-ca.crt:ro"]
    try:
        _run([*build, str(ROOT)], timeout=1800)
        yield IMAGE
    finally:
        subprocess.run(["buildah", "rmi", "--force", IMAGE], capture_output=True)
        subprocess.run(["podman", "rmi", "--force", BASE], capture_output=True)


def _config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_run(["buildah", "inspect", "--type", "image", image]))
    return config


class Container:
    """One ``buildah run`` of the image on the host's network; the relay inside binds a port
    the system chooses on 127.0.0.1 and logs it."""

    def __init__(self, image: str, log: Path, env: dict[str, str] | None = None,
                 volumes: list[str] | None = None, command: list[str] | None = None) -> None:
        self.name = _run(["buildah", "from", "--quiet", image]).strip()
        self.log = log
        self.port = 0
        env = {"RELAY_SERVER__HOST": "127.0.0.1", "RELAY_SERVER__PORT": "0", **(env or {})}
        self.argv = ["buildah", "run", "--isolation", "chroot", "--network", "host",
                     *(f"--env={k}={v}" for k, v in env.items()),
                     *(f"--volume={v}" for v in volumes or []),
                     self.name, "--", *(command or _config(image)["Docker"]["config"]["Cmd"])]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Container:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        def serving() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            found = re.search(r"serving \d+ source\(s\) on http://127\.0\.0\.1:(\d+)",
                              self.log.read_text())
            if not found:
                return False
            self.port = int(found[1])
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(serving, READY, "the container to serve")
        except RuntimeError:
            raise AssertionError(
                f"the container did not serve: {self.log.read_text()[-3000:]}") from None
        return self

    def exec(self, *command: str) -> str:
        """Another process in the same container (as the image's user)."""
        return _run(["buildah", "run", "--isolation", "chroot", "--network", "host",
                     self.name, "--", *command])

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        subprocess.run(["buildah", "rm", self.name], capture_output=True)


def _demo_truth(container: Container, channel: str, level: int) -> np.ndarray:
    """The demo as baked into the image (read from the container's own files)."""
    mounted = Path(_run(["buildah", "mount", container.name]).strip())
    try:
        path = mounted / f"opt/relay/demo/demo-v1/{channel}.ome.zarr/{level}"
        return np.asarray(zarr.open_array(str(path), mode="r")[...])
    finally:
        subprocess.run(["buildah", "umount", container.name], capture_output=True)


def _read_demo(url: str) -> dict[str, np.ndarray]:
    remote = BossRemote({"protocol": "http", "host": url.removeprefix("http://"),
                         "token": "public"})
    em = remote.get_channel("em", "demo", "synthetic")
    prob = remote.get_channel("prob", "demo", "synthetic")
    return {"em": remote.get_cutout(em, 0, [100, 612], [200, 712], [3, 19]),
            "prob": remote.get_cutout(prob, 1, [0, 300], [0, 200], [0, 8])}


def test_the_image_serves_its_demo_to_intern_as_its_user(image: str, tmp_path: Path) -> None:
    config = _config(image)["Docker"]["config"]
    assert config["User"] == "relay"
    with Container(image, tmp_path / "relay.log") as relay:
        assert relay.exec("id", "-un").strip() == "relay"
        got = _read_demo(relay.url)
        np.testing.assert_array_equal(got["em"], _demo_truth(relay, "em", 0)[3:19, 200:712,
                                                                            100:612])
        np.testing.assert_array_equal(got["prob"], _demo_truth(relay, "prob", 1)[0:8, 0:200,
                                                                              0:300])
        # the image's health check, pointed at the port this run chose
        check = config["Healthcheck"]["Test"]
        assert check[0] == "CMD-SHELL" and ":8000/healthz" in check[1]
        relay.exec("sh", "-c", check[1].replace(":8000/", f":{relay.port}/"))
        # the cache is on /cache (the volume), written by the image's user
        assert "cache.db" in relay.exec("ls", "/cache").split()
        # no package only the tests need (pytest comes with compressed-segmentation)
        installed = {line.split()[0].lower() for line in
                     relay.exec("pip", "list", "--format=freeze").replace("==", " ").splitlines()}
        assert not installed & {"intern", "tensorstore", "selenium", "schemathesis",
                                "hypothesis", "matplotlib", "mypy", "ruff"}
        # the index page and the viewer in the box: neuroglancer's client from the image
        index = httpx.get(relay.url + "/", timeout=30)
        assert index.status_code == 200 and "demo / synthetic" in index.text
        assert "/viewer/v/relay/#!" in index.text
        viewer = httpx.get(relay.url + "/viewer/v/relay/", timeout=30)
        assert viewer.status_code == 200 and "<title>neuroglancer</title>" in viewer.text
        script = viewer.text.split('src="main.', 1)[1].split('"', 1)[0]
        main = httpx.get(f"{relay.url}/viewer/v/relay/main.{script}", timeout=30)
        assert main.status_code == 200 and len(main.content) > 500_000


def test_the_compose_chain_answers_through_the_laptop_relay(image: str,
                                                            tmp_path: Path) -> None:
    """docker-compose.yml's two services, as two processes from the image: the lab relay with
    the image's command, the laptop relay with the compose file's command, environment and
    mount. (Compose's network name ``lab`` becomes 127.0.0.1 and the lab's chosen port.)"""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    laptop = compose["services"]["laptop"]
    assert laptop["image"] == compose["services"]["lab"]["image"]
    with Container(image, tmp_path / "lab.log") as lab:
        env = {**laptop["environment"], "RELAY_LAB_URL": lab.url, "RELAY_HOST": "127.0.0.1"}
        volumes = []
        for volume in laptop["volumes"]:
            source, _, target = volume.partition(":")
            if source.startswith("./"):  # a file of the repository, as compose mounts it
                volumes.append(f"{ROOT / source[2:]}:{target}")
        assert volumes, laptop["volumes"]
        with Container(image, tmp_path / "laptop.log", env=env, volumes=volumes,
                       command=laptop["command"]) as front:
            got = _read_demo(front.url)
            np.testing.assert_array_equal(got["em"], _demo_truth(lab, "em", 0)[3:19, 200:712,
                                                                             100:612])
            channels = httpx.get(front.url + "/v1/collection/demo/experiment/synthetic/"
                                 "channel/").json()["channels"]
    assert set(channels) == {"em", "seg", "prob"}
