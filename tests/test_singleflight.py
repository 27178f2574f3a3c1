"""Single-flight: one computation per key; a cancelled waiter cancels only itself."""

from __future__ import annotations

import asyncio
import functools

import pytest

from relay.singleflight import SingleFlight


async def test_concurrent_callers_share_one_computation() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate, running = asyncio.Event(), asyncio.Event()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        running.set()
        await gate.wait()
        return 42

    waiters = [asyncio.create_task(flights.do("k", work)) for _ in range(50)]
    # the work runs after every waiter has had its first step (they were scheduled first)
    await asyncio.wait_for(running.wait(), 5)
    gate.set()
    assert await asyncio.gather(*waiters) == [42] * 50
    assert calls == 1 and flights.started == 1
    assert len(flights) == 0


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate, running = asyncio.Event(), asyncio.Event()

    async def work() -> int:
        running.set()
        await gate.wait()
        return 7

    leaver = asyncio.create_task(flights.do("k", work))
    stayer = asyncio.create_task(flights.do("k", work))
    await asyncio.wait_for(running.wait(), 5)  # both joined before the work's first step
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    gate.set()
    assert await stayer == 7
    assert flights.started == 1


async def test_failure_reaches_every_waiter_and_is_not_remembered() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate, running = asyncio.Event(), asyncio.Event()
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        running.set()
        await gate.wait()
        raise RuntimeError("upstream down")

    waiters = [asyncio.create_task(flights.do("k", failing)) for _ in range(5)]
    await asyncio.wait_for(running.wait(), 5)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert attempts == 1

    async def ok() -> int:
        return 1

    assert await flights.do("k", ok) == 1  # the next call starts afresh


async def test_different_keys_run_separately() -> None:
    flights: SingleFlight[str, str] = SingleFlight()

    async def work(k: str) -> str:
        return k

    got = await asyncio.gather(*(flights.do(k, functools.partial(work, k)) for k in "abc"))
    assert got == ["a", "b", "c"]
    assert flights.started == 3


async def test_when_every_waiter_leaves_the_work_is_cancelled() -> None:
    """A client that hangs up leaves no upstream read behind, unless somebody else still
    waits for it; a caller arriving after the work was abandoned starts it afresh."""
    flights: SingleFlight[str, int] = SingleFlight()
    gate, running = asyncio.Event(), asyncio.Event()
    cancelled = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        running.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return runs

    first = asyncio.create_task(flights.do("k", work))
    second = asyncio.create_task(flights.do("k", work))
    await asyncio.wait_for(running.wait(), 5)  # both joined before the work's first step
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert not cancelled.is_set()  # the second caller still waits for it
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 5)
    assert flights.abandoned == 1
    running.clear()
    third = asyncio.create_task(flights.do("k", work))
    await asyncio.wait_for(running.wait(), 5)  # the new computation is under way
    gate.set()
    assert await third == 2  # a new computation, not the cancelled one's CancelledError
    assert len(flights) == 0
