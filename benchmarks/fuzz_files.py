"""Long-profile fuzzing of the file readers (the hostile-file tests' strategies, many more cases).

For each target: cases tried, how many loaded (finite logits) or were refused with one ValueError
naming the file, failures (any other outcome: another exception, an unnamed or multi-line error,
non-finite logits, a tracemalloc peak over `memory_bound(file size)`), and the largest peak. Then
the crafted big-claim files of the regression tests, with their size and peak. Prints a table and
writes results/fuzz_files.json.

    python benchmarks/fuzz_files.py                 # 5000 cases per target
    python benchmarks/fuzz_files.py --examples 300  # quicker
"""
from __future__ import annotations

import argparse
import gzip
import json
import pickle
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hostile"))
from common import print_table, write_json  # noqa: E402
from strategies_files import (contained, memory_bound, mutated_apbz, mutated_checkpoint, mutated_tensors,  # noqa: E402
                              npy_bytes, npz_members, seal_apbz, split_apbz, trainer_like_state, valid_apbz, write_npz)

from apb_ref.data.cifar import read_cifar10_batch  # noqa: E402
from apb_ref.data.idx import read_idx  # noqa: E402
from apb_ref.packed import PackedNetwork, parse_packed  # noqa: E402
from apb_ref.packed.schema import validate_packed  # noqa: E402
from apb_ref.training import checkpoint  # noqa: E402

NAME = "fuzz-m.apbz"
X = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)


def run_packed(data: bytes) -> None:
    packed = parse_packed(data, NAME)
    validate_packed(packed)
    logits = PackedNetwork(packed).logits(X)
    if not np.isfinite(logits).all():
        raise AssertionError("a file that loads gave non-finite logits")


class Tally:
    def __init__(self, target: str):
        self.target, self.cases, self.loaded, self.refused, self.failures = target, 0, 0, 0, 0
        self.peak, self.largest, self.examples = 0, 0, []

    def run(self, fn, name: str, size: int) -> None:
        self.cases += 1
        self.largest = max(self.largest, size)
        try:
            result, error, peak = contained(fn, name)
            if peak > memory_bound(size):
                raise AssertionError(f"peak {peak:,} bytes for a {size:,}-byte file")
            self.peak = max(self.peak, peak)
            self.refused += error is not None
            self.loaded += error is None
        except Exception as e:  # noqa: BLE001 - any other outcome is what we count
            self.failures += 1
            if len(self.examples) < 5:
                self.examples.append(f"{type(e).__name__}: {str(e)[:300]}")

    def row(self) -> list:
        return [self.target, self.cases, self.loaded, self.refused, self.failures, self.largest, self.peak]


def fuzz(examples: int, workdir: Path) -> list[Tally]:
    valid = valid_apbz()
    packed = parse_packed(valid, NAME)
    ckpt = workdir / "valid.ckpt"
    checkpoint.save(ckpt, trainer_like_state())
    valid_ckpt = ckpt.read_bytes()
    tallies = [Tally(".apbz header/table"), Tally(".apbz tensors"), Tally("checkpoint")]
    config = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @config
    @given(st.data())
    def header(data):
        blob = data.draw(mutated_apbz(valid))
        tallies[0].run(lambda: run_packed(blob), NAME, len(blob))

    @config
    @given(st.data())
    def tensors(data):
        blob = data.draw(mutated_tensors(packed))
        tallies[1].run(lambda: run_packed(blob), NAME, len(blob))

    @config
    @given(st.data())
    def checkpoints(data):
        path = workdir / "fuzz.ckpt"
        path.write_bytes(data.draw(mutated_checkpoint(valid_ckpt)))
        tallies[2].run(lambda: checkpoint.load(path), "fuzz.ckpt", path.stat().st_size)

    for run in (header, tensors, checkpoints):
        start = time.perf_counter()
        run()
        print(f"  {tallies[(header, tensors, checkpoints).index(run)].target}: {time.perf_counter() - start:.0f} s",
              flush=True)
    return tallies


def crafted(workdir: Path) -> list[dict]:
    """The regression tests' big-claim files: size on disk and the peak while refusing them."""
    valid = valid_apbz()
    header, blob = split_apbz(valid)
    header["build"]["in_channels"] = 10**6
    million = seal_apbz(json.dumps(header), blob)
    ckpt = workdir / "bomb.ckpt"
    checkpoint.save(ckpt, trainer_like_state())
    members = npz_members(ckpt.read_bytes())
    members["a0.npy"] = npy_bytes(np.zeros(64 << 20, np.uint8))
    ckpt.write_bytes(write_npz(members, {n: True for n in members}))
    idx = workdir / "claims-47GB-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 60_000, 28_000, 28) + b"\0" * (3 << 20)))

    class ZeroStride:
        def __reduce__(self):
            return (np.ndarray, ((60_000, 3072), np.dtype(np.uint8), b"x", 0, (0, 0)))

    cifar = workdir / "zero_stride_batch"
    cifar.write_bytes(pickle.dumps({b"data": ZeroStride(), b"labels": [0] * 3}, protocol=2))
    cases = [(".apbz claiming 1e6 input channels", NAME, len(million), lambda: run_packed(million)),
             ("checkpoint zip bomb (64 MB of zeros)", ckpt.name, ckpt.stat().st_size, lambda: checkpoint.load(ckpt)),
             ("gzipped IDX claiming 47 GB", idx.name, idx.stat().st_size, lambda: read_idx(idx)),
             ("CIFAR pickle of a zero-stride array", cifar.name, cifar.stat().st_size, lambda: read_cifar10_batch(cifar))]
    out = []
    for what, name, size, fn in cases:
        _, error, peak = contained(fn, name)
        out.append({"file": what, "bytes": size, "refused": error is not None, "peak_bytes": peak,
                    "error": str(error)[:200] if error else None})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=5000, help="cases per target")
    p.add_argument("--json", default=None, help="output path (default results/fuzz_files.json)")
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tallies = fuzz(args.examples, Path(tmp))
        big = crafted(Path(tmp))
    print_table(["target", "cases", "loaded", "refused", "failures", "largest file (B)", "peak (B)"],
                [t.row() for t in tallies])
    print()
    print_table(["crafted file", "bytes", "refused", "peak (B)"], [[c["file"], c["bytes"], c["refused"], c["peak_bytes"]]
                                                                 for c in big])
    for t in tallies:
        for e in t.examples:
            print(f"failure in {t.target}: {e}")
    write_json("fuzz_files", {
        "settings": {"examples_per_target": args.examples, "memory": "tracemalloc peak (NumPy allocations included)"},
        "results": [dict(zip(["target", "cases", "loaded", "refused", "failures", "largest_file_bytes", "peak_bytes"],
                             t.row()), failure_examples=t.examples) for t in tallies],
        "crafted": big, "wall_seconds": time.perf_counter() - start}, args.json)
    return 1 if any(t.failures for t in tallies) or not all(c["refused"] for c in big) else 0


if __name__ == "__main__":
    sys.exit(main())
