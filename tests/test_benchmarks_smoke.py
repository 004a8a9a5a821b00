"""Smoke tests of the benchmarks: `kernels.py --quick` and a tiny `packed_inference.py` run and write sane JSON."""
import importlib
import json
import os
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import pytest

from apb_ref.cli import main

from apb_ref.kernels import backend

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _times(stats):
    return [stats["median_s"], stats["min_s"], stats["max_s"]]


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_kernels_benchmark_quick(tmp_path):
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OPENBLAS_NUM_THREADS=1" in proc.stdout

    d = json.loads(out.read_text())
    assert {"command", "date", "machine", "settings", "results", "summary", "wall_seconds"} <= d.keys()
    assert {"cpu", "cores", "numpy", "blas", "isa_available", "clock_ghz", "clock_source"} <= d["machine"].keys()
    assert d["machine"]["blas"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert d["settings"]["quick"] and len(d["results"]) == 2
    have_rust = bool(d["machine"]["isa_available"])
    for res in d["results"]:
        m, k, n = res["shape"]
        assert res["macs"] == m * k * n
        times = _times(res["fp32"])
        for name in ("bgemm_1x1", "bgemm_1x2", "bgemm_2x2", "bgemm_1x1 prepared"):
            cell = res["bgemm"][name]
            times += _times(cell["numpy_ref"])
            assert len(cell["rust"]) == (len(d["settings"]["threads"]) if have_rust else 0)
            for r in cell["rust"]:
                times += _times(r)
                assert r["ratio"] > 0 and r["macs_per_s"] > 0
                assert r["isa"] == d["machine"]["isa_available"][0]  # --quick: the best ISA only
                # every bgemm on AVX-512 is stated against the bound, timed in the same rounds
                with_bound = r["isa"] == "avx512"
                assert ("bound_fraction" in r) == with_bound
                if with_bound:
                    assert 0 < r["bound_fraction"] and r["bound_macs_per_s"] > 0
                    assert res["bound"][str(r["threads"])]["macs_per_s"] == r["bound_macs_per_s"]
        for pname in ("pack_bits", "pack_2bit"):
            stats = [v for key, v in res["pack"][pname].items() if key != "input"]
            # numpy-ref, rust per thread count, and rust 1t from (K, N) columns
            assert len(stats) == 1 + (len(d["settings"]["threads"]) + 1 if have_rust else 0)
            times += [t for s in stats for t in _times(s)]
        assert [c["density"] for c in res["sparse"]] == [0.01, 0.02, 0.05]
        for c in res["sparse"]:
            assert c["nnz"] == round(c["density"] * m * k)
            times += _times(c["numpy_ref"]) + (_times(c["scipy"]) if "scipy" in c else [])
            times += [t for r in c["rust"] for t in _times(r)]
        assert all(t > 0 for t in times)
        alt = res.get("alternating")
        if alt is not None:  # a Rust build on more than one core: thread speed-ups in shared turns
            names = ["bgemm_1x1", "bgemm_1x1 prepared"] + (["bound"] if "clean" in alt else [])
            assert all(len(alt[n]["batch_speedups"]) == 3 and alt[n]["speedup"] > 0 for n in names)
            for n in names[:2] if "clean" in alt else []:
                kept = alt["clean"][n]
                assert kept["batches"] == sum(b >= alt["clean"]["bound_at_least"] for b in alt["bound"]["batch_speedups"])
    if have_rust:
        assert {"bgemm_1x1", "bgemm_1x2", "bgemm_2x2", "bgemm_1x1 prepared"} <= d["summary"].keys()


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_packed_inference_times_fused_blocks_against_unfused(tmp_path):
    out = tmp_path / "packed.json"
    backends = backend.available_backends()
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "packed_inference.py"), "--images", "3", "--repeats",
                           "1", "--batch-size", "2", "--methods", "apb", "--act-bits", "1", "2", "--blocks", "bireal",
                           "--unfused", "--backends", *backends, "--json", str(out), "--no-torch", "--no-tflite",
                           "--settle", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads(out.read_text())
    assert d["batch_size"] == 2
    got = {(r["model"], r["act_bits"], r["backend"], r["block"], r["unfused"]) for r in d["results"] if r["model"].startswith("packed-")}
    # every backend's model fuses its 1- and 2-bit blocks (the NumPy backend then runs them unfused)
    want = {("packed-apb bireal", a, b, "bireal", False) for a in (1, 2) for b in backends}
    assert got == want | {("packed-apb bireal unfused", a, b, "bireal", True) for a in (1, 2) for b in backends}


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_packed_inference_times_rust_thread_counts_in_the_same_rounds(tmp_path):
    if "rust" not in backend.available_backends():
        pytest.skip("needs the Rust extension")
    out = tmp_path / "threads.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "packed_inference.py"), "--images", "2", "--repeats",
                           "1", "--batch-size", "1", "--methods", "apb", "--act-bits", "1", "--backends", "rust",
                           "numpy", "--rust-threads", "1", "2", "--turn-batches", "2", "--json", str(out), "--no-torch",
                           "--no-tflite", "--settle", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads(out.read_text())
    rows = {(r["backend"], r["rust_threads"]): r for r in d["results"] if r["model"] == "packed-apb"}
    assert set(rows) == {("rust", 1), ("rust", 2), ("numpy", None)}  # the NumPy kernels once: no threads
    assert rows[("rust", 1)]["vs_one_thread"] == 1.0 and rows[("rust", 2)]["vs_one_thread"] > 0
    # the speed-up in turns of single batches, with the bound's loop as the control where the CPU has it
    turns = rows[("rust", 2)]["vs_one_thread_in_turns"]
    assert rows[("rust", 1)]["vs_one_thread_in_turns"] is None and len(turns["batch_speedups"]) == 2
    assert turns["speedup"] > 0 and "2t/1t" in proc.stdout
    if d["bound_in_turns"] is not None:
        where = turns["where_the_bound_scaled"]
        assert where["batches"] == sum(b >= 1.9 for b in d["bound_in_turns"]["batch_speedups"])
    # a batch of 1 on 2 threads: the same model on one image per thread, in the same turns, as the control
    control, where = turns["whole_images"]["batch_speedups"], turns["where_whole_images_scaled"]
    kept = [b for b, c in zip(turns["batch_speedups"], control) if c >= 1.9]
    assert len(control) == 2 and where["batches"] == len(kept)
    assert where["speedup"] == (statistics.median(kept) if kept else None)
    assert "one image per thread" in proc.stdout
    for flag, message in (("--rust-threads", "--rust-threads must be >= 1"),
                          ("--turn-batches", "--turn-batches must be >= 1")):
        bad = subprocess.run([sys.executable, str(SCRIPT.parent / "packed_inference.py"), flag, "0"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_thread_turns_runs_one_image_per_thread_as_the_control_below_the_thread_count(monkeypatch):
    if "rust" not in backend.available_backends():
        pytest.skip("needs the Rust extension")
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    thread_turns = importlib.import_module("packed_inference").thread_turns
    calls = set()

    def forward(x):  # what each call got: its images, and the Rust threads it would run on
        calls.add((len(x), os.environ["APB_NUM_THREADS"]))

    image = np.zeros((1, 1, 32, 32), np.float32)
    got = thread_turns({("one net", 1): forward, ("per conv", 1): forward}, [1, 2], image, 1, {("one net", 1)})
    assert calls == {(1, "1"), (1, "2"), (2, "1"), (2, "2")}  # the control: 2 images, on 1 and on 2 threads
    assert "whole_images" in got[("one net", 1)] and "whole_images" not in got[("per conv", 1)]
    assert set(got) <= {("one net", 1), ("per conv", 1), "bound"}  # the control is folded into its model
    calls.clear()
    got = thread_turns({("one net", 1): forward}, [1, 2], np.concatenate([image] * 2), 1, {("one net", 1)})
    assert calls == {(2, "1"), (2, "2")} and "whole_images" not in got[("one net", 1)]  # no threads to spare


def test_packed_inference_benchmark_runs(tmp_path):
    out = tmp_path / "packed.json"
    script = SCRIPT.parent / "packed_inference.py"
    backends = backend.available_backends()
    run = tmp_path / "tiny-sbnn"  # a trained checkpoint of 1x32x32 inputs, timed as it is
    assert main(["train", "--model", "resnet20", "--dataset", "digits", "--pad-to", "32", "--epochs", "1",
                 "--limit-train", "64", "--limit-test", "32", "--method", "sbnn", "--act-bits", "1",
                 "--out", str(run), "--quiet"]) == 0
    proc = subprocess.run([sys.executable, str(script), "--images", "4", "--repeats", "1", "--json", str(out),
                           "--backends", *backends, "--sbnn-p", "0.5", "0.05", "--checkpoints", str(run / "last.ckpt"),
                           "--no-torch", "--no-tflite", "--settle", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads(out.read_text())
    got = {(r["model"], r["act_bits"], r["backend"]) for r in d["results"]}
    models = ("apb", "bnn", "uniform", "prune", "prune_uniform", "sbnn p=0.5", "sbnn p=0.05")
    want = {("float", 32, "numpy")} | {(f"packed-{m}", a, b) for m in models for a in (1, 2, 32) for b in backends}
    assert got == want | {("packed-tiny-sbnn (trained)", 1, b) for b in backends}
    bits = {r["model"]: r["file_bits_per_weight"] for r in d["results"] if r["model"].startswith("packed-")}
    assert 1.0 <= bits["packed-bnn"] < 1.2 and 2.0 <= bits["packed-uniform"] < 2.2
    assert all(1.5 < bits[f"packed-{m}"] < 1.8 for m in ("apb", "prune", "prune_uniform"))  # 1.6 + padding, scales
    assert 0.9 < bits["packed-sbnn p=0.5"] < 1.1 and bits["packed-sbnn p=0.05"] < 0.35  # H(0.05) = 0.29
    assert all(r["vs_apb"] > 0 and r["vs_bnn"] > 0 for r in d["results"] if r["model"].startswith("packed-"))
    assert d["apb_a1_vs_uniform_a2"].keys() == set(backends) and "against 2-bit uniform" in proc.stdout
    assert all(r["images_per_second"] > 0 for r in d["results"])
    assert "images/s" in proc.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_conv_kernels_benchmark_runs(tmp_path):
    out = tmp_path / "conv.json"
    script = SCRIPT.parent / "conv_kernels.py"
    proc = subprocess.run([sys.executable, str(script), "--images", "2", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads(out.read_text())
    assert sorted({r["kernel"] for r in d["results"]}) == ["csr_conv2d", "im2col_bits"]
    assert len(d["results"]) == 10 and all(r["numpy_ref"]["median_s"] > 0 for r in d["results"])
    rust = "rust" in backend.available_backends()
    assert all(("rust" in r) == rust for r in d["results"])
    assert "im2col_bits" in proc.stdout and d["command"].endswith("--json " + str(out))


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_sbnn_study_reads_what_each_run_reached(tmp_path):
    for ec, gamma in ((0.5, 0.0), (0.1, 0.5)):
        assert main(["train", "--method", "sbnn", "--ec", str(ec), "--gamma", str(gamma), "--sbnn-init", "closed_form",
                     "--epochs", "1", "--limit-train", "200", "--limit-test", "50", "--out",
                     str(tmp_path / "runs" / f"sbnn-{ec}"), "--quiet"]) == 0
    assert main(["train", "--method", "bnn", "--epochs", "1", "--limit-train", "200", "--limit-test", "50",
                 "--out", str(tmp_path / "runs" / "bnn"), "--quiet"]) == 0  # not SBNN: left out
    out = tmp_path / "sbnn.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "sbnn_study.py"), str(tmp_path / "runs"),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["ec"] for r in rows] == [0.5, 0.1]
    sparse = rows[1]
    assert sparse["p"] <= 0.11 and sparse["entropy_bits_per_weight"] < 0.6  # started at the closed form at EC
    assert sparse["coded_bits_per_weight"] <= 1.1 * sparse["entropy_bits_per_weight"] + 0.01
    assert all(r["file_bits_per_weight"] >= r["coded_bits_per_weight"] for r in rows)  # the file adds α, β, padding
    assert all(r["formula_bits_per_weight"] == 1.0 for r in rows) and "p at β" in proc.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_ablation_benchmark_trains_each_variant_once_and_resumes(tmp_path):
    out, js = tmp_path / "ablation", tmp_path / "ablation.json"
    cmd = [sys.executable, str(SCRIPT.parent / "ablation_1bit.py"), "--smoke", "--out", str(out), "--json", str(js),
           "--variants", "base", "kd", "--", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "2",
           "--limit-train", "150", "--limit-test", "60", "--optimizer", "adam", "--lr", "0.005"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "[1/3] fp: trained" in proc.stdout  # kd's teacher is trained first
    rows = json.loads(js.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["fp", "base", "kd"]
    assert all(len(r["per_epoch_test_accuracy"]) == 2 and r["largest_drop"] >= 0 for r in rows)
    assert json.loads((out / "kd" / "summary.json").read_text())["config"]["teacher"] == str(out / "fp" / "last.ckpt")
    assert (out / "ablation.png").read_bytes().startswith(b"\x89PNG")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done (cached)") == 3


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
@pytest.mark.parametrize("method", ["fp", "apb"])
def test_train_speed_times_each_backend(tmp_path, method):
    out = tmp_path / "train_speed.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "train_speed.py"), "--steps", "1", "--batch-size", "2",
                           "--method", method, "--no-torch", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    d = json.loads(out.read_text())
    assert d["method"] == method and d["backends"] == backend.available_backends()
    for name in d["backends"]:
        for what in ("train", "inference"):
            entry = d["engines"][f"{name}_{what}"]
            assert entry["images_per_second"] > 0 and entry["vs_numpy"] > 0 and entry["vs_torch"] is None


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not part of an installed package")
def test_the_pytorch_columns_when_torch_imports(tmp_path):
    pytest.importorskip("torch")  # an optional comparison: CI does not install it
    for script, flags in (("packed_inference.py", ["--images", "2", "--repeats", "1", "--methods", "bnn",
                                                    "--act-bits", "1"]),
                          ("train_speed.py", ["--steps", "1", "--batch-size", "2"])):
        out = tmp_path / f"{script}.json"
        proc = subprocess.run([sys.executable, str(SCRIPT.parent / script), *flags, "--json", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "vs PyTorch" in proc.stdout
        d = json.loads(out.read_text())
        if script == "train_speed.py":
            assert d["engines"]["torch_train"]["vs_torch"] == 1.0 and d["engines"]["numpy_train"]["vs_torch"] > 0
        else:
            assert any(r["model"] == "torch-float" for r in d["results"])
            assert all(r["vs_torch"] > 0 for r in d["results"] if r["model"].startswith("packed"))
