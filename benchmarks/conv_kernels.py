"""The conv pieces of packed inference, im2col_bits and csr_conv2d, on ResNet-20's layer shapes.

    python benchmarks/conv_kernels.py [--images 256] [--repeats 5] [--density 0.0128] [--json PATH]

Per layer shape (input channels C, map H×W, output channels O, 3×3 kernel, padding 1, stride 1 or 2),
for a batch of --images maps:

* im2col_bits: the map packed per pixel (pack_bits of the NHWC rows) lowered to (N·Ho·Wo, ceil(9C/64))
  words, the NumPy reference and the Rust kernel on 1 thread and on every core;
* csr_conv2d with signs=True (the 1-bit path): S·sign(X) for a CSR S of --density non-zeros (1.28 % is
  what APB keeps at 1.6 bits/weight), the NumPy reference and Rust on 1 thread and on every core.

Each cell: one warm-up, then the median of at least --repeats calls (raised until it has run 50 ms); the
Rust cells of a kernel are timed in turns (apb_ref.bench.measure_interleaved) and "2t/1t" is the median
of same-round ratios. Every Rust result is checked against the reference. Writes
benchmarks/results/conv_kernels.json (or --json PATH).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from common import machine, print_table, write_json

from apb_ref.bench import measure, measure_interleaved, speedup
from apb_ref.kernels import reference
from apb_ref.training.runtime import reuse_freed_memory

try:
    import apb_ref._kernels as R
except ImportError:  # the NumPy columns still run
    R = None

# (C, H, O, stride): ResNet-20's 3×3 convs with 1-bit activations (the first conv stays float)
SHAPES = [(16, 32, 16, 1), (16, 32, 32, 2), (32, 16, 32, 1), (32, 16, 64, 2), (64, 8, 64, 1)]


def random_csr(rng, rows: int, cols: int, density: float):
    dense = (rng.random((rows, cols)) < density) * rng.standard_normal((rows, cols))
    indptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))]).astype(np.int64)
    return indptr, np.nonzero(dense)[1].astype(np.int32), dense[dense != 0].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.0128)
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/conv_kernels.json)")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1 or not 0 <= args.density <= 1:
        parser.error("--images and --repeats must be >= 1 and --density in [0, 1]")
    reuse_freed_memory()
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    results, rows = [], []
    for c, h, o, stride in SHAPES:
        x = rng.standard_normal((args.images, c, h, h)).astype(np.float32)
        bits = reference.pack_bits(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1, c))
        bits = bits.reshape(args.images, h, h, -1)
        csr = random_csr(rng, o, c * 9, args.density)
        ref_calls = {"im2col_bits": lambda: reference.im2col_bits(bits, c, 3, 3, stride, 1),
                     "csr_conv2d": lambda: reference.csr_conv2d(*csr, x, 3, 3, stride, 1, signs=True)}
        rust_calls = {"im2col_bits": lambda t: R.im2col_bits(bits, c, 3, 3, stride, 1, threads=t),
                      "csr_conv2d": lambda t: R.csr_conv2d(*csr, x, 3, 3, stride, 1, signs=True, threads=t)}
        for name, call in ref_calls.items():
            ref_stats, want = measure(call, args.repeats)
            entry = {"kernel": name, "c": c, "h": h, "o": o, "stride": stride, "images": args.images,
                     "nnz": int(len(csr[2])), "numpy_ref": ref_stats}
            row = [name, f"{c}x{h}x{h} -> {o}, s{stride}", f"{1e3 * ref_stats['median_s']:.2f}"]
            if R is not None:
                rust = rust_calls[name]
                group = {threads: (lambda t=threads: rust(t)) for threads in dict.fromkeys([1, cores])}
                timed, got = measure_interleaved(group, args.repeats)
                for threads, result in got.items():
                    if name == "im2col_bits":
                        assert np.array_equal(result, want), f"{name} threads={threads} differs from the reference"
                    else:
                        np.testing.assert_allclose(result, want, rtol=1e-4, atol=1e-4)
                entry["rust"] = {str(t): s for t, s in timed.items()}
                entry["speedup_threads"] = speedup(timed[1], timed[cores])
                row += [f"{1e3 * timed[1]['median_s']:.2f}", f"{1e3 * timed[cores]['median_s']:.2f}",
                        f"{ref_stats['median_s'] / timed[1]['median_s']:.0f}x", f"{entry['speedup_threads']:.2f}x"]
            else:
                row += ["-"] * 4
            results.append(entry)
            rows.append(row)
    m = machine()
    print(f"conv kernels, 3x3 padding 1, {args.images} images, csr density {args.density}; median ms; "
          f"{m['cpu']} ({cores} cores)")
    print_table(["kernel", "layer", "numpy-ref", "rust 1t", f"rust {cores}t", "ref/rust 1t", f"{cores}t/1t"], rows)
    write_json("conv_kernels", {"results": results}, args.json)


if __name__ == "__main__":
    main()
