"""apb_ref.bench: the interleaved timing (who runs when, how same-round ratios are taken) and `apb-ref bench`.
Nothing here asserts a speed: only structure and that every figure was measured."""
import os
import subprocess
import sys

import pytest

from apb_ref import kernels
from apb_ref.bench import alternating_speedups, measure_interleaved, run, speedup, speedup_where, table


def test_interleaved_runs_every_callable_in_rotating_turns():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or name.upper()) for name in "abc"}
    stats, results = measure_interleaved(fns, repeats=6, min_time=0.0, rounds=3)
    assert results == {"a": "A", "b": "B", "c": "C"}  # the warm-up's results
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each
    # then 3 rounds of blocks of ceil(6 / 3) = 2 calls, the order rotating by one each round
    assert calls[3:] == list("aabbcc") + list("bbccaa") + list("ccaabb")
    for s in stats.values():
        assert s["repeats"] == 6 and len(s["round_medians"]) == 3
        assert s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]


def test_interleaved_refuses_zero_rounds_or_repeats():
    with pytest.raises(ValueError, match="rounds and repeats"):
        measure_interleaved({"a": lambda: None}, repeats=1, rounds=0)
    with pytest.raises(ValueError, match="rounds and repeats"):
        measure_interleaved({"a": lambda: None}, repeats=0, rounds=1)
    with pytest.raises(ValueError, match="settle must be >= 0"):
        measure_interleaved({"a": lambda: None}, repeats=1, rounds=1, settle=-1.0)
    with pytest.raises(ValueError, match="settle must be >= 0"):
        measure_interleaved({"a": lambda: None}, repeats=1, rounds=1, settle=float("nan"))


def test_speedup_takes_the_median_of_same_round_ratios():
    slow = {"median_s": 2.0, "round_medians": [2.0, 4.0, 2.0]}  # round 2 was a slow spell for both
    fast = {"median_s": 1.0, "round_medians": [1.0, 2.0, 1.0]}
    assert speedup(slow, fast) == pytest.approx(2.0)
    drift = {"median_s": 3.0, "round_medians": [3.0, 1.0, 3.0]}
    assert speedup(drift, fast) == pytest.approx(3.0)  # median of 3, 0.5, 3
    # Without rounds (or from different runs) it falls back to the ratio of medians.
    assert speedup({"median_s": 3.0}, fast) == pytest.approx(3.0)
    assert speedup(slow, {"median_s": 0.5, "round_medians": [0.5]}) == pytest.approx(4.0)


def test_run_measures_every_kernel_on_each_shape_and_tables_them():
    rows = run(shapes=[(8, 65, 3), (3, 64, 9)], repeats=1)
    assert [(r["shape"], r["kernel"]) for r in rows] == [
        (shape, k) for shape in [(8, 65, 3), (3, 64, 9)] for k in ("bgemm_1x1", "bgemm_1x2", "bgemm_2x2")]
    rust = "rust" in kernels.available_backends()
    for r in rows:
        assert r["fp32_ms"] > 0 and r["numpy_ms"] > 0 and r["pack_ms"] > 0
        assert r["speedup_numpy"] == pytest.approx(r["fp32_ms"] / r["numpy_ms"])
        assert (r["rust_1t_ms"] is not None and r["rust_1t_ms"] > 0) == rust
    text = table(rows)
    assert text.startswith("apb-ref bench:") and "8,65,3" in text and "bgemm_2x2" in text


def test_cli_bench_runs_with_one_blas_thread():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-m", "apb_ref", "bench", "--repeats", "1"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "apb-ref bench:" in proc.stdout and "fp32 baseline on 1 BLAS thread(s)" in proc.stdout
    assert proc.stdout.count("bgemm_1x1") == 3  # the three quick shapes


def test_table_says_when_more_threads_ran_slower():
    row = {"shape": (8, 64, 8), "kernel": "bgemm_1x1", "fp32_ms": 1.0, "blas_threads": "1", "numpy_ms": 2.0,
           "speedup_numpy": 0.5, "rust_1t_ms": 0.1, "speedup_rust_1t": 10.0, "rust_all_ms": 0.8,
           "speedup_rust_all": 1.25, "rust_threads": 2, "pack_ms": 0.01, "speedup_rust_1t_with_pack": 9.0}
    assert "slower on 2 threads" in table([row])
    assert "slower on" not in table([{**row, "rust_all_ms": 0.06}])


def test_alternating_speedups_give_the_median_of_the_batches():
    out = alternating_speedups({"x": (lambda: None, lambda: None, 2, 2.0)}, batches=3, turns=2)["x"]
    assert len(out["batch_speedups"]) == 3 and out["speedup"] == sorted(out["batch_speedups"])[1]
    assert all(0 < r < float("inf") for r in out["batch_speedups"])


def test_alternating_speedups_take_turns_pair_after_pair_and_a_control_filters_batches():
    calls = []
    pairs = {name: (lambda n=name: calls.append(n + "1"), lambda n=name: calls.append(n + "2"), run, 1.0)
             for name, run in (("a", 1), ("b", 2))}
    out = alternating_speedups(pairs, batches=2, turns=3)
    turn = ["a1"] * 2 + ["a2"] * 2 + ["b1"] * 3 + ["b2"] * 3  # each: one untimed call, then `run` timed ones
    assert calls == turn * 3 * 2
    assert set(out) == {"a", "b"} and all(len(v["batch_speedups"]) == 2 for v in out.values())
    measured = {"kernel": {"batch_speedups": [1.5, 1.9, 1.8, 1.2]}, "bound": {"batch_speedups": [1.97, 1.95, 1.2, 1.99]}}
    assert speedup_where(measured, "kernel", "bound", 1.9) == {"speedup": 1.5, "batches": 3}
    assert speedup_where(measured, "kernel", "bound", 2.5) == {"speedup": None, "batches": 0}
    with pytest.raises(ValueError, match="alternating_speedups: batches, turns and every run must be >= 1"):
        alternating_speedups({"a": (lambda: None, lambda: None, 0, 1.0)})
    with pytest.raises(ValueError, match="pairs not empty"):
        alternating_speedups({})

