"""Side-by-side benchmarks of the relay and what users would run instead, in one run.

    python bench/run.py [--smoke] [--out docs/benchmarks.md] [--only P3,P6]

Every workload is measured against its comparator in the same run, on the same machine, and
reported as a ratio (absolute times on a shared 2-core box are noise). The workloads are listed
in bench/workloads.py; bench/harness.py holds what they share (the load generator, the
comparator servers, ``Bench``), and bench/report.py writes the report.
--smoke runs every workload tiny and once, to keep the harness working; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    CUBOID,
    FULL,
    SMOKE,
    Bench,
    Report,
    http,
    raw_starlette,
    start_relay,
)
from bench.report import write_report  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, once: keep the harness alive")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--only", type=lambda text: set(text.upper().split(",")),
                        default=set(WORKLOADS),
                        help="a comma-separated subset of " + ",".join(WORKLOADS)
                             + " (for working on one; the report then holds only those)")
    args = parser.parse_args()
    unknown = args.only - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    mode = SMOKE if args.smoke else FULL
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    report = Report(mode)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        data = np.random.default_rng(0).integers(0, 256, mode.shape_zyx, dtype=np.uint8)
        store = root / "u8.zarr"
        array = zarr.create_array(str(store), shape=data.shape, chunks=(16, 512, 512),
                                  dtype="uint8", zarr_format=3)
        array[...] = data
        sources = [{"collection": "b", "experiment": "e", "channel": "u8", "kind": "zarr",
                    "url": str(store), "voxel_size": [4, 4, 40]}]
        relay = start_relay(stack, root, "relay", sources)
        blob = http.get(relay.url + CUBOID).content  # the relay's exact bytes
        (root / "blob").write_bytes(blob)
        raw = stack.enter_context(raw_starlette(root / "blob"))
        bench = Bench(mode, report, root, stack, data, sources, relay, raw)
        for name, workload in WORKLOADS.items():
            if name in args.only:
                workload(bench)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
