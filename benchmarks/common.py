"""Shared pieces of the benchmark scripts: machine facts, timing, table printing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy as np
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}


def steal_seconds() -> list[float] | None:
    """Per CPU, the seconds the hypervisor has run something else while this vCPU wanted to run
    ("steal" in /proc/stat), or None where that is not readable. A difference over a run says whether
    the host, not just this machine, was idle."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        lines = Path("/proc/stat").read_text().splitlines()
        return [int(line.split()[8]) / hz for line in lines if line.startswith("cpu") and line[3].isdigit()]
    except (OSError, ValueError, IndexError):
        return None


# The bound's loop as the control of a thread speed-up measured in turns: a batch of turns counts as
# clean when the loop scaled by at least this fraction of the thread count in it (1.9x on 2 threads),
# i.e. the host gave every thread a whole core.
CLEAN = 0.95


def bound_pair(peak: Callable, threads: int, steps: int) -> tuple:
    """The bound's loop (`peak`: apb_ref._kernels.xor_popcount_peak) on 1 and on `threads` threads as an
    `apb_ref.bench.alternating_speedups` pair: one timed call a turn, `threads` times the work on
    `threads` threads."""
    return (lambda: peak(threads=1, steps=steps), lambda: peak(threads=threads, steps=steps), 1, float(threads))


def time_median(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn` in seconds over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def write_json(name: str, payload: dict, path: str | Path | None = None) -> Path:
    """Write `payload` (plus the command and machine) to `path`, by default results/<name>.json."""
    path = Path(path) if path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
