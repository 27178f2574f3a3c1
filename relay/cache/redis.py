"""The shared tier: Redis (or a Redis Cluster) that several relays read and write, and the
leases that make one of them read a cuboid upstream while the others wait for it.

This module is the only user of ``redis`` (redis-py's asyncio client; hiredis parses replies
when it is installed). What it relies on:
- a value and its lease live in one hash slot (``{key}`` is the hash tag of both), so the
  scripts below may touch both in a Cluster, and a pipeline's ``SET`` then ``DEL`` reach the
  same node in that order;
- a Lua script runs atomically: ``_CLAIM`` reads the value or takes the lease (``SET NX PX``)
  in one step, so between a miss and a lease nobody can slip in; redis-py re-sends a script
  that a restarted or flushed server has forgotten (``NOSCRIPT``);
- eviction is Redis's own (``maxmemory`` with ``allkeys-lru``; docs/scaling.md), and
  ``redis_ttl_seconds``, when set, is each value's expiry.

Values are sealed (``checksum.seal``) like the disk tier's: anything else under a key (a damaged
value, another program's) is a miss. Redis is never a point of failure: every error is counted,
opens a breaker that skips Redis for ``RETRY_AFTER`` seconds (a miss, a skipped write, no
lease: the relay reads upstream as if alone), then the next call probes it; the first error of
an episode and the recovery are logged once each.

Leases: a relay that misses everywhere calls ``lease(key)``. It either finds the value (some
other relay just stored it), or takes the lease (it reads upstream; storing the value ends the
lease, and so does a failed read), or waits, polling with a backoff, until the value lands or
the lease is gone (the leader failed, or was killed: the lease expires after
``redis_lease_seconds``), and then takes the lease itself. A wait never outlasts one lease
plus the socket timeout: past that, the relay reads upstream without one. (A value its reader
could not store, its write-behind being full, leaves the lease to expire the same way.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..offload import offload
from .base import CacheTier, Checked
from .checksum import looks_sealed, seal, unseal

__all__ = ["RETRY_AFTER", "RedisTier", "parse_redis_url"]

log = logging.getLogger(__name__)

#: seconds Redis is left alone after an error that says it is down or slow
RETRY_AFTER = 5.0
#: the first and the longest pause between two looks while another relay holds the lease
_POLL_FIRST, _POLL_MAX = 0.005, 0.05

# KEYS: value, lease. ARGV: this relay's lease token, lease milliseconds.
# Returns the value, or 1 when the lease was taken, or 0 when another relay holds it.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then return value end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: lease. ARGV: this relay's lease token. Ends the lease only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Redis calls in flight at once, per process: below redis-py's connection limits (it raises
#: rather than waits past them), and plenty for cuboid-sized values
MAX_CALLS = 32
#: bytes asked of the socket at a time: a cuboid is megabytes, and every read is a trip through
#: the event loop and the parser (redis-py's 64 KiB made a 4 MiB value some 60 of them)
_READ_SIZE = 1 << 20


def parse_redis_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``(url, [])`` for one server, ``(url, nodes)`` for ``redis+cluster://h1:p1,h2:p2``
    (``rediss+cluster://`` for TLS); a ValueError names what is wrong."""
    scheme, _, rest = url.partition("://")
    shown = repr(_without_credentials(url))  # a config error never prints the password
    if scheme in ("redis", "rediss", "unix"):
        if not rest:
            raise ValueError(f"{shown} names no server")
        return url, []
    if scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError(f"{shown}: the scheme must be redis://, rediss://, unix://, "
                         "redis+cluster:// or rediss+cluster://")
    hosts = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    nodes = []
    for part in hosts.split(","):
        parsed = urlsplit(f"//{part.strip()}")
        if not parsed.hostname:
            raise ValueError(f"{shown}: {part!r} is not host:port")
        nodes.append((parsed.hostname, parsed.port or 6379))
    return url, nodes


class _Skipped(Exception):
    """Redis is not asked while the breaker is open."""


