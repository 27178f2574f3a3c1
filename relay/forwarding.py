"""Cut-through forwarding in a chain: a hop sends an upstream relay's Blosc frame on to its own
client while the frame is still arriving, instead of receiving all of it, checking it, caching
it and only then sending it (one hop's receive and send, serial, were most of a cold chain
read: docs/benchmarks.md, P6).

A bad frame is never delivered whole. Forwarding begins only once the first bytes' Blosc header
names exactly the expected sizes (so an HTML page, the wrong dtype's length or a short frame is
still an ordinary BossDB error, with its status); after that, whatever would complete the body
is held back until the whole frame has been checked (``BossUpstream.read_encoded``: its header
and its decoded length, the same check a frame gets when it is not forwarded). A frame that
fails is cut off short of the Content-Length already sent, so the client sees a broken
transfer, never a complete wrong body; the upstream read failed, so nothing was cached.

A read retried after bytes were forwarded (a reset mid-body) is not forwarded a second time:
the response waits for the checked frame and sends the rest of it only when what it already
sent is that frame's beginning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from .codecs import blosc_sizes
from .geometry import Box
from .metrics import Metrics

__all__ = ["ForwardBroken", "Forwarded", "FrameSink"]

#: a Blosc1 header: what must have arrived before the first byte is forwarded
_HEADER_BYTES = 16


class ForwardBroken(Exception):
    """The frame being forwarded failed its check (or its read failed) after the response
    began: the body is cut off."""


class FrameSink:
    """What the upstream read of one cuboid ``box`` feeds as its body arrives: for the
    response that forwards it, if one does (only a read of exactly that box feeds it:
    ``relay.cutout``), and to put the body together behind ``prefix`` (the cache's header),
    so the cached value is made in the one copy that joins the body's pieces."""

    def __init__(self, box: Box, dtype: np.dtype[Any], prefix: bytes = b"") -> None:
        self.box = box
        self.nbytes = box.voxels * dtype.itemsize  # what the frame must decode to
        self.prefix = prefix
        self.packed: bytes | None = None  # the prefix and the last try's whole body
        self.fetched_at = 0.0   # when the read began (the version the response names)
        self.length = 0         # the forwarded body's length (its Content-Length)
        self.tries = 0          # tries of the read whose body was fed
        self.forwarding = 0     # the try being forwarded (0: none yet)
        self.chunks: list[bytes] = []   # the current try's body so far
        self.frame: bytes | memoryview | None = None  # the whole frame, checked
        self.started = asyncio.Event()   # forwarding may begin
        self.changed = asyncio.Event()   # more arrived, or the read ended
        self._announced = 0
        self._received = 0

    def begin(self, length: int) -> None:
        """A try's 2xx answer announcing ``length`` bytes."""
        self.tries += 1
        self._announced, self._received = length, 0
        self.chunks, self.packed = [], None
        self.changed.set()

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._received += len(chunk)
        if not self.forwarding and self._received >= _HEADER_BYTES:
            first = self.chunks[0]
            head = first if len(first) >= _HEADER_BYTES else b"".join(self.chunks)
            if blosc_sizes(head) == (self.nbytes, self._announced):
                self.forwarding, self.length = self.tries, self._announced
                self.started.set()
        self.changed.set()

    def joined(self) -> memoryview:
        """The try's whole body (behind the prefix in ``packed``)."""
        self.packed = b"".join([self.prefix, *self.chunks])
        self.chunks = []  # (what is still to be forwarded is sent from the frame)
        return memoryview(self.packed)[len(self.prefix):]

    def checked(self, frame: bytes | memoryview) -> None:
        """The read's whole frame, decoded to exactly the box's voxels."""
        self.frame = frame
        self.changed.set()


class Forwarded:
    """A response body still arriving: ``pieces`` yields it, ``close`` lets go of the read."""

    def __init__(self, sink: FrameSink, reading: asyncio.Future[Any], metrics: Metrics) -> None:
        self.sink = sink
        self.reading = reading
        self.metrics = metrics
        reading.add_done_callback(self._ended)

    @property
    def length(self) -> int:
        return self.sink.length

    def _ended(self, reading: asyncio.Future[Any]) -> None:
        if not reading.cancelled():
            reading.exception()  # retrieved: a failure is reported by ``pieces``
        self.sink.changed.set()

    async def pieces(self) -> AsyncIterator[bytes | memoryview]:
        """The body, as it arrives; ForwardBroken instead of its last piece when the frame
        failed its check."""
        sink = self.sink
        sent: list[bytes] = []
        count = index = 0
        while True:
            sink.changed.clear()
            if sink.frame is not None or self.reading.done():
                break
            if sink.tries == sink.forwarding:
                chunks = sink.chunks
                # never the piece that would complete the body: it waits for the check
                while index < len(chunks) and count + len(chunks[index]) < sink.length:
                    sent.append(chunks[index])
                    count += len(chunks[index])
                    index += 1
                    yield chunks[index - 1]
                    if sink.tries != sink.forwarding:
                        break  # retried while the piece was sent
            await sink.changed.wait()  # (at once if anything changed meanwhile)
        frame = sink.frame
        if frame is None or len(frame) != sink.length:
            self.metrics.inc("forwards_cut_total")
            raise ForwardBroken(self._why())
        if sink.tries != sink.forwarding and frame[:count] != b"".join(sent):
            # retried, and the frame that passed is not the one begun
            self.metrics.inc("forwards_cut_total")
            raise ForwardBroken("the upstream sent another frame when its read was retried")
        yield memoryview(frame)[count:]

    def _why(self) -> str:
        reading = self.reading
        if reading.done() and not reading.cancelled() and reading.exception() is not None:
            return str(reading.exception())
        return "the frame did not pass its check"

    def close(self) -> None:
        """The response is done (or its client gone): a read nobody waits for is let go."""
        if not self.reading.done():
            self.reading.cancel()
