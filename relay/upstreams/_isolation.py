"""Each source's own bounded place for blocking and library work, with the source's timeout.

A store library that blocks (cloud-volume, and zarr's file and codec work, which zarr runs in
the event loop's default thread pool) would otherwise share one pool with every other source
and with the relay itself: one hung store (an NFS mount gone stale, an HTTP server that accepts
and never answers) would fill it and stall everything while ``/healthz`` stayed green.

``SourceWorker`` gives a source its own:
- ``call(fn, ...)``: a blocking function on the source's own threads (at most ``threads``);
- ``run(factory)``: a coroutine on the source's own event loop, in a thread of its own, whose
  default thread pool is bounded the same way (zarr's async API, and the aiohttp session of a
  zarr store over http, live there).
Either ends within ``timeout`` seconds with ``UpstreamTimeout`` (504). A coroutine that times
out is cancelled; a blocking call cannot be, so it runs on in its thread, and the source's
later calls queue behind it, each within its own timeout: the source is slow, the others are
not. A caller that is cancelled (its client hung up) cancels the coroutine it was waiting for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ..errors import UpstreamTimeout

__all__ = ["SourceWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class SourceWorker:
    def __init__(self, name: str, threads: int, timeout: float, where: str) -> None:
        self.name = name
        self.threads = threads
        self.timeout = timeout
        self.where = where
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"{self.where} did not answer within {self.timeout:g} s")

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"relay-{self.name}")
            return self._pool

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the source's threads, within the timeout."""
        future = self._executor().submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError as exc:
            raise self._timed_out() from exc

    def _source_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._io_pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"relay-{self.name}-io")
                loop.set_default_executor(self._io_pool)
                # a daemon: a store hung in a system call must not keep the process alive
                self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                                name=f"relay-{self.name}-loop")
                self._thread.start()
                self._loop = loop
            return self._loop

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """``await factory()`` on the source's own event loop, within the timeout."""

        async def wrapped() -> T:
            return await factory()

        future = asyncio.run_coroutine_threadsafe(wrapped(), self._source_loop())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError as exc:
            raise self._timed_out() from exc

    async def aclose(self, last: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Stop the loop and the threads; ``last`` runs on the source loop first (to close
        what lives there, such as an HTTP session)."""
        loop, thread, pools = self._loop, self._thread, (self._pool, self._io_pool)
        self._loop, self._thread, self._pool, self._io_pool = None, None, None, None
        if loop is not None and thread is not None:
            if last is not None:
                try:
                    await asyncio.wait_for(asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(last(), loop)), self.timeout)
                except Exception as exc:  # best effort: a hung store must not hang shutdown
                    log.debug("closing %s: %r", self.where, exc)
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5)
            if not thread.is_alive():
                loop.close()
        for pool in pools:  # without waiting: a thread hung in a store is left to end alone
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
