"""``python -m tests.reliability.hooked_relay serve …``: the relay, with a fault hook in the disk
tier's value-file writer (diskcache's ``Disk._write``, the one place a cuboid's bytes reach a
file). The hook is chosen by environment variables, so the relay under test is the real program
with one seam replaced, and production code carries no test switches.

``RELAY_HOOK_KILL_AT="N:FRACTION:FIFO"``
    The N-th value-file write of this process writes FRACTION of its bytes (0.0 to 1.0; 1.0 is
    "the file is whole but its index row is not committed"), flushes them to the OS, writes one
    line to the FIFO and blocks for good: the test SIGKILLs the process there. A negative
    FRACTION announces at the start of the N-th write and carries on, so the kill lands at a
    random later point (mid-file, in SQLite's commit, between writes).
``RELAY_HOOK_STORE_KILL_AT="N:FIFO"`` (or ``"N:FIFO:after"``)
    The N-th chunk file a local zarr store writes (zarr's ``_put``: a cutout POSTed to a
    writable source) is not written (with ``after``: is written): the hook writes one line to
    the FIFO and blocks for good, so the test SIGKILLs the relay with the store part written
    (or the store written and the relay's own work after it not done).
``RELAY_HOOK_STORE_PAUSE_AT="M:OUT:IN"``
    Before the M-th chunk file, one line to the FIFO ``OUT``, then wait for a line on ``IN``:
    the test does something while the write is under way, then lets it go on.
``RELAY_HOOK_SLOW_DISK="SECONDS"``
    Every disk-tier lookup takes that much longer after it has read its value, and every
    delete that much longer before it deletes (diskcache's ``Cache.get`` and
    ``Cache.delete``, called in worker threads): a slow or busy disk, which widens the windows
    a read racing a write's delete has.
``RELAY_HOOK_WRITE_ERROR="ENOSPC"`` (or ``EROFS``, ``EIO``)
    Every value-file write fails with that errno: ENOSPC and EIO after half the bytes are on
    disk (a disk filling up), EROFS when the file is opened (a file system remounted
    read-only).
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

import diskcache

KILL_AT = "RELAY_HOOK_KILL_AT"
STORE_KILL_AT = "RELAY_HOOK_STORE_KILL_AT"
STORE_PAUSE_AT = "RELAY_HOOK_STORE_PAUSE_AT"
WRITE_ERROR = "RELAY_HOOK_WRITE_ERROR"
SLOW_DISK = "RELAY_HOOK_SLOW_DISK"

_writes = itertools.count(1)
_lock = threading.Lock()


def _chunks(iterator: Iterable[Any]) -> bytes:
    return b"".join(iterator)


def _kill_at(spec: str) -> Any:
    target_text, fraction_text, fifo = spec.split(":", 2)
    target, fraction = int(target_text), float(fraction_text)

    def write(self: Any, full_path: str, iterator: Iterable[Any], mode: str,
              encoding: str | None = None) -> int:
        with _lock:
            count = next(_writes)
        data = _chunks(iterator)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        with open(full_path, mode) as out:
            if count == target:
                if fraction < 0:
                    _announce(fifo)
                else:
                    out.write(data[: int(len(data) * fraction)])
                    out.flush()
                    _announce(fifo)
                    threading.Event().wait()  # until SIGKILL
            out.write(data)
        return len(data)

    return write


def _write_error(name: str) -> Any:
    code = getattr(errno, name)

    def write(self: Any, full_path: str, iterator: Iterable[Any], mode: str,
              encoding: str | None = None) -> int:
        if code == errno.EROFS:
            raise OSError(code, os.strerror(code), full_path)
        data = _chunks(iterator)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        with open(full_path, mode) as out:
            out.write(data[: len(data) // 2])
            out.flush()
            raise OSError(code, os.strerror(code), full_path)

    return write


def _store_hooks(kill: str | None, pause: str | None) -> None:
    import zarr.storage._local as local

    kill_at, kill_fifo, when = ((kill + "::").split(":")[:3] if kill else ("0", "", ""))
    pause_at, out, into = (pause.split(":", 2) if pause else ("0", "", ""))
    original = local._put
    puts = itertools.count(1)

    def put(path: Any, value: Any, exclusive: bool = False) -> int:
        with _lock:
            count = next(puts)
        if count == int(pause_at):
            _announce(out)
            with open(into) as go_on:
                go_on.readline()
        if count == int(kill_at) and when != "after":
            _announce(kill_fifo)
            threading.Event().wait()  # until SIGKILL
        written = int(original(path, value, exclusive))
        if count == int(kill_at):
            _announce(kill_fifo)
            threading.Event().wait()
        return written

    local._put = put


def _slow_disk(seconds: float) -> None:
    get, delete = diskcache.Cache.get, diskcache.Cache.delete
    pause = threading.Event()  # never set: a wait of ``seconds`` that a test cannot cut short

    def slow_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = get(self, *args, **kwargs)
        pause.wait(seconds)
        return value

    def slow_delete(self: Any, *args: Any, **kwargs: Any) -> Any:
        pause.wait(seconds)
        return delete(self, *args, **kwargs)

    diskcache.Cache.get = slow_get
    diskcache.Cache.delete = slow_delete


def _announce(fifo: str) -> None:
    with open(fifo, "w") as out:
        out.write("writing\n")


def install() -> None:
    if spec := os.environ.get(KILL_AT):
        diskcache.Disk._write = _kill_at(spec)
    if os.environ.get(STORE_KILL_AT) or os.environ.get(STORE_PAUSE_AT):
        _store_hooks(os.environ.get(STORE_KILL_AT), os.environ.get(STORE_PAUSE_AT))
    if name := os.environ.get(WRITE_ERROR):
        diskcache.Disk._write = _write_error(name)
    if seconds := os.environ.get(SLOW_DISK):
        _slow_disk(float(seconds))


if __name__ == "__main__":
    install()
    from relay.cli import main

    sys.exit(main())
