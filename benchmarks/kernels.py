"""Binary and sparse kernels against NumPy float32 matmul on one thread, on the paper's layer shapes.

    python benchmarks/kernels.py [--quick] [--repeats N] [--min-time S] [--rounds R] [--ghz G] [--threads 1,2]
                                 [--json PATH]

A conv layer lowered by im2col is a GEMM with M = output channels (weight rows), K = C·kh·kw and
N = output pixels. The float32 baseline is (M, K) @ (K, N) on ONE BLAS thread: this script sets
OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = 1 before NumPy is imported. The binary kernels
take both operands packed along K: the weight (M, W) and the activation (N, W), W = ceil(K/64), out (M, N).

Measured in the same run, each cell the median of its timed repeats after one untimed warm-up; the
repeat count is at least --repeats and is raised until a cell has run for --min-time seconds. Cells that
are compared run in turns (apb_ref.bench.measure_interleaved), --rounds rounds of short blocks: per shape
the fp32 baseline with every Rust bgemm cell, and per density scipy with the Rust csr_matmul cells. On a
shared host whose speed drifts by tens of percent over seconds, a slow spell then slows both sides of a
ratio, and every ratio and thread speed-up is the median of same-round ratios:

* NumPy float32 matmul, one thread (the baseline of every ratio);
* the NumPy reference kernels (apb_ref.kernels.reference) bgemm_1x1 / 1x2 / 2x2 and csr_matmul;
* the Rust kernels (apb_ref._kernels) for every ISA it can run here and each thread count;
* bgemm_1x1 as a layer runs it ("bgemm_1x1 prepared"): the weight packed into panels once by
  bgemm_prepare (not timed), bgemm_prepared(activation, ·) giving the (N, M) output channels-last;
* packing the float32 activation (N, K) with pack_bits and the 2-bit activation with pack_2bit (the
  weight is packed once, offline, so it is not timed), and the same from im2col's (K, N) columns
  (`layout="columns"`, what packed inference uses);
* scipy.sparse CSR @ dense (single-threaded C++) against the NumPy reference and Rust csr_matmul for an
  (M, K) matrix at 1 %, 2 % and 5 % density times a dense (K, N) float32.

ratio = baseline time / kernel time (median over rounds, see above); MAC/s = M·K·N / time for every
bgemm (for 1x2 and 2x2 too: the MACs of the layer); for every bgemm on AVX-512 also the fraction of the
machine's xor-popcount-add bound on as many threads, counting the binary products a MAC takes (1x1: 1,
1x2: 2 plane pairs, 2x2: 4), of the bound: the rate of a loop doing nothing but the
GEMM's inner step (XOR, VPOPCNTQ, VPADDQ on 512 bits) on registers (`apb_ref._kernels.xor_popcount_peak`),
which runs per shape in turns with the kernels, the fraction being the median of same-round ratios (so
not exactly macs_per_s / bound_macs_per_s, the medians over all calls; the header's bound, median of 5
at the start, is for reference). Every Rust result is checked against the NumPy reference once.
Thread speed-ups of bgemm_1x1 (both ways) and of the bound's loop are also measured with 1 and max
threads taking turns of 4 calls, all three in the same turns (apb_ref.bench.alternating_speedups), which
a host's swings between the turns above would blur; the bound's loop is the control, and the kernels'
speed-ups are also given over the batches in which it scaled (the host gave each thread a whole core).
The run reports the time the hypervisor stole from each vCPU.
Writes every number to benchmarks/results/kernels.json (or --json PATH).
"""
from __future__ import annotations

import os

# One BLAS thread for the float32 baseline. This must happen before NumPy (or SciPy) is first imported.
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
for _name in BLAS_ENV:
    os.environ[_name] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import CLEAN, RESULTS, bound_pair, machine, print_table, steal_seconds  # noqa: E402

from apb_ref.bench import (MAX_REPEATS, alternating_speedups, measure, measure_interleaved, speedup,  # noqa: E402
                           speedup_where)
from apb_ref.kernels import reference  # noqa: E402
from apb_ref.training.runtime import reuse_freed_memory  # noqa: E402

try:
    import apb_ref._kernels as R
