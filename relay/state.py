"""What the relay keeps for its own sources that is not a cache: BossDB's metadata key/values of
collections, experiments and channels, and each annotation channel's next unreserved id.

Neither may be lost or handed out twice, so neither lives in a cache tier (Redis is a cache: a
restart without persistence empties it). Both are rows of one SQLite database in
``server.state_dir`` (``state.sqlite``), written in transactions that hold SQLite's write lock,
so every relay process that opens the same file — the workers of one relay, the relays of a
fleet on one host or one shared volume, a relay after a restart — sees one history: a key
created by one is there for all, and two reservations never overlap.

Ids are kept as decimal text: a uint64 label does not fit SQLite's signed integers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import InvalidPostArgument, StateUnavailable

__all__ = ["MAX_ID", "STATE_FILE", "DurableState"]

STATE_FILE = "state.sqlite"
#: the largest label a uint64 channel holds
MAX_ID = 2**64 - 1

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metadata (
    resource TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (resource, key));
CREATE TABLE IF NOT EXISTS reserved (channel TEXT PRIMARY KEY, next_id TEXT NOT NULL);
"""


class DurableState:
    """The database, opened on first use (a relay nobody asks for metadata or ids never
    creates it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self._made = False

    def _connect(self) -> sqlite3.Connection:
        # autocommit off; each call is one transaction. A busy file (another process writing)
        # is waited for, not an error.
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a 201 or a reserved block survives a power cut
        return db

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if not self._made:
                self.directory.mkdir(parents=True, exist_ok=True)
                with contextlib.closing(self._connect()) as db:
                    db.executescript(_SCHEMA)
                self._made = True
            db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StateUnavailable(
                f"server.state_dir {self.directory}: the relay cannot keep its state there "
                f"({exc}); name a writable directory") from exc
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: read-then-write is atomic
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        finally:
            db.close()

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, work)

    # --- metadata ------------------------------------------------------------------------------

    async def keys(self, resource: str) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT key FROM metadata WHERE resource = ? ORDER BY key",
                              (resource,))
            return [row[0] for row in rows]
        return await self._call(work)

    async def value(self, resource: str, key: str) -> str:
        def work(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT value FROM metadata WHERE resource = ? AND key = ?",
                             (resource, key)).fetchone()
            if row is None:
                raise InvalidPostArgument(f"Invalid request. Key {key} does not exist")
            return str(row[0])
        return await self._call(work)

    async def create(self, resource: str, key: str, value: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            try:
                db.execute("INSERT INTO metadata (resource, key, value) VALUES (?, ?, ?)",
                           (resource, key, value))
            except sqlite3.IntegrityError:
                raise InvalidPostArgument(
                    f"Invalid request. The key {key} already exists") from None
        await self._call(work)

    async def update(self, resource: str, key: str, value: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            changed = db.execute("UPDATE metadata SET value = ? WHERE resource = ? AND key = ?",
                                 (value, resource, key)).rowcount
            if not changed:
                raise InvalidPostArgument(f"Invalid request. Key {key} does not exist")
        await self._call(work)

    async def delete(self, resource: str, key: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            gone = db.execute("DELETE FROM metadata WHERE resource = ? AND key = ?",
                              (resource, key)).rowcount
            if not gone:
                raise InvalidPostArgument(f"Invalid request. Key {key} does not exist")
        await self._call(work)

    # --- reserved ids ----------------------------------------------------------------------------

    async def reserve(self, channel: str, count: int, floor: int = 1) -> int | None:
        """The first of ``count`` ids never handed out before for ``channel`` (``count`` 0: the
        next id, consuming nothing). A channel's first reservation starts at ``floor``; None
        when the block would pass the largest uint64."""
        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT next_id FROM reserved WHERE channel = ?",
                             (channel,)).fetchone()
            start = max(int(row[0]) if row is not None else floor, 1)
            if start + count - 1 > MAX_ID:
                return None
            db.execute("INSERT INTO reserved (channel, next_id) VALUES (?, ?) "
                       "ON CONFLICT (channel) DO UPDATE SET next_id = excluded.next_id",
                       (channel, str(start + count)))
            return start
        return await self._call(work)

    async def reserved(self, channel: str) -> int | None:
        """The next id ``channel`` would hand out, or None before its first reservation."""
        def work(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT next_id FROM reserved WHERE channel = ?",
                             (channel,)).fetchone()
            return None if row is None else int(row[0])
        return await self._call(work)
