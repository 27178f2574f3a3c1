"""The report: docs/benchmarks.md's table of ratios, a table and a PNG plot per scaling curve, and
the hand-written explanations below the marker, kept across runs."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

from bench.harness import Curve, MiB, Report

__all__ = ["write_report"]

KEPT = "<!-- written by hand from here on; bench/run.py keeps it when it rewrites the figures -->"


def write_report(report: Report, out: Path) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `{' '.join(sys.argv)}`"
        f" on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "Each figure is the median of "
        f"{report.mode.trials} trial(s); ratios compare numbers taken in the same run. Load: "
        "`wrk -t1` in its own process (P1, P2, P5, P6 warm); a sequential urllib3 client (P3, "
        "P6 cold) or httpx client (P7).",
        "",
        "| workload | relay | comparator | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        met = "yes" if row.met else "no" if row.met is not None else "—"
        lines.append(f"| {row.workload} | {row.relay} | {row.comparator} | {row.ratio:.2f} | "
                     f"{row.target} | {met} |")
    if report.notes:
        lines += ["", *[f"- {note}" for note in report.notes]]
    for number, curve in enumerate(report.curves, 1):
        image = out.with_name(f"{out.stem}-curve{number}.png")
        plot(curve, image)
        lines += ["", f"## Scaling: {curve.title}", "",
                  f"| {curve.x_label} | req/s | MiB/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for label, _, figures in curve.points:
            lines.append(f"| {label} | {figures['rps']:.0f} | "
                         f"{figures['bytes_per_s'] / MiB:.0f} | {figures['p50_ms']:.2f} | "
                         f"{figures['p99_ms']:.2f} |")
        lines += ["", f"![{curve.title}]({image.name})"]
    # The explanations of missed targets are written by hand, from profiles, below the marker:
    # a new run replaces the figures above it and keeps them.
    kept = out.read_text().partition(KEPT)[2] if out.exists() and KEPT in out.read_text() else ""
    lines += ["", KEPT + (kept or "\n")]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def plot(curve: Curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    xs = [x for _, x, _ in curve.points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [f["p50_ms"] for _, _, f in curve.points], "o-", label="p50")
    left.plot(xs, [f["p99_ms"] for _, _, f in curve.points], "s--", label="p99")
    left.set(xlabel=curve.x_label, ylabel="latency (ms)", xscale="log", yscale="log")
    left.legend()
    key, unit = ("bytes_per_s", "MiB/s") if curve.x_label == "voxels" else ("rps", "req/s")
    scale = MiB if key == "bytes_per_s" else 1
    right.plot(xs, [f[key] / scale for _, _, f in curve.points], "o-")
    for label, x, figures in curve.points:
        right.annotate(label, (x, figures[key] / scale), textcoords="offset points",
                       xytext=(4, 4), fontsize=7)
    right.set(xlabel=curve.x_label, ylabel=unit, xscale="log")
    fig.suptitle(f"relay: {curve.title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