except ImportError as exc:  # the benchmark still runs the NumPy and SciPy columns
    R, RUST_ERROR = None, exc
else:
    RUST_ERROR = None

try:
    import scipy
    import scipy.sparse
except ImportError:
    scipy = None

SHAPES = [(64, 576, 2916), (128, 576, 2916), (128, 1152, 676), (256, 1152, 676),
          (256, 2304, 144), (512, 2304, 144), (512, 4608, 25)]
QUICK_SHAPES = [(64, 576, 2916), (512, 4608, 25)]
DENSITIES = (0.01, 0.02, 0.05)
KERNELS = ("bgemm_1x1", "bgemm_1x2", "bgemm_2x2")
# Binary products (XOR, popcount, add) per MAC of the layer: one per pair of bit planes.
PLANE_PAIRS = {"bgemm_1x1": 1, "bgemm_1x2": 2, "bgemm_2x2": 4, "bgemm_1x1 prepared": 1}
# bgemm_1x1 as a layer runs it: the weight's panels packed once (bgemm_prepare, not timed), the
# activation rows as A (bgemm_prepared), the output (N, M) channels-last
PREPARED = "bgemm_1x1 prepared"
VALUES_2BIT = np.array([-3, -1, 1, 3], dtype=np.int8)


# --- machine facts ------------------------------------------------------------------------------

def peak(threads: int) -> float | None:
    """The xor-popcount-add bound on `threads` threads (binary MACs/s, median of 5), or None."""
    runs = [R.xor_popcount_peak(threads=threads) for _ in range(5)]
    return None if runs[0] is None else float(np.median(runs))


# Per shape, the bound also runs in turns with the kernels (a cell of measure_interleaved): the host's
# clock drifts by 10-20 % within a run, and a bound taken once at the start would misstate the shapes
# timed in another spell. One call runs BOUND_STEPS steps of 12 independent 512-bit XOR, VPOPCNTQ,
# VPADDQ triples per thread (rust/bgemm/peak.rs), about a millisecond: the ~2 us of the Python call
# then lower the bound by well under 1 %.
BOUND_STEPS = 1 << 19
BOUND_MACS_PER_STEP = 12 * 512


def bound_cell(threads: int):
    """A callable for measure_interleaved that runs the bound's loop once on `threads` threads."""
    return lambda: R.xor_popcount_peak(threads=threads, steps=BOUND_STEPS)


def check_bound_macs(threads: list[int]) -> None:
    """The loop's rate by its own clock and by the wall time of the same call must agree (the wall time
    is a little longer: the call's overhead), or the MACs per call no longer describe the loop."""
    for t in threads:
        ratios = []
        for _ in range(5):
            start = time.perf_counter()
            own = R.xor_popcount_peak(threads=t, steps=BOUND_STEPS)
            ratios.append(own * (time.perf_counter() - start) / (t * BOUND_STEPS * BOUND_MACS_PER_STEP))
            if 0.99 <= ratios[-1] <= 1.2:
                break
        else:
            raise AssertionError(f"the bound's loop on {t} thread(s): rate by its own clock x wall time / MACs "
                                 f"per call = {ratios}, not ~1: BOUND_MACS_PER_STEP is out of date")


def clock(override_ghz: float | None) -> tuple[float | None, str]:
    """(GHz, where it came from): --ghz, else lscpu's max MHz, else cpufreq's max, else /proc/cpuinfo."""
    if override_ghz:
        return override_ghz, "--ghz"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
        if m and float(m.group(1)) > 0:
            return float(m.group(1)) / 1e3, f"lscpu 'CPU max MHz' = {m.group(1)}"
    except (OSError, subprocess.SubprocessError):
        pass
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        khz = int(path.read_text().strip())
        return khz / 1e6, f"{path} = {khz} kHz"
    except (OSError, ValueError):
        pass
    try:
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return float(m.group(1)) / 1e3, (f"/proc/cpuinfo 'cpu MHz' = {m.group(1)} (no max frequency "
                                             "exposed: this is the reported current/nominal clock)")
    except OSError:
        pass
    return None, "unknown (pass --ghz): MAC/cycle of the bound is not shown"


