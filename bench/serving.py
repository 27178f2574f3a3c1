"""Waiting for a benchmark's server subprocess to answer."""

from __future__ import annotations

import subprocess
import time

import httpx

__all__ = ["wait_ready"]


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``url`` answers 200; fail if ``process`` exits first or 60 s pass."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a readiness probe
    raise RuntimeError(f"{url} did not come up")
