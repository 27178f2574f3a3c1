"""Progress of the long command-line jobs (``relay warm``, ``relay cache verify``): a bar on a
terminal (done of total, MB/s, time left), a plain line every few seconds anywhere else (a log,
a CI job), and the tally both report from.

This module is the only user of ``rich``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["Tally", "progress"]

#: seconds between plain progress lines when not on a terminal
PLAIN_EVERY = 5.0


@dataclass
class Tally:
    """What a job has done so far, in items (cuboids, entries) and bytes."""

    total: int
    unit: str
    done: int = 0
    failed: int = 0
    nbytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """MB/s so far."""
        return self.nbytes / 1e6 / max(self.seconds, 1e-9)

    def line(self) -> str:
        left = (self.seconds / self.finished * (self.total - self.finished)
                if self.finished else None)
        eta = "?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        return (f"{self.finished}/{self.total} {self.unit}, {self.rate:.1f} MB/s, "
                f"{self.failed} error(s), ETA {eta}")


class progress:
    """Shows ``tally`` for as long as the block runs: a bar when ``bar`` (default: when ``out``
    is a terminal), else a plain line every ``PLAIN_EVERY`` seconds."""

    def __init__(self, tally: Tally, label: str, out: TextIO, bar: bool | None = None) -> None:
        self.tally = tally
        self.label = label
        self.out = out
        self.bar = out.isatty() if bar is None else bar
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> progress:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)  # the bar's last refresh

    async def _run(self) -> None:
        tally = self.tally
        if not self.bar:
            while True:
                await asyncio.sleep(PLAIN_EVERY)
                print(f"{self.label}: {tally.line()}", file=self.out, flush=True)
        shown = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                         TextColumn(tally.unit), TextColumn("{task.fields[rate]}"),
                         TimeRemainingColumn(), console=Console(file=self.out))
        task = shown.add_task(self.label, total=tally.total, rate="")
        with shown:
            try:
                while True:
                    shown.update(task, completed=tally.finished, rate=f"{tally.rate:.1f} MB/s")
                    await asyncio.sleep(0.2)
            finally:  # cancelled: one last refresh, so the bar ends where the job did
                shown.update(task, completed=tally.finished, rate=f"{tally.rate:.1f} MB/s")