def blas_info() -> dict:
    info = {"env": {v: os.environ.get(v) for v in BLAS_ENV}}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["name"] = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - only a label
        info["name"] = "unknown"
    try:  # not a dependency: used only to confirm the thread count when it happens to be installed
        from threadpoolctl import threadpool_info
        info["threadpoolctl"] = [{k: d.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
                                 for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def machine_info(ghz: float | None, ghz_source: str) -> dict:
    info = machine()
    info.update({"blas": blas_info(), "scipy": getattr(scipy, "__version__", None),
                 "rust_extension": R.version() if R else f"not importable: {RUST_ERROR}",
                 "isa_available": R.isa_available() if R else [], "clock_ghz": ghz, "clock_source": ghz_source,
                 "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
    return info


# --- one shape ----------------------------------------------------------------------------------

def sparse_operand(rng, m: int, k: int, density: float):
    """An (M, K) CSR matrix with exactly round(density·M·K) nonzeros at random places."""
    nnz = max(1, round(density * m * k))
    flat = np.sort(rng.choice(m * k, size=nnz, replace=False))
    rows, cols = np.divmod(flat, k)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    return indptr, cols.astype(np.int32), rng.standard_normal(nnz).astype(np.float32)


def bench_shape(shape, cfg, rng) -> dict:
    m, k, n = shape
    rep, mt = cfg["repeats"], cfg["min_time"]
    pack_bits = R.pack_bits if R else reference.pack_bits
    pack_2bit = R.pack_2bit if R else reference.pack_2bit
    w = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)  # activation rows = output pixels (im2col)
    x_kn = np.ascontiguousarray(x.T)
    a, b = pack_bits(w), pack_bits(x)
    v_act = rng.choice(VALUES_2BIT, size=(n, k))  # 2-bit activation levels, int8
    b_hi, b_lo = pack_2bit(v_act)
    a_hi, a_lo = pack_2bit(rng.choice(VALUES_2BIT, size=(m, k)))
    args = {"bgemm_1x1": (a, b, k), "bgemm_1x2": (a, b_hi, b_lo, k), "bgemm_2x2": (a_hi, a_lo, b_hi, b_lo, k)}
    macs = m * k * n
    out = {"shape": [m, k, n], "macs": macs}

    # The baseline and every Rust cell are timed in turns (measure_interleaved), so a slow spell of a
    # shared host slows them alike and their ratios stay fair; the slow NumPy references run apart.
    group = {"fp32": lambda: w @ x_kn}
    for name in KERNELS:
        for isa in cfg["isas"]:
            for threads in cfg["threads"]:
                if isa == "scalar" and threads > 1 and not cfg["scalar_threads"]:
                    continue
                fn = getattr(R, name)
                group[(name, isa, threads)] = lambda fn=fn, a=args[name], isa=isa, t=threads: fn(*a, isa=isa, threads=t)
    # bgemm_1x1 the way a layer runs it: the weight's panels packed once (not timed) and the
    # activation rows as A, so the output is (N, M), channels-last
    prepared = {isa: R.bgemm_prepare(a, k, "bgemm_1x1", isa=isa) for isa in (cfg["isas"] if R else [])}
    for isa, weights in prepared.items():
        for threads in cfg["threads"]:
            if not (isa == "scalar" and threads > 1 and not cfg["scalar_threads"]):
                group[(PREPARED, isa, threads)] = lambda p=weights, t=threads: R.bgemm_prepared(b, p, threads=t)
    for threads in cfg["peak"]:
        group[("bound", threads)] = bound_cell(threads)
    timed, got = measure_interleaved(group, rep, mt, rounds=cfg["rounds"])
    fp32 = out["fp32"] = timed["fp32"]
    base = fp32["median_s"]
    bound = {}
    for threads in cfg["peak"]:
        stats, macs_per_call = timed[("bound", threads)], threads * BOUND_STEPS * BOUND_MACS_PER_STEP
        bound[threads] = {"macs_per_call": macs_per_call, **stats, "macs_per_s": macs_per_call / stats["median_s"]}
    out["bound"] = {str(t): b for t, b in bound.items()}

    out["bgemm"] = {}
    for name in (*KERNELS, PREPARED):
        if name == PREPARED:  # the same product as bgemm_1x1, transposed
            ref_stats, expected = out["bgemm"]["bgemm_1x1"]["numpy_ref"], one_by_one.T
        else:
            ref_stats, expected = measure(lambda: getattr(reference, name)(*args[name]), rep, mt)
            if name == "bgemm_1x1":
                one_by_one = expected
        cell = {"numpy_ref": {**ref_stats, "ratio": base / ref_stats["median_s"]}, "rust": []}
        for isa, threads in [key[1:] for key in group if key != "fp32" and key[0] == name]:
            stats = timed[(name, isa, threads)]
            if not np.array_equal(got[(name, isa, threads)], expected):
                raise AssertionError(f"{name} isa={isa} threads={threads} differs from the NumPy reference "
                                     f"at shape {shape}")
            t = stats["median_s"]
            row = {"isa": isa, "threads": threads, **stats, "ratio": speedup(fp32, stats), "macs_per_s": macs / t}
            if isa == "avx512" and threads in bound:
                # the bound is the 512-bit VPOPCNTQ loop's: it says nothing about the AVX2 or scalar paths.
                # Its fraction is the median of same-round ratios, as every ratio here; a 2-bit operand
                # has two planes, so 1x2 does 2 binary products per MAC and 2x2 does 4.
                row["bound_macs_per_s"] = bound[threads]["macs_per_s"]
                row["bound_fraction"] = (PLANE_PAIRS[name] * macs / bound[threads]["macs_per_call"]
                                         * speedup(bound[threads], stats))
            cell["rust"].append(row)
        out["bgemm"][name] = cell

    # Thread speed-ups of bgemm_1x1 (both ways) and of the bound's loop, 1 and t_max threads taking
    # turns of a few calls, the three pairs in the same turns (alternating_speedups): the turns above
    # put ~20 cells between a 1-thread and a t_max-thread block, long enough for the host's swings to
    # move their ratio. The bound's loop is the control: a batch in which it scaled by less than
    # CLEAN x t_max is one in which the host did not give the threads whole cores.
    t_max = max(cfg["threads"])
    if R and t_max > 1 and cfg["best"] in cfg["isas"]:
        best, batches = cfg["best"], 3 if cfg["quick"] else 15
        weights = prepared[best]
        calls = {"bgemm_1x1": lambda t: R.bgemm_1x1(a, b, k, isa=best, threads=t),
                 PREPARED: lambda t: R.bgemm_prepared(b, weights, threads=t)}
        pairs = {n: (lambda f=f: f(1), lambda f=f: f(t_max), 4, 1.0) for n, f in calls.items()}
        if t_max in cfg["peak"] and 1 in cfg["peak"]:
            pairs["bound"] = bound_pair(R.xor_popcount_peak, t_max, BOUND_STEPS)
        measured = alternating_speedups(pairs, batches=batches, turns=10)
        out["alternating"] = {"threads": t_max, "isa": best, **measured}
        if "bound" in measured:
            out["alternating"]["clean"] = {
                "bound_at_least": CLEAN * t_max,
                **{n: speedup_where(measured, n, "bound", CLEAN * t_max) for n in calls}}

    # Packing the activation operand (the weight is packed once, offline).
    pack = {"pack_bits": {"input": f"float32 ({n}, {k})"}, "pack_2bit": {"input": f"int8 ({n}, {k})"}}
    pack["pack_bits"]["numpy_ref"], _ = measure(lambda: reference.pack_bits(x), rep, mt)
    pack["pack_2bit"]["numpy_ref"], _ = measure(lambda: reference.pack_2bit(v_act), rep, mt)
    if R:
        for threads in cfg["threads"]:
            pack["pack_bits"][f"rust_{threads}t"], got = measure(lambda: R.pack_bits(x, threads=threads), rep, mt)
            assert np.array_equal(got, reference.pack_bits(x)), "pack_bits differs from the reference"
            pack["pack_2bit"][f"rust_{threads}t"], got = measure(lambda: R.pack_2bit(v_act, threads=threads),
                                                                 rep, mt)
            assert all(map(np.array_equal, got, reference.pack_2bit(v_act))), "pack_2bit differs"
        # The same operands given as im2col's (K, N) columns, as packed inference hands them over
        # (its 2-bit levels are float32).
        v_kn = np.ascontiguousarray(v_act.T, dtype=np.float32)
        pack["pack_bits"]["rust_columns_1t"], got = measure(
            lambda: R.pack_bits(x_kn, threads=1, layout="columns"), rep, mt)
        assert np.array_equal(got, reference.pack_bits(x)), "pack_bits(layout='columns') differs"
        pack["pack_2bit"]["rust_columns_1t"], got = measure(
            lambda: R.pack_2bit(v_kn, threads=1, layout="columns"), rep, mt)
        assert all(map(np.array_equal, got, reference.pack_2bit(v_act))), "pack_2bit(layout='columns') differs"
    out["pack"] = pack

    out["sparse"] = []
    for density in cfg["densities"]:
        indptr, indices, data = sparse_operand(rng, m, k, density)
        cell = {"density": density, "nnz": int(data.size)}
        ref_stats, expected = measure(lambda: reference.csr_matmul(indptr, indices, data, x_kn), rep, mt)
        cell["numpy_ref"] = ref_stats
        group = {}
        if scipy is not None:
            s = scipy.sparse.csr_matrix((data, indices, indptr), shape=(m, k))
            group["scipy"] = lambda s=s: s @ x_kn
        if R:
            for threads in cfg["threads"]:
                group[threads] = lambda t=threads, ip=indptr, ix=indices, d=data: R.csr_matmul(
                    ip, ix, d, x_kn, threads=t, isa=cfg["best"])
        timed, got = measure_interleaved(group, rep, mt, rounds=cfg["rounds"]) if group else ({}, {})
        for key, value in got.items():
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
        if "scipy" in timed:
            cell["scipy"] = timed["scipy"]
        cell["rust"] = [{"isa": cfg["best"], "threads": t, **timed[t]} for t in cfg["threads"] if t in timed]
        out["sparse"].append(cell)
    return out


# --- printing -----------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    v = 1e3 * seconds
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(r: float) -> str:
    return f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def shape_label(s) -> str:
    return ",".join(map(str, s))


def rust_cell(result, name, isa, threads):
    for r in result["bgemm"][name]["rust"]:
        if r["isa"] == isa and r["threads"] == threads:
            return r
    return None


def report(results: list[dict], cfg: dict) -> dict:
    """Print the tables; returns the summary numbers (also written to the JSON)."""
    summary = {}
    cols = [(isa, t) for isa in cfg["isas"] for t in cfg["threads"]
            if not (isa == "scalar" and t > 1 and not cfg["scalar_threads"])]
    best, t_max = cfg["best"], max(cfg["threads"])

    print("\n(1) binary GEMMs on packed operands: median ms (ratio = fp32 1-thread ms / ms)")
    for name in [name for name in (*KERNELS, PREPARED) if name in results[0]["bgemm"]]:
        print(f"\n{name}")
        headers = ["M,K,N", "fp32 1t ms", "numpy-ref"] + [f"{isa} {t}t" for isa, t in cols]
        rows = []
        for res in results:
            ref = res["bgemm"][name]["numpy_ref"]
            row = [shape_label(res["shape"]), ms(res["fp32"]["median_s"]),
                   f"{ms(ref['median_s'])} ({ratio(ref['ratio'])})"]
            for isa, t in cols:
                c = rust_cell(res, name, isa, t)
                row.append(f"{ms(c['median_s'])} ({ratio(c['ratio'])})" if c else "-")
            rows.append(row)
        print_table(headers, rows)
        print(f"{name}: GMAC/s (M*K*N / time)" + (
            f", avx512: % of the measured xor-popcount-add bound on as many threads (of {PLANE_PAIRS[name]} binary "
            "products per MAC)" if cfg["peak"] else ""))
        rows = []
        for res in results:
            row = [shape_label(res["shape"]), f"{res['macs'] / res['fp32']['median_s'] / 1e9:.1f}"]
            for isa, t in cols:
                c = rust_cell(res, name, isa, t)
                cell = f"{c['macs_per_s'] / 1e9:.0f}" if c else "-"
                if c and "bound_fraction" in c:
                    cell += f" ({100 * c['bound_fraction']:.0f}%)"
                row.append(cell)
            rows.append(row)
        print_table(["M,K,N", "fp32 GMAC/s"] + [f"{isa} {t}t" for isa, t in cols], rows)
        over = [c["bound_fraction"] for res in results for c in res["bgemm"][name]["rust"]
                if c.get("bound_fraction", 0) > 1]
        if over:
            print(f"  note: {len(over)} cell(s) exceed the measured bound (up to {100 * max(over):.0f}%): the "
                  "clock moved within a round (the machine is not idle, or boosts)")
        if R:
            ratios = [rust_cell(res, name, best, 1)["ratio"] for res in results]
            i_min = int(np.argmin(ratios))
            s = {"isa": best, "threads": 1, "median_ratio": statistics.median(ratios), "min_ratio": ratios[i_min],
                 "min_ratio_shape": results[i_min]["shape"]}
            print(f"summary {name}, {best} 1 thread: median ratio {ratio(s['median_ratio'])} over "
                  f"{len(ratios)} shapes, min {ratio(s['min_ratio'])} at {shape_label(s['min_ratio_shape'])}")
            if t_max > 1:
                ups = [speedup(rust_cell(res, name, best, 1), rust_cell(res, name, best, t_max))
                       for res in results]
                s[f"speedup_{t_max}t_over_1t"] = ups
                print(f"  {t_max}-thread / 1-thread speed-up ({best}): "
                      + ", ".join(f"{shape_label(r['shape'])}: {u:.2f}x" for r, u in zip(results, ups)))
                if name in ("bgemm_1x1", PREPARED) and str(t_max) in results[0].get("bound", {}):
                    # the host's own scaling, in the same rounds: the bound's loop on t_max threads
                    # does t_max times the MACs of one, so its speed-up is t_max x the time ratio
                    bups = [t_max * speedup(r["bound"]["1"], r["bound"][str(t_max)]) for r in results]
                    s[f"bound_speedup_{t_max}t_over_1t"] = bups
                    print(f"  the bound's loop, {t_max} threads / 1 thread in the same rounds: "
                          + ", ".join(f"{shape_label(r['shape'])}: {u:.2f}x" for r, u in zip(results, bups)))
            summary[name] = s

    if "alternating" in results[0]:
        alt = [r["alternating"] for r in results]
        t_max, isa = alt[0]["threads"], alt[0]["isa"]
        print(f"\n(1b) bgemm_1x1 {isa}, {t_max} threads / 1 thread, taking turns of 4 timed calls after an untimed "
              "one, the bound's loop in the same turns (median over batches of the ratio of medians)")
        names = ["bgemm_1x1", PREPARED] + (["bound"] if "bound" in alt[0] else [])
        headers = ["M,K,N"] + [f"{n} {t_max}t/1t" for n in names]
        rows = [[shape_label(r["shape"])] + [f"{a[n]['speedup']:.2f}x" for n in names] for r, a in zip(results, alt)]
        if "clean" in alt[0]:
            bar = alt[0]["clean"]["bound_at_least"]
            headers += [f"{n} {t_max}t/1t where the bound >= {bar:.2f}x (batches)" for n in names[:2]]
            for row, a in zip(rows, alt):
                row += ["-" if c["speedup"] is None else f"{c['speedup']:.2f}x ({c['batches']})"
                        for c in (a["clean"][n] for n in names[:2])]
        print_table(headers, rows)
        summary["alternating"] = {n: {shape_label(r["shape"]): a[n]["speedup"] for r, a in zip(results, alt)}
                                  for n in names}
        if "clean" in alt[0]:
            summary["alternating_where_the_bound_scaled"] = {
                n: {shape_label(r["shape"]): a["clean"][n] for r, a in zip(results, alt)} for n in names[:2]}

    print("\n(2) packing the activation operand (N, K) vs the GEMM it feeds (median ms; the weight is "
          "packed offline)")
    for pname, gname in (("pack_bits", "bgemm_1x1"), ("pack_2bit", "bgemm_1x2")):
        headers = ["M,K,N", f"{pname} numpy-ref"] + [f"rust {t}t" for t in cfg["threads"] if R]
        headers += ["rust 1t, (K, N) float32 columns"] if R else []
        if R:
            headers += [f"{gname} {best} {t}t" for t in cfg["threads"]] + ["pack/gemm 1t", "fp32/(pack+gemm) 1t"]
        rows, costly = [], []
        for res in results:
            p = res["pack"][pname]
            row = [shape_label(res["shape"]), ms(p["numpy_ref"]["median_s"])]
            if R:
                row += [ms(p[f"rust_{t}t"]["median_s"]) for t in cfg["threads"]]
                row += [ms(p["rust_columns_1t"]["median_s"])]
                gemm = {t: rust_cell(res, gname, best, t)["median_s"] for t in cfg["threads"]}
                row += [ms(gemm[t]) for t in cfg["threads"]]
                pk1 = p["rust_1t"]["median_s"]
                row += [f"{pk1 / gemm[1]:.2f}", ratio(res["fp32"]["median_s"] / (pk1 + gemm[1]))]
                for t in cfg["threads"]:
                    if p[f"rust_{t}t"]["median_s"] > gemm[t]:
                        costly.append({"shape": res["shape"], "threads": t,
                                       "pack_over_gemm": p[f"rust_{t}t"]["median_s"] / gemm[t]})
            rows.append(row)
        print(f"\n{pname} (input {results[0]['pack'][pname]['input'].split()[0]}) before {gname}")
        print_table(headers, rows)
        if R:
            for t in cfg["threads"]:
                hit = [c for c in costly if c["threads"] == t]
                print(f"{pname} rust {t}t costs more than {gname} {best} {t}t at {len(hit)} of {len(results)} "
                      "shapes" + (": " + ", ".join(f"{shape_label(c['shape'])} ({c['pack_over_gemm']:.1f}x)"
                                                    for c in hit) if hit else ""))
            summary[f"{pname}_costlier_than_{gname}"] = costly

    print("\n(3) sparse (M, K) CSR @ dense (K, N) float32: median ms; speed-up = scipy ms / ms")
    headers = ["M,K,N", "density", "nnz", "fp32 dense 1t", "scipy", "numpy-ref"]
    headers += [f"rust {best} {t}t" for t in cfg["threads"] if R]
    rows = []
    for res in results:
        for c in res["sparse"]:
            sc_stats = c.get("scipy")
            sc = sc_stats["median_s"] if sc_stats else None
            row = [shape_label(res["shape"]), f"{100 * c['density']:g}%", c["nnz"], ms(res["fp32"]["median_s"]),
                   ms(sc) if sc else "-", ms(c["numpy_ref"]["median_s"])
                   + (f" ({ratio(sc / c['numpy_ref']['median_s'])})" if sc else "")]
            for r in c["rust"]:
                r["speedup_vs_scipy"] = speedup(sc_stats, r) if sc_stats else None
                row.append(ms(r["median_s"]) + (f" ({ratio(r['speedup_vs_scipy'])})" if sc else ""))
            rows.append(row)
    print_table(headers, rows)
    if R and scipy is not None:
        for t in cfg["threads"]:
            ups = [r["speedup_vs_scipy"] for res in results for c in res["sparse"] for r in c["rust"]
                   if r["threads"] == t]
            summary[f"csr_rust_{t}t_speedup_vs_scipy"] = {"median": statistics.median(ups), "min": min(ups)}
            print(f"summary csr_matmul rust {t}t vs scipy: median {ratio(statistics.median(ups))}, "
                  f"min {ratio(min(ups))}")
    return summary


# --- main ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 shapes, few repeats, no --min-time top-up, best ISA only")
    parser.add_argument("--repeats", type=int, default=None, help="minimum timed repeats per cell (default 5, "
                        "--quick 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="the fp32 baseline and the Rust cells of a shape run in turns over this many rounds; "
                             "ratios are medians of same-round ratios (default 5, --quick 2)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="raise repeats until a cell has run this many seconds (default 0.05, --quick 0)")
    parser.add_argument("--threads", default=None,
                        help="comma-separated Rust thread counts (default 1, 2 and every core)")
    parser.add_argument("--ghz", type=float, default=None, help="clock to state the measured bound in MAC/cycle (default: detected)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(RESULTS / "kernels.json"), help="where to write the raw numbers")
    args = parser.parse_args(argv)
    wall_start = time.perf_counter()
    # every cell allocates its output: keep freed blocks in the heap, so no cell pays fresh pages in
    # some repeats and not in others
    reuse_freed_memory()
    cores = os.cpu_count() or 1
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 0.05)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    threads = (sorted({int(t) for t in args.threads.split(",")}) if args.threads
               else sorted({1, 2, cores}))
    if threads[0] != 1:
        parser.error("--threads must include 1 (the summaries compare with one thread)")
    isas = (R.isa_available() if R else [])
    if args.quick:
        isas = isas[:1]
    ghz, ghz_source = clock(args.ghz)
    cfg = {"repeats": repeats, "min_time": min_time, "rounds": rounds, "threads": threads, "isas": isas,
           "best": isas[0] if isas else None, "scalar_threads": True, "ghz": ghz,
           "densities": list(DENSITIES), "shapes": QUICK_SHAPES if args.quick else SHAPES,
           "quick": args.quick, "seed": args.seed,
           "peak": {t: peak(t) for t in threads} if R is not None and "avx512" in isas else {}}
    if cfg["peak"]:
        check_bound_macs(list(cfg["peak"]))
    info = machine_info(ghz, ghz_source)
    command = " ".join([Path(sys.executable).name] + sys.argv) if argv is None else " ".join(["kernels.py", *argv])

    print(f"command : {command}")
    print(f"date    : {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine : {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"python {info['python']}, numpy {info['numpy']} (BLAS: {info['blas']['name']}), scipy {info['scipy']}")
    tpc = info["blas"].get("threadpoolctl")
    print("fp32    : one BLAS thread: " + ", ".join(f"{v}=1" for v in BLAS_ENV) + " set before importing numpy"
          + (f"; threadpoolctl reports num_threads={[d['num_threads'] for d in tpc]}" if tpc else ""))
    print(f"rust    : apb_ref._kernels {info['rust_extension']}; ISAs available {info['isa_available']}, "
          f"benchmarked {isas}; threads {threads}")
    if R is not None and "avx512" not in info["isa_available"]:
        print("note    : this CPU lacks AVX-512 VPOPCNTDQ (or BW, BITALG): the avx512 path and its xor-popcount-add "
              "bound cannot be measured here")
    print(f"clock   : {ghz if ghz is None else f'{ghz:.3f} GHz'} from {ghz_source}")
    for t, p in cfg["peak"].items():
        print(f"bound   : xor-popcount-add loop on registers, {t} thread(s): {p / 1e12:.2f} binary TMAC/s"
              + (f" = {p / t / (ghz * 1e9):.0f} MAC/cycle/core at the clock above" if ghz else ""))
    print(f"timing  : median of >= {repeats} repeats after a warm-up, repeats raised to fill {min_time * 1e3:g} ms "
          f"per cell; per shape, the fp32 baseline and every Rust cell (scipy and the Rust cells for the sparse "
          f"kernel) run in turns over {rounds} rounds, and ratios are the median of same-round ratios")
    if info["loadavg_start"]:
        print(f"load    : {', '.join(f'{v:.2f}' for v in info['loadavg_start'])} (1/5/15 min) on {cores} cores "
              "at start")
    if scipy is None:
        print("scipy is not installed: the scipy column is skipped")

    rng = np.random.default_rng(args.seed)
    steal_start = steal_seconds()
    results = []
    for shape in cfg["shapes"]:
        start = time.perf_counter()
        results.append(bench_shape(shape, cfg, rng))
        print(f"  measured {shape_label(shape)} in {time.perf_counter() - start:.1f} s", flush=True)
    summary = report(results, cfg)

    wall = time.perf_counter() - wall_start
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    steal_end = steal_seconds()
    if steal_start and steal_end:
        info["steal_s_during_run"] = [b - a for a, b in zip(steal_start, steal_end)]
        print("\nhost steal during the run (time the hypervisor ran something else on a vCPU that wanted to "
              "run): " + ", ".join(f"cpu{i} {v:.2f} s" for i, v in enumerate(info["steal_s_during_run"])))
    payload = {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "machine": info, "settings": cfg, "results": results, "summary": summary, "wall_seconds": wall}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwall time {wall:.1f} s; load at end "
          f"{', '.join(f'{v:.2f}' for v in info['loadavg_end'] or [])}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
