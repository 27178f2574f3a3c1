"""Counters for /metrics (Prometheus text format) and /stats."""

from __future__ import annotations

from collections import Counter

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def render(self, gauges: dict[str, int]) -> str:
        lines = []
        for name, value in sorted(self.counters.items()):
            lines.append(f"# TYPE relay_{name} counter")
            lines.append(f"relay_{name} {value}")
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE relay_{name} gauge")
            lines.append(f"relay_{name} {value}")
        return "\n".join(lines) + "\n"
