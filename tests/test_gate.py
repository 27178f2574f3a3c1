"""relay.gate: a write waits for the store reads in flight and holds new ones off; a read inside
a read goes ahead of a waiting writer (no deadlock); a reader cancelled on its way out never
holds writes off for good."""

from __future__ import annotations

import asyncio

import pytest

from relay.gate import ReadWriteGate

#: seconds any step may take before the test calls it a hang
HANG = 5.0


async def _until(condition: object, what: str) -> None:
    """Let the loop run until ``condition()`` holds (bounded)."""
    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(poll(), HANG)
    except TimeoutError:
        pytest.fail(f"never: {what}")


async def test_a_write_waits_for_reads_and_holds_new_ones_off() -> None:
    gate = ReadWriteGate()
    order: list[str] = []
    release_read = asyncio.Event()

    async def read(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.reading():
            order.append(f"{name} in")
            if hold is not None:
                await hold.wait()
        order.append(f"{name} out")

    async def write() -> None:
        async with gate.writing():
            order.append("write")

    first = asyncio.ensure_future(read("r1", release_read))
    await _until(lambda: "r1 in" in order, "the first read holds the gate")
    writer = asyncio.ensure_future(write())
    await _until(lambda: gate._writers_waiting == 1, "the writer waits")
    late = asyncio.ensure_future(read("r2"))
    await asyncio.sleep(0)
    assert "r2 in" not in order  # a new read waits behind the waiting writer
    release_read.set()
    await asyncio.wait_for(asyncio.gather(first, writer, late), HANG)
    assert order.index("r1 out") < order.index("write") < order.index("r2 in")


async def test_a_read_inside_a_read_goes_ahead_of_a_waiting_writer() -> None:
    gate = ReadWriteGate()
    writer_waits = asyncio.Event()
    done: list[str] = []

    async def derived() -> None:
        async with gate.reading():
            await writer_waits.wait()
            # the finer level's read, in a task of its own as a derived cuboid's pieces are
            async def inner() -> None:
                async with gate.reading():
                    done.append("inner")

            await asyncio.wait_for(asyncio.ensure_future(inner()), HANG)
        done.append("outer")

    async def write() -> None:
        async with gate.writing():
            done.append("write")

    outer = asyncio.ensure_future(derived())
    await _until(lambda: gate._readers == 1, "the outer read holds the gate")
    writer = asyncio.ensure_future(write())
    await _until(lambda: gate._writers_waiting == 1, "the writer waits")
    writer_waits.set()
    await asyncio.wait_for(asyncio.gather(outer, writer), HANG)
    assert done == ["inner", "outer", "write"]


async def test_a_reader_cancelled_on_its_way_out_does_not_hold_writes_off() -> None:
    gate = ReadWriteGate()
    holding = asyncio.Event()

    async def read() -> None:
        async with gate.reading():
            holding.set()
            await asyncio.Event().wait()  # until cancelled

    reader = asyncio.ensure_future(read())
    await holding.wait()
    async with gate._changed:  # the condition's lock is busy while the reader leaves
        reader.cancel()
        await asyncio.sleep(0)
        reader.cancel()  # and it is cancelled once more on its way out
        await asyncio.sleep(0)
    await asyncio.gather(reader, return_exceptions=True)

    async def write() -> None:
        async with gate.writing():
            pass

    await asyncio.wait_for(write(), HANG)
    assert gate.idle
