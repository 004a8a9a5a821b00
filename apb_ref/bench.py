"""`apb-ref bench`: a short kernel benchmark from the installed package. The full one, with every layer
shape, ISA, thread count and the sparse kernel, is benchmarks/kernels.py in the repository; this one
measures the same way (same operand layout, one warm-up, median of at least `repeats` timed calls raised
until a cell has run 50 ms, the baseline and the Rust cells timed in turns and every Rust ratio the median of
same-round ratios: `measure_interleaved`, `speedup`) so its numbers agree with that script's on the same
machine.

For a few of the paper's im2col-lowered layer shapes (M, K, N) — M output channels, K = C·kh·kw, N output
pixels — it times, in one run:

* the baseline: NumPy float32 matmul (M, K) @ (K, N), meant to run on ONE BLAS thread (see `run`);
* each binary GEMM on pre-packed operands (weight (M, W), activation (N, W), both packed along K) with the
  NumPy reference, and with the Rust extension on 1 thread and on every core (default ISA: the best
  available, or APB_KERNEL_ISA);
* the time to pack the activation operand (N, K) that the GEMM consumes (pack_bits of float32 for
  bgemm_1x1, pack_2bit of int8 levels for 1x2 and 2x2) on 1 thread; the weight is packed offline.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Hashable

import numpy as np

from . import kernels

QUICK_SHAPES = [(128, 576, 2916), (256, 1152, 676), (512, 4608, 25)]
MIN_SECONDS = 0.05  # each cell runs at least this long in total (benchmarks/kernels.py: --min-time)
MAX_REPEATS = 2000
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_LEVELS = np.array([-3, -1, 1, 3], dtype=np.int8)


def _stats(times: list[float], warm: float) -> dict:
    times = sorted(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median_s": statistics.median(times), "min_s": times[0], "q1_s": q1, "q3_s": q3, "max_s": times[-1],
            "repeats": len(times), "total_s": sum(times), "warmup_s": warm}


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _repeats_for(warm: float, repeats: int, min_time: float, max_repeats: int) -> int:
    return max(repeats, min(max_repeats, math.ceil(min_time / max(warm, 1e-9))))


def measure(fn, repeats: int, min_time: float = MIN_SECONDS, max_repeats: int = MAX_REPEATS):
    """One timed warm-up, then max(repeats, enough to fill min_time) timed calls (at most max_repeats).

    Returns (stats dict in seconds, the warm-up's result)."""
    warm, result = _timed(fn)
    n = _repeats_for(warm, repeats, min_time, max_repeats)
    return _stats([_timed(fn)[0] for _ in range(n)], warm), result


def measure_interleaved(fns: dict, repeats: int, min_time: float = MIN_SECONDS, rounds: int = 5,
                        max_repeats: int = MAX_REPEATS, settle: float = 0.0):
    """Time several callables in turns, so that the slow spells of a shared host hit them alike.

    One warm-up each; then `rounds` rounds in which every callable, in an order that rotates from round
    to round, runs a block of ceil(n / rounds) timed calls, n being what `measure` would run for it.
    `settle` seconds of sleep before each block let the previous engine's worker threads stop spinning
    (OpenMP's and OpenBLAS's busy-wait after their work, on the cores the next block needs).
    Returns ({name: stats}, {name: warm-up result}); each stats dict also holds "round_medians", the
    median of each round's block, from which `speedup` takes its same-round ratios."""
    if rounds < 1 or repeats < 1:
        raise ValueError(f"measure_interleaved: rounds and repeats must be >= 1, got {rounds} and {repeats}")
    if not settle >= 0:
        raise ValueError(f"measure_interleaved: settle must be >= 0 seconds, got {settle}")
    names = list(fns)
    warm, results, times, per_round = {}, {}, {}, {}
    for name in names:
        warm[name], results[name] = _timed(fns[name])
        times[name], per_round[name] = [], []
    block = {name: math.ceil(_repeats_for(warm[name], repeats, min_time, max_repeats) / rounds) for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle)
            ts = [_timed(fns[name])[0] for _ in range(block[name])]
            times[name] += ts
            per_round[name].append(statistics.median(ts))
    stats = {name: {**_stats(times[name], warm[name]), "round_medians": per_round[name]} for name in names}
    return stats, results


def alternating_speedups(pairs: dict, batches: int = 15, turns: int = 10) -> dict:
    """How many times more work per second each pair's `fast` does than its `slow`: `pairs` maps a name
    to (slow, fast, run, work_ratio), and every turn runs each pair's slow then fast calls, `run` timed
    calls each after one untimed one, pair after pair. A thread speed-up is a ratio of two timings on
    one machine, and turns this short (well under a millisecond for a kernel) see the same state of a
    shared host, whose swings move block-by-block turns; the untimed call lets the caches settle
    after the switch (a 2-thread call right after a 1-thread one first moves half the data to the
    other core). All pairs see the same moments of the host, so one can be a control: the bound's
    loop, whose speed-up says whether the host gave the threads whole cores (`speedup_where`).
    `work_ratio` is fast's work per call over slow's (the bound's loop on 2 threads does twice the
    work of 1). Per batch of `turns` turns, work_ratio × the ratio of the medians; returns
    {name: {"speedup": the median over batches, "batch_speedups": [...]}}."""
    if batches < 1 or turns < 1 or not pairs or any(run < 1 for _, _, run, _ in pairs.values()):
        raise ValueError(f"alternating_speedups: batches, turns and every run must be >= 1 and pairs not empty, "
                         f"got {batches}, {turns} and {[p[2] for p in pairs.values()]}")
    ratios = {name: [] for name in pairs}
    for _ in range(batches):
        times = {name: ([], []) for name in pairs}
        for _ in range(turns):
            for name, (slow, fast, run, _) in pairs.items():
                for fn, ts in zip((slow, fast), times[name]):
                    fn()
                    ts += [_timed(fn)[0] for _ in range(run)]
        for name, (_, _, _, work_ratio) in pairs.items():
            slow_t, fast_t = times[name]
            ratios[name].append(work_ratio * statistics.median(slow_t) / statistics.median(fast_t))
    return {name: {"speedup": statistics.median(r), "batch_speedups": r} for name, r in ratios.items()}


def speedup_where(measured: dict, name: Hashable, control: Hashable, at_least: float) -> dict:
    """`name`'s speed-up (an `alternating_speedups` result) over the batches in which `control`'s reached
    `at_least`: {"speedup": their median, or None if there are none, "batches": how many}."""
    kept = [r for r, c in zip(measured[name]["batch_speedups"], measured[control]["batch_speedups"]) if c >= at_least]
    return {"speedup": statistics.median(kept) if kept else None, "batches": len(kept)}


def speedup(slow: dict, fast: dict) -> float:
    """How many times faster `fast` ran than `slow`: the median of their same-round ratios when both
    come from one `measure_interleaved` call, else the ratio of their medians."""
    a, b = slow.get("round_medians"), fast.get("round_medians")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return slow["median_s"] / fast["median_s"]


def _one_blas_thread():
    """Limit BLAS to one thread with threadpoolctl when it is importable (it is not a dependency)."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except ImportError:
        return contextlib.nullcontext()


def _blas_threads() -> str:
    """How many threads the BLAS uses right now, as far as can be told honestly."""
    try:
        from threadpoolctl import threadpool_info
        counts = sorted({d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"})
        if counts:
            return ",".join(map(str, counts))
    except ImportError:
        pass
    if any(os.environ.get(v, "").strip() == "1" for v in BLAS_ENV):
        return "1"  # set before NumPy was imported, presumably (the CLI re-exec does that)
    return "all?"  # default OpenBLAS/MKL: every core


def run(shapes=QUICK_SHAPES, repeats: int = 5, seed: int = 0) -> list[dict]:
    """One dict per (shape, kernel) with median milliseconds and ratios to the float32 baseline.

    Keys: shape, kernel, fp32_ms, blas_threads, numpy_ms, rust_1t_ms, rust_all_ms, rust_threads,
    pack_ms (activation packing on one thread: Rust when available, else NumPy), speedup_numpy,
    speedup_rust_1t, speedup_rust_all, speedup_rust_1t_with_pack. Rust entries are None without the
    extension.

    Limitation: NumPy is already imported in this process, so BLAS environment variables set now have no
    effect. The baseline is single-threaded when threadpoolctl is importable (used if present) or when
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS=1 were set before NumPy was imported (the CLI
    can re-exec itself that way); otherwise it may use every core and the ratios are understated. Each row
    records what the BLAS reported as `blas_threads`.
    """
    rng = np.random.default_rng(seed)
    rust = "rust" in kernels.available_backends()
    cores = os.cpu_count() or 1
    rows = []
    for m, k, n in shapes:
        # Same operands, in the same order, as benchmarks/kernels.py.
        w = rng.standard_normal((m, k)).astype(np.float32)
        x = rng.standard_normal((n, k)).astype(np.float32)  # activation rows = output pixels
        x_kn = np.ascontiguousarray(x.T)
        a, b = kernels.pack_bits(w), kernels.pack_bits(x)
        v_act = rng.choice(_LEVELS, size=(n, k))
        hi, lo = kernels.pack_2bit(v_act)
        ahi, alo = kernels.pack_2bit(rng.choice(_LEVELS, size=(m, k)))
        calls = {"bgemm_1x1": (lambda **t: kernels.bgemm_1x1(a, b, k, **t), lambda **t: kernels.pack_bits(x, **t)),
                 "bgemm_1x2": (lambda **t: kernels.bgemm_1x2(a, hi, lo, k, **t),
                               lambda **t: kernels.pack_2bit(v_act, **t)),
                 "bgemm_2x2": (lambda **t: kernels.bgemm_2x2(ahi, alo, hi, lo, k, **t),
                               lambda **t: kernels.pack_2bit(v_act, **t))}
        # The baseline and the Rust cells run in turns (as in benchmarks/kernels.py), so a slow spell of
        # a shared host slows both sides of a ratio; the slow NumPy references run apart.
        group = {"fp32": lambda: w @ x_kn}
        if rust:
            for name, (gemm, pack) in calls.items():
                group[name, 1] = lambda gemm=gemm: gemm(threads=1)
                group[name, cores] = lambda gemm=gemm: gemm(threads=cores)
                group[name, "pack"] = lambda pack=pack: pack(threads=1)
        with _one_blas_thread(), kernels.use_backend("rust" if rust else "numpy"):
            blas_threads = _blas_threads()
            timed = measure_interleaved(group, repeats)[0]
        fp32 = timed["fp32"]
        base = fp32["median_s"]
        for name, (gemm, pack) in calls.items():
            with kernels.use_backend("numpy"):
                t_numpy = measure(gemm, repeats)[0]["median_s"]
                t_pack = None if rust else measure(pack, repeats)[0]["median_s"]
            one = all_ = None
            if rust:
                one, all_, t_pack = timed[name, 1], timed[name, cores], timed[name, "pack"]["median_s"]
            rows.append({
                "shape": (m, k, n), "kernel": name, "fp32_ms": 1e3 * base, "blas_threads": blas_threads,
                "numpy_ms": 1e3 * t_numpy, "speedup_numpy": base / t_numpy,
                "rust_1t_ms": 1e3 * one["median_s"] if one else None,
                "speedup_rust_1t": speedup(fp32, one) if one else None,
                "rust_all_ms": 1e3 * all_["median_s"] if all_ else None,
                "speedup_rust_all": speedup(fp32, all_) if all_ else None,
                "rust_threads": cores if rust else None, "pack_ms": 1e3 * t_pack,
                "speedup_rust_1t_with_pack": base / (one["median_s"] + t_pack) if one else None,
            })
    return rows


def table(rows: list[dict]) -> str:
    """The rows of `run` as a plain-text table with a header that says what was measured."""
    def cell(ms, speedup):
        return "-" if ms is None else f"{ms:.3f} ({speedup:.1f}x)" if speedup >= 1 else f"{ms:.3f} ({speedup:.2f}x)"

    threads = sorted({r["blas_threads"] for r in rows}) or ["?"]
    all_cores = next((r["rust_threads"] for r in rows if r["rust_threads"]), None)
    lines = [
        "apb-ref bench: median ms per call (ratio = NumPy float32 matmul ms / kernel ms, same run)",
        f"fp32 baseline on {'/'.join(threads)} BLAS thread(s)"
        + ("" if threads == ["1"] else "  [not one thread: set OPENBLAS_NUM_THREADS=1 before starting Python]"),
        f"rust: default ISA, 1 thread and {all_cores} threads (every core); pack = the activation operand "
        "on 1 thread (pack_bits for 1x1, pack_2bit for 1x2/2x2); '+pack' = fp32 / (rust 1t + pack)"
        if all_cores else "rust extension not available: NumPy reference only",
    ]
    headers = ["M,K,N", "kernel", "fp32 ms", "numpy-ref", "rust 1t", f"rust {all_cores or 'all'}t", "pack ms",
               "+pack"]
    body = [[",".join(map(str, r["shape"])), r["kernel"], f"{r['fp32_ms']:.3f}",
             cell(r["numpy_ms"], r["speedup_numpy"]), cell(r["rust_1t_ms"], r["speedup_rust_1t"]),
             cell(r["rust_all_ms"], r["speedup_rust_all"]), f"{r['pack_ms']:.3f}",
             "-" if r["speedup_rust_1t_with_pack"] is None else f"{r['speedup_rust_1t_with_pack']:.1f}x"]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    for i, r in enumerate([headers] + body):
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    slower = [r for r in rows if r["rust_all_ms"] is not None and r["rust_1t_ms"] is not None
              and r["rust_all_ms"] > r["rust_1t_ms"]]
    if slower:  # more threads cannot be slower on an idle machine: say why the figure looks wrong
        lines.append(f"note: {len(slower)} row(s) ran slower on {all_cores} threads than on 1: other work shares "
                     "the cores (a busy or virtual machine); time on an idle machine to compare threads")
    return "\n".join(lines)


def main(repeats: int = 5) -> int:
    print(table(run(repeats=repeats)))
    return 0
