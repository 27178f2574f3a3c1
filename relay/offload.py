"""Where CPU-heavy work runs: on the event loop when it is small, in a worker thread when it is
big enough to be worth the hop (Blosc, zlib and numpy release the GIL while they work).

One rule for every caller: below ``THREAD_BYTES`` of data the thread hop costs more than the
work saves the other requests waiting on the loop (docs/performance.md has the measurements).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["THREAD_BYTES", "offload"]

T = TypeVar("T")

THREAD_BYTES = 1 << 20


async def offload(fn: Callable[..., T], *args: Any, nbytes: int) -> T:
    """``fn(*args)``, in a worker thread when it handles ``nbytes`` or more."""
    if nbytes >= THREAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
