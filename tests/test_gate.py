"""relay.gate: a write waits for the store reads in flight and holds new ones off; a read inside
a read goes ahead of a waiting writer (no deadlock); a reader cancelled on its way out never
holds writes off for good.

The steps are ordered by events, not by time: a task that sets an event just before it enters
the gate has run into the gate (and is waiting there, or holds it) by the time the test, woken
by that event, looks."""

from __future__ import annotations

import asyncio

from relay.gate import ReadWriteGate

#: seconds any step may take before the test calls it a hang
HANG = 5.0


async def test_a_write_waits_for_reads_and_holds_new_ones_off() -> None:
    gate = ReadWriteGate()
    order: list[str] = []
    release_read = asyncio.Event()

    async def read(name: str, trying: asyncio.Event, hold: asyncio.Event | None = None) -> None:
        trying.set()
        async with gate.reading():
            order.append(f"{name} in")
            if hold is not None:
                await hold.wait()
        order.append(f"{name} out")

    async def write(trying: asyncio.Event) -> None:
        trying.set()
        async with gate.writing():
            order.append("write")

    first_in, writer_in, late_in = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.ensure_future(read("r1", first_in, release_read))
    await first_in.wait()
    assert order == ["r1 in"]  # the first read holds the gate
    writer = asyncio.ensure_future(write(writer_in))
    await writer_in.wait()
    assert gate._writers_waiting == 1
    late = asyncio.ensure_future(read("r2", late_in))
    await late_in.wait()
    assert "r2 in" not in order  # a new read waits behind the waiting writer
    release_read.set()
    await asyncio.wait_for(asyncio.gather(first, writer, late), HANG)
    assert order.index("r1 out") < order.index("write") < order.index("r2 in")


async def test_a_read_inside_a_read_goes_ahead_of_a_waiting_writer() -> None:
    gate = ReadWriteGate()
    holding, writer_in, writer_waits = asyncio.Event(), asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def derived() -> None:
        async with gate.reading():
            holding.set()
            await writer_waits.wait()

            # the finer level's read, in a task of its own as a derived cuboid's pieces are
            async def inner() -> None:
                async with gate.reading():
                    done.append("inner")

            await asyncio.wait_for(asyncio.ensure_future(inner()), HANG)
        done.append("outer")

    async def write() -> None:
        writer_in.set()
        async with gate.writing():
            done.append("write")

    outer = asyncio.ensure_future(derived())
    await holding.wait()
    writer = asyncio.ensure_future(write())
    await writer_in.wait()
    assert gate._writers_waiting == 1
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
        # it leaves without waiting for that lock (a reader that waited for it could be
        # cancelled once more there, and leave its count up)
        await asyncio.wait([reader], timeout=HANG)
        assert reader.cancelled()

    async def write() -> None:
        async with gate.writing():
            pass

    await asyncio.wait_for(write(), HANG)
    assert gate.idle
