"""``relay cache stats|verify|purge``: the disk tier (and the Redis tier, where configured) of
a config, looked at and tended from outside a relay — offline, or beside a running one.

Keys name what they hold (``relay.cutout.key_prefix``): ``v2/{kind}-{store}/[p-{token}/]{c}/{e}/
{ch}/r{level}…``, so entries are grouped by channel and level and attributed to the config's
sources by kind and names, as the catalog matches them (first match wins). Entries no configured
source claims any more, or of an older key layout, are listed apart (and purged with
``--orphans``).

All of it is safe while relays use the tiers: a purge removes entries (a relay then reads them
upstream again, or still has them in memory, which holds the same bytes), and verify removes
only entries whose checksum fails, which a relay would refuse to serve anyway. Neither can make
a relay serve a wrong byte.

What a relay did not write — a key under the Redis prefix that is not a relay's value (not
UTF-8, a hash, another program's bytes), a disk row in a form a relay never writes — is never
read as a value nor removed: every command counts it, says so, and goes on.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ..model import SourceSettings
from ..progress import Tally, progress
from .base import CacheTier, Inventoried

__all__ = ["EntryName", "Selection", "parse_key", "purge", "stats", "verify"]

_LEVEL = re.compile(r"r([0-9]{1,2})(?:-.*)?")
#: the key layout this relay writes (``relay.cutout.KEY_VERSION``)
_VERSION = "v2"


@dataclass(frozen=True, slots=True)
class EntryName:
    """What a cache key says about its entry."""

    kind: str
    channel: str          # collection/experiment/channel
    level: int | None     # None: not a level's entry (none are, today)


def parse_key(key: str) -> EntryName | None:
    """The parts of a key in this relay's layout, or None (an older layout, a stranger)."""
    parts = key.split("/")
    if len(parts) < 6 or parts[0] != _VERSION or "-" not in parts[1]:
        return None
    rest = parts[3:] if parts[2].startswith("p-") else parts[2:]
    if len(rest) < 4:
        return None
    level = _LEVEL.fullmatch(rest[3])
    return EntryName(parts[1].rsplit("-", 1)[0], "/".join(rest[:3]),
                     int(level[1]) if level else None)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries a command touches: ``channel`` a C/E/CH pattern (``*`` in any part),
    ``level``, ``source`` an index into the config's sources, ``orphans`` the entries no
    source claims; nothing given: every entry."""

    channel: str | None = None
    level: int | None = None
    source: int | None = None
    orphans: bool = False

    @property
    def everything(self) -> bool:
        return (self.channel, self.level, self.source) == (None, None, None) and not self.orphans

    def picks(self, name: EntryName | None, owner: int | None) -> bool:
        if self.orphans:
            return owner is None
        if name is None:
            return self.everything
        return ((self.channel is None or fnmatch.fnmatchcase(name.channel, self.channel))
                and (self.level is None or name.level == self.level)
                and (self.source is None or owner == self.source))


def owner(name: EntryName | None, sources: Sequence[SourceSettings]) -> int | None:
    """The index of the source an entry belongs to (the catalog's first match), or None."""
    if name is None:
        return None
    names = name.channel.split("/")
    for index, source in enumerate(sources):
        if source.kind == name.kind and source.claims(*names):
            return index
    return None


@dataclass
class _Group:
    entries: int = 0
    nbytes: int = 0
    levels: set[int] = field(default_factory=set)


def _foreign(tier: Inventoried) -> str:
    """What a line about ``tier`` adds for the keys its listing left out."""
    n = tier.foreign_keys
    return f"; {n} keys not a relay's, left alone" if n else ""


def _label(tier: CacheTier) -> str:
    where = getattr(tier, "directory", None) or getattr(tier, "where", "")
    return f"{tier.name} tier {where}".rstrip()


async def stats(tiers: Sequence[CacheTier], sources: Sequence[SourceSettings],
                selection: Selection, out: TextIO = sys.stdout) -> int:
    """Entries and bytes per source and channel, per tier (of the selected entries)."""
    for tier in tiers:
        assert isinstance(tier, Inventoried)
        groups: dict[tuple[int | None, str], _Group] = defaultdict(_Group)
        for _, size, name, index in await _selected(tier, sources, selection):
            group = groups[(index, name.channel if name else "(other)")]
            group.entries += 1
            group.nbytes += size
            if name is not None and name.level is not None:
                group.levels.add(name.level)
        total = sum(g.nbytes for g in groups.values())
        count = sum(g.entries for g in groups.values())
        print(f"{_label(tier)}: {count} entries, {total / 1e6:.1f} MB{_foreign(tier)}",
              file=out)
        rows = []
        for (index, channel), group in sorted(groups.items(),
                                              key=lambda item: (item[0][0] is None, item[0])):
            if index is None:
                who = "no configured source (orphaned)"
            else:
                source = sources[index]
                who = (f"source {index} ({source.kind} {source.collection}/"
                       f"{source.experiment}/{source.channel})")
            levels = ",".join(f"r{r}" for r in sorted(group.levels)) or "-"
            rows.append((channel, who, f"levels {levels}", f"{group.entries} entries",
                         f"{group.nbytes / 1e6:.1f} MB"))
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(5)]
        for row in rows:
            print("  " + "  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths, strict=True))),
                  file=out)
    return 0


