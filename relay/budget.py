"""One memory budget for the responses in flight (``server.max_inflight_bytes``).

Every data request reserves, before it reads a voxel, the bytes it will hold at its peak: the
assembled cutout plus its encoded body. Once the body is made it gives back what it no longer
needs (``Reservation.shrink``), and the rest when the body has been handed to the client
(``Reservation.release``). Requests that do not fit wait in arrival order (a large request is
not starved by a stream of small ones) for at most ``wait`` seconds, then get 503 with
``Retry-After``: sixteen clients each asking for 500 MiB make the relay queue them, not swap.

Runs on the event loop's thread and never blocks; no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .errors import Overloaded
from .metrics import Metrics

__all__ = ["ByteBudget", "Reservation"]

log = logging.getLogger(__name__)


class Reservation:
    """Bytes held against a budget; give them back with ``shrink`` and ``release``."""

    __slots__ = ("_budget", "nbytes")

    def __init__(self, budget: ByteBudget, nbytes: int) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` (never more than is held)."""
        freed = self.nbytes - max(0, min(nbytes, self.nbytes))
        if freed:
            self.nbytes -= freed
            self._budget._give_back(freed)

    def release(self) -> None:
        self.shrink(0)


class ByteBudget:
    def __init__(self, total: int, wait: float, metrics: Metrics | None = None) -> None:
        self.total = total
        self.wait = wait
        self.used = 0
        self.metrics = metrics or Metrics()
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._overloaded = False  # logged once per episode, not once per refusal

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_reserve(self, nbytes: int) -> Reservation | None:
        """A reservation at once, or None when the request would have to wait."""
        nbytes = min(max(0, nbytes), self.total)
        if not self._waiters and self.used + nbytes <= self.total:
            self.used += nbytes
            return Reservation(self, nbytes)
        return None

    async def reserve(self, nbytes: int) -> Reservation:
        """A reservation, after waiting for room in arrival order; ``Overloaded`` when none
        comes within ``wait`` seconds."""
        if (reservation := self.try_reserve(nbytes)) is not None:
            return reservation
        # a request larger than the whole budget waits until it has the budget to itself
        nbytes = min(max(0, nbytes), self.total)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.wait)
        except TimeoutError:
            self._refuse(entry)
        except asyncio.CancelledError:
            self._abandon(entry)
            raise
        return Reservation(self, nbytes)

    def _refuse(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        granted = entry[1]
        if granted.done():  # granted just as the wait ran out: take it after all
            return
        self._waiters.remove(entry)
        self._wake()  # a large request leaving the head may let smaller ones in
        self.metrics.inc("inflight_refused_total")
        if not self._overloaded:
            self._overloaded = True
            log.warning("responses in flight hold %d of %d bytes (server.max_inflight_bytes); "
                        "refusing requests with 503 until some finish", self.used, self.total)
        raise Overloaded("The relay is at its memory limit for responses in flight "
                         "(server.max_inflight_bytes); retry shortly")

    def _abandon(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        nbytes, granted = entry
        if granted.done() and not granted.cancelled():
            self._give_back(nbytes)  # granted, but nobody will use it
        else:
            granted.cancel()
            self._waiters.remove(entry)
            self._wake()

    def _give_back(self, nbytes: int) -> None:
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            nbytes, granted = self._waiters.popleft()
            self.used += nbytes
            granted.set_result(None)
        if self._overloaded and not self._waiters and self.used <= self.total // 2:
            self._overloaded = False
            log.info("responses in flight are back under half of server.max_inflight_bytes")
