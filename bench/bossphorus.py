"""P4's comparator: the original bossphorus (PyPI ``bossphorus==0.1.0``, Flask), in a venv of
its own, holding the same voxels (uploaded through its own POST cutout route).

It only installs beside ``numpy<2`` and with ``--no-build-isolation`` (its setup.py imports its
dependencies), so it cannot share the relay's environment. The venv is built once and kept in
``$RELAY_BENCH_CACHE`` (default ``~/.cache/relay-bench``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blosc
import httpx
import numpy as np

from .serving import wait_ready

__all__ = ["ensure_venv", "serving", "upload"]

VERSION = "0.1.0"
_SERVER = """
import sys
import bossphorus
bossphorus.APP.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
"""


def ensure_venv() -> Path:
    """The venv's python, installing bossphorus the way its README era needs."""
    cache = Path(os.environ.get("RELAY_BENCH_CACHE", "~/.cache/relay-bench")).expanduser()
    home = cache / f"bossphorus-{VERSION}"
    python = home / "bin" / "python"
    stamp = home / ".installed"
    if stamp.exists():
        return python
    print(f"bench: installing bossphorus {VERSION} into {home}", file=sys.stderr)
    venv.create(home, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # numpy<2 in both steps: bossphorus's own requirements would otherwise pull numpy 2, where
    # its np.fromstring upload path no longer works
    subprocess.run([*pip, "numpy<2", "blosc", "flask", "intern", "wheel", "setuptools"],
                   check=True, timeout=900)
    subprocess.run([*pip, "--no-build-isolation", f"bossphorus=={VERSION}", "numpy<2"],
                   check=True, timeout=900)
    stamp.touch()
    return python


@contextmanager
def serving(python: Path, workdir: Path, port: int, log: Path) -> Iterator[str]:
    """bossphorus on 127.0.0.1:port, storing its files under ``workdir/uploads``."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([str(python), "-c", _SERVER, str(port)], cwd=workdir,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/", process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def upload(url: str, path: str, data_zyx: np.ndarray, corner_xyz: tuple[int, int, int]) -> None:
    """POST one box the way intern's create_cutout does: Blosc of the Z, Y, X C-order bytes."""
    z, y, x = data_zyx.shape
    x0, y0, z0 = corner_xyz
    body = blosc.compress(np.ascontiguousarray(data_zyx).tobytes(), typesize=1)
    response = httpx.post(f"{url}/v1/cutout/{path}/0/{x0}:{x0 + x}/{y0}:{y0 + y}/{z0}:{z0 + z}/",
                          content=body, headers={"Content-Type": "application/blosc"},
                          timeout=120)
    if response.status_code != 201:
        raise RuntimeError(f"bossphorus upload failed: {response.status_code} "
                           f"{response.text[:200]}")
