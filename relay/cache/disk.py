"""The disk tier: diskcache with LRU eviction and a checksum on every entry.

This module is the only user of ``diskcache``. What it relies on (diskcache 5.6, ``core.py``):
- values of 32 KiB and more (every cuboid) are written to their own file first, and the SQLite
  row naming the file is committed after, so a crash mid-write leaves at most an orphan file,
  never a row that points at half a value: publishing is atomic;
- it can order rows least-recently-*used* first (we pass ``eviction_policy=
  "least-recently-used"``; the default is least-recently-*stored*). Its own culling is off
  (``cull_limit=0``): inside ``set`` it would delete a fixed number of rows after the insert,
  the new row among them when the tier holds only a few large entries (a tier of two cuboids
  was left empty after every other write), and its ``cull()`` deletes ten at a time. ``_put``
  instead removes the least-recently-used rows one at a time until the volume fits again,
  never the last row standing: the tier stays within its limit plus one entry;
- its API is synchronous, so every call runs in a worker thread.
What it does not do is notice a damaged file: each value therefore carries a CRC-32 and its
length (``checksum.seal``), checked on every read; a damaged entry is deleted and reported as a
miss. Nor does it
remove the half-written file a failed write (ENOSPC, EIO) leaves behind, which on a full disk
would keep the disk full: ``_Disk`` does.

And a cache directory is data, never code: diskcache would unpickle a row stored in its pickle
mode, and read or delete whatever path a row names (an absolute one included). A directory
shared between containers, or restored from elsewhere, must not be able to run code in the
relay or make it delete files. ``_Disk`` reads only what this tier writes — raw bytes in the
row, or a value file under the name diskcache itself makes (``ab/cd/<28 hex>.val``, inside the
directory) — and touches no other path; any other row is *foreign*: a miss for a relay (which
then writes its own value over it), counted and left alone by ``relay cache verify``.

Several processes (``--workers``) may share one directory: diskcache keeps its index in SQLite
and names every value file at random, so they never write the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from .base import CacheTier, Checked
from .checksum import seal_header, unseal

__all__ = ["DiskTier", "ForeignEntry"]

log = logging.getLogger(__name__)


class _Sealed(NamedTuple):
    """A value and its seal, written one after the other: putting them together first would
    copy the value (4 MiB into fresh memory, 2 ms here, on every cold read)."""

    head: bytes
    value: bytes


#: the value files diskcache names (``Disk.filename``, stable since diskcache 4)
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


class ForeignEntry(OSError):
    """A row this tier did not write (pickled, text, or naming a path of its own choosing):
    never read, never removed. An OSError, which diskcache's ``get`` takes for a miss."""


def _trusted(mode: int, filename: object, value: object) -> bool:
    """Is this a row this tier could have written (its value raw in the row, or in a value
    file named as diskcache names them)?"""
    if mode == MODE_RAW:
        return isinstance(value, bytes) and filename is None
    return (mode == MODE_BINARY and isinstance(filename, str)
            and _VALUE_FILE.fullmatch(filename) is not None)


class _Disk(diskcache.Disk):  # type: ignore[misc]  # diskcache has no type hints
    """diskcache's value-file writer (``Disk._write``, stable since diskcache 4), with three
    changes: a bytes value is written in one call (diskcache iterates its ``BytesIO`` line by
    line: some 16,000 writes for a 4 MiB cuboid of noise, a fifth of a cold read's CPU), a
    ``_Sealed`` value is written as its two parts (``Disk.store``'s file branch for bytes,
    stable since diskcache 4: what ``fetch`` reads back is their concatenation), and a failed
    write removes its partial file before the error goes on."""

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> Any:
        if isinstance(value, _Sealed):
            size = len(value.head) + len(value.value)
            if size < self.min_file_size:
                return super().store(value.head + value.value, read, key)
            filename, full_path = self.filename(key, value)
            self._write(full_path, iter(value), "xb")
            return size, MODE_BINARY, filename, None
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        # (``Disk.fetch``'s raw and binary branches; its text and pickle ones are never taken)
        if not _trusted(mode, filename, bytes(value) if isinstance(value, memoryview) else value):
            raise ForeignEntry(f"a cache row this relay did not write (mode {mode})")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: Any) -> None:
        # only a value file diskcache named, inside the directory: a row's name for a file is
        # data, and a tampered one could name any path
        if isinstance(file_path, str) and _VALUE_FILE.fullmatch(file_path):
            super().remove(file_path)

    def _write(self, full_path: str, iterator: Any, mode: str,
               encoding: str | None = None) -> int | None:
        if isinstance(iterator, io.BytesIO):
            iterator = (iterator.getvalue(),)
        try:
            written: int | None = super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise
        return written


class DiskTier(CacheTier):
    name = "disk"

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            disk=_Disk,
            cull_limit=0,  # see the module docstring: _put evicts
            statistics=False,
        )
        self.size_limit = size_limit
        self._corrupt = 0
        #: keys the last ``entries`` left out (not this tier's)
        self.foreign_keys = 0

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> bytes | None:
        framed = self._cache.get(key, default=None, retry=True)
        if framed is None:
            return None
        payload = unseal(framed)
        if payload is None:
            self._corrupt += 1
            log.warning("disk cache entry %s failed its checksum; removed", key)
            self._cache.delete(key, retry=True)
        return payload

    async def put(self, key: str, value: bytes) -> None:
        await asyncio.to_thread(self._put, key, value)

    def _put(self, key: str, value: bytes) -> None:
        # checksum and framing here, in the worker thread: on the event loop they would stall
        # every other request for a few milliseconds per cuboid
        self._cache.set(key, _Sealed(seal_header(value), value), retry=True)
        self._evict()

    def _evict(self) -> None:
        cache = self._cache
        while cache.volume() > self.size_limit and len(cache) > 1:
            # diskcache's own one-step cull (private, stable since 4.0): deletes the
            # least-recently-used row and its file in one transaction
            with cache._transact(retry=True) as (sql, cleanup):
                cache._cull(time.time(), sql, cleanup, limit=1)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._cache.delete, key, retry=True)

    async def entries(self) -> AsyncIterator[tuple[str, int]]:
        # diskcache's own table (stable since 4.0): a value file's size, or the length of a
        # value kept in the row itself (under 32 KiB)
        rows = await asyncio.to_thread(lambda: list(self._cache._sql(
            "SELECT key, raw, CASE WHEN size > 0 THEN size ELSE length(value) END "
            "FROM Cache")))
        self.foreign_keys = 0
        for key, raw, size in rows:
            if isinstance(key, str) and raw:
                yield key, int(size or 0) if isinstance(size, int) else 0
            else:  # a pickled key (diskcache would unpickle it to name it): not ours
                self.foreign_keys += 1

    async def check(self, key: str) -> Checked:
        def read() -> Checked:
            row = self._cache._sql(  # diskcache's own table (stable since 4.0)
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                (key,)).fetchone()
            if row is None:
                return "gone"
            if not _trusted(row[0], row[1], row[2]):
                return "foreign"
            framed = self._cache.get(key, default=None, retry=True)
            if framed is None:
                return "gone"
            if unseal(framed) is None:
                self._corrupt += 1
                self._cache.delete(key, retry=True)
                return "damaged"
            return "whole"

        return await asyncio.to_thread(read)

    def stats(self) -> dict[str, int]:
        return {
            "bytes": int(self._cache.volume()),
            "budget_bytes": self.size_limit,
            "corrupt": self._corrupt,
        }

    async def aclose(self) -> None:
        await asyncio.to_thread(self._cache.close)