class _Breaker:
    """Open for ``RETRY_AFTER`` seconds after an error; logs an episode's start and end once."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.open_until = 0.0
        self.down = False

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def failed(self, exc: BaseException) -> None:
        self.open_until = time.monotonic() + RETRY_AFTER
        if not self.down:
            self.down = True
            log.warning("shared tier %s failed (%s); the relay goes on without it and "
                        "tries again every %.0f s", self.where, _describe(exc), RETRY_AFTER)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            self.open_until = 0.0
            log.warning("shared tier %s answers again", self.where)


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _token() -> str:
    """A new write version: 64 random bits, never the same twice in practice."""
    return uuid.uuid4().hex[:16]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


class RedisTier(CacheTier):
    name = "redis"

    def __init__(self, url: str, prefix: str = "relay:", ttl_seconds: float | None = None,
                 lease_seconds: float = 10.0, timeout_seconds: float = 1.0) -> None:
        url, nodes = parse_redis_url(url)
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            # a dropped connection (Redis closes idle ones, a node restarted) is retried once
            # at once; anything else, a timeout above all, goes to the breaker, which decides
            # when to try again
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "max_connections": MAX_CALLS,
            "socket_read_size": _READ_SIZE,
        }
        self.client: aioredis.Redis | RedisCluster
        if nodes:
            parsed = urlsplit(url.replace("+cluster", "", 1).split(",", 1)[0])
            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                ssl=url.startswith("rediss"), username=parsed.username,
                password=parsed.password, **options)
        else:
            self.client = aioredis.Redis.from_url(url, **options)
        self.where = _without_credentials(url)
        self.prefix = prefix
        self.ttl_ms = None if ttl_seconds is None else max(1, int(ttl_seconds * 1000))
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.timeout = timeout_seconds
        self.token = uuid.uuid4().hex  # names this process as a lease's holder
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._breaker = _Breaker(self.where)
        self._slots = asyncio.Semaphore(MAX_CALLS)
        self._cluster_ready = not nodes
        self._cluster_lock = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()
        self.counters = {name: 0 for name in (
            "errors", "skipped", "corrupt", "leases", "lease_waits", "lease_supplied",
            "lease_takeovers", "lease_timeouts")}

    def _keys(self, key: str) -> tuple[str, str]:
        # the hash tag keeps a value and its lease in one Cluster slot
        value = f"{self.prefix}{{{key}}}"
        return value, value + ":lease"

    async def _call(self, make: Any) -> Any:
        """``await make()`` against Redis, through the breaker; ``_Skipped`` while it is open."""
        if not self._breaker.allows():
            self.counters["skipped"] += 1
            raise _Skipped
        try:
            async with self._slots:
                if not self._cluster_ready:
                    await self._start_cluster()
                result = await make()
        except ResponseError as exc:
            # Redis answered (out of memory, a read-only replica): it is up, the call failed.
            # A pipeline's error quotes its commands, a whole value among them: not for a log.
            self.counters["errors"] += 1
            raise ResponseError(str(exc).rsplit("caused error: ", 1)[-1][:200]) from None
        except Exception as exc:  # down, slow, moving, or the client's own trouble
            self.counters["errors"] += 1
            self._breaker.failed(exc)
            raise
        self._breaker.succeeded()
        return result

    async def _start_cluster(self) -> None:
        """Learn the Cluster's slots once, before the first command: redis-py would otherwise
        do it in every command that starts at once, each closing connections the others are
        using."""
        async with self._cluster_lock:
            if not self._cluster_ready:
                assert isinstance(self.client, RedisCluster)
                await self.client.initialize()
                self._cluster_ready = True

    async def get(self, key: str) -> bytes | None:
        value_key, _ = self._keys(key)
        try:
            framed = await self._call(lambda: self.client.get(value_key))
        except _Skipped:
            return None
        if framed is None:
            return None
        # the CRC and the copy out of the frame take milliseconds for a cuboid: off the loop
        payload = await offload(unseal, framed, nbytes=len(framed))
        if payload is None:
            self.counters["corrupt"] += 1
        return payload

    async def put(self, key: str, value: bytes) -> None:
        value_key, lease_key = self._keys(key)

        async def store() -> None:  # sealed inside: nothing is spent while Redis is skipped
            sealed = await offload(seal, value, nbytes=len(value))
            pipe = self.client.pipeline(transaction=False)
            pipe.set(value_key, sealed, px=self.ttl_ms)
            pipe.delete(lease_key)  # after the value: a waiter sees the value, or the lease
            await pipe.execute()

        with suppress(_Skipped):
            await self._call(store)

    async def delete(self, key: str) -> None:
        with suppress(_Skipped):
            await self._call(lambda: self.client.delete(self._keys(key)[0]))

    async def versions(self, keys: Sequence[str]) -> list[str] | None:
        """Each key's write version (``Versioned``): one pipelined round trip (two for keys
        never seen, which are given a version of their own); None while Redis cannot be
        asked.

        A version is a random token, not a count: a Redis that lost its memory (restarted
        without persistence, flushed, a version evicted) gives every key a new token the
        first time it is asked again, never one an earlier copy was cached under. A counter
        would start again at 0 and bring every copy cached before the loss back to life."""
        if not keys:
            return []
        names = [self._keys(key)[0] + ":ver" for key in keys]

        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            return list(await pipe.execute())

        async def mint(missing: list[str]) -> list[Any]:
            # SET NX, then GET: when two relays mint at once, both read the one that won
            fresh = _token()
            pipe = self.client.pipeline(transaction=False)
            for name in missing:
                pipe.set(name, fresh, nx=True)
                pipe.get(name)
            return list(await pipe.execute())[1::2]

        try:
            found = await self._call(read)
            missing = [name for name, v in zip(names, found, strict=True) if v is None]
            if missing:
                minted = dict(zip(missing, await self._call(lambda: mint(missing)),
                                  strict=True))
                found = [minted[name] if v is None else v
                         for name, v in zip(names, found, strict=True)]
        except Exception:  # counted by _call (or skipped while the breaker is open)
            return None
        if any(v is None for v in found):  # evicted as soon as made: nothing to trust
            return None
        return [v.decode("ascii", "replace") for v in found]

    async def bump(self, keys: Sequence[str], writing_for: float | None = None) -> bool:
        fresh = _token()

        async def renew() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                value_key = self._keys(key)[0]
                # no expiry (one that expired, or was evicted, costs every relay its copies
                # of the key: a new version is made when it is next asked for)
                pipe.set(value_key + ":ver", fresh)
                if writing_for is not None:
                    pipe.set(value_key + ":writing", b"1", px=max(1, int(writing_for * 1000)))
                else:
                    pipe.delete(value_key + ":writing")
            await pipe.execute()

        try:
            await self._call(renew)
        except Exception:
            return False
        return True

    async def settled(self, key: str, version: str) -> bool:
        value_key = self._keys(key)[0]

        async def look() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(value_key + ":ver")
            pipe.exists(value_key + ":writing")
            return list(await pipe.execute())

        try:
            found, writing = await self._call(look)
        except Exception:
            return False
        return found is not None and found.decode("ascii", "replace") == version and not writing

    async def end_lease(self, key: str) -> None:
        """End this process's lease of ``key`` without storing a value (what it read may not
        be cached): the relays waiting for it read for themselves at once."""
        await self._end_lease(key)

    #: keys the last ``entries`` left out (not a relay's: another program's, under the prefix)
    foreign_keys = 0

    async def entries(self) -> AsyncIterator[tuple[str, int]]:
        # every value key under the prefix (leases and versions are skipped), with its length;
        # glob characters in the prefix are escaped so they match themselves. A key that is
        # not a relay's (a name that is not UTF-8, a hash or a list under the prefix) is
        # counted and left out, never a reason to stop.
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "{*}"
        head = len(self.prefix) + 1
        self.foreign_keys = 0
        batch: list[tuple[bytes, str]] = []

        async def sized(names: list[tuple[bytes, str]]) -> list[tuple[str, int]]:
            pipe = self.client.pipeline(transaction=False)
            for raw, _ in names:
                pipe.strlen(raw)
            lengths = await pipe.execute(raise_on_error=False)
            out = []
            for (_, key), n in zip(names, lengths, strict=True):
                if isinstance(n, int):
                    out.append((key, n))
                else:  # WRONGTYPE: not a string value
                    self.foreign_keys += 1
            return out

        async for name in self.client.scan_iter(match=pattern, count=1000):
            if not name.endswith(b"}"):
                continue  # a lease ("…}:lease"), a version ("…}:ver") or a mark
            try:
                key = name.decode()[head:-1]
            except UnicodeDecodeError:
                self.foreign_keys += 1
                continue
            batch.append((name, key))
            if len(batch) >= 1000:
                for entry in await sized(batch):
                    yield entry
                batch = []
        for entry in await sized(batch) if batch else []:
            yield entry

    async def check(self, key: str) -> Checked:
        value_key, _ = self._keys(key)
        try:
            framed = await self.client.get(value_key)
        except ResponseError:  # WRONGTYPE: another program's key
            return "foreign"
        if framed is None:
            return "gone"
        if await offload(unseal, framed, nbytes=len(framed)) is None:
            if not looks_sealed(framed):
                return "foreign"  # another program's string: not the relay's to remove
            self.counters["corrupt"] += 1
            await self.client.delete(value_key)
            return "damaged"
        return "whole"

    @asynccontextmanager
    async def lease(self, key: str) -> AsyncIterator[bytes | None]:
        """The value, when another relay stored it before or while this one waited; else None,
        and the caller reads upstream and ``put``s the value (which ends the lease; leaving
        the block with an exception ends it too)."""
        supplied, leading = await self._claim_or_wait(key)
        if supplied is not None or not leading:
            yield supplied
            return
        try:
            yield None
        except BaseException:
            # a cancelled read must not leave the others waiting out the lease
            task = asyncio.ensure_future(self._end_lease(key))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise

    async def _claim_or_wait(self, key: str) -> tuple[bytes | None, bool]:
        """(value, False) when found; (None, True) holding the lease; (None, False) when Redis
        cannot be asked or the wait ran out (the caller reads upstream without a lease)."""
        keys = self._keys(key)
        deadline = time.monotonic() + self.lease_ms / 1000 + self.timeout
        pause, waited = _POLL_FIRST, False
        while True:
            try:
                answer = await self._call(
                    lambda: self._claim(keys=keys, args=[self.token, self.lease_ms]))
            except Exception:  # counted by _call; the relay reads upstream without a lease
                return None, False
            if isinstance(answer, bytes):
                payload = await offload(unseal, answer, nbytes=len(answer))
                if payload is not None:
                    if waited:
                        self.counters["lease_supplied"] += 1
                    return payload, False
                # a damaged value: not served, and the lease is not taken over it; the read
                # that follows overwrites it
                self.counters["corrupt"] += 1
                return None, False
            if answer == 1:
                self.counters["leases"] += 1
                if waited:
                    self.counters["lease_takeovers"] += 1
                return None, True
            if not waited:
                waited = True
                self.counters["lease_waits"] += 1
            if time.monotonic() + pause > deadline:
                self.counters["lease_timeouts"] += 1
                return None, False
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    async def _end_lease(self, key: str) -> None:
        with suppress(Exception):  # counted by _call; the lease expires on its own anyway
            await self._call(lambda: self._release(keys=[self._keys(key)[1]], args=[self.token]))

    def stats(self) -> dict[str, int]:
        return {**self.counters, "down": int(not self._breaker.allows())}

    async def aclose(self) -> None:
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        await self.client.aclose()