async def _selected(tier: Inventoried, sources: Sequence[SourceSettings],
                    selection: Selection
                    ) -> list[tuple[str, int, EntryName | None, int | None]]:
    """The selected entries: key, size, what the key says, and the source it belongs to."""
    picked = []
    async for key, size in tier.entries():
        name = parse_key(key)
        index = owner(name, sources)
        if selection.picks(name, index):
            picked.append((key, size, name, index))
    return picked


async def verify(tiers: Sequence[CacheTier], sources: Sequence[SourceSettings],
                 selection: Selection, out: TextIO = sys.stderr) -> int:
    """Read every selected entry and check its checksum, removing the damaged ones; 1 when
    any was damaged."""
    damaged_total = 0
    for tier in tiers:
        assert isinstance(tier, Inventoried)
        picked = await _selected(tier, sources, selection)
        tally = Tally(len(picked), "entries")
        counts = {"whole": 0, "damaged": 0, "gone": 0, "foreign": 0}
        async with progress(tally, f"verifying {tier.name}", out):
            for key, size, _, _ in picked:
                found = await tier.check(key)
                counts[found] += 1
                if found == "damaged":
                    tally.failed += 1
                    print(f"relay cache: {tier.name}: {key} failed its checksum; removed",
                          file=out)
                elif found == "foreign":
                    tally.failed += 1
                    print(f"relay cache: {tier.name}: {key} is not an entry a relay wrote; "
                          "left alone", file=out)
                else:
                    tally.done += 1
                tally.nbytes += size
        damaged_total += counts["damaged"] + counts["foreign"] + tier.foreign_keys
        print(f"relay cache: {_label(tier)}: {counts['whole']} whole, {counts['damaged']} "
              f"damaged (removed), {counts['foreign']} foreign (left alone), "
              f"{counts['gone']} gone meanwhile ({tally.nbytes / 1e6:.1f} MB in "
              f"{tally.seconds:.1f} s){_foreign(tier)}", file=out)
    return 1 if damaged_total else 0


async def purge(tiers: Sequence[CacheTier], sources: Sequence[SourceSettings],
                selection: Selection, out: TextIO = sys.stderr) -> int:
    for tier in tiers:
        assert isinstance(tier, Inventoried)
        picked = await _selected(tier, sources, selection)
        for key, _, _, _ in picked:
            await tier.delete(key)
        print(f"relay cache: {_label(tier)}: removed {len(picked)} entries "
              f"({sum(entry[1] for entry in picked) / 1e6:.1f} MB){_foreign(tier)}", file=out)
    return 0
