"""Packed APB ResNet-20 inference against the float model, images/s (1×32×32 inputs, 10 classes).

    python benchmarks/packed_inference.py [--images 1024] [--repeats 3] [--backends rust numpy]

The packed models are freshly initialised APB ResNet-20s whose masks are projected to the
1.6 bits/weight budget (1.2766 % full-precision weights, as the trained models of BENCHMARKS.md),
with 1-, 2- and 32-bit activations, exported and run by `apb_ref.infer.PackedNetwork` on each kernel
backend; speed does not depend on the weight values. The baseline is the float ResNet-20 (NumPy
autograd, eval mode) on the same images in the same run. Each figure is the median over --repeats
passes over --images images in batches of 256. The models take turns (one pass each per round,
`apb_ref.bench.measure_interleaved`), and "vs float" is the median of same-round ratios, so a slow
spell of a shared host slows the packed model and its baseline alike.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import machine, print_table, write_json

from apb_ref.autograd import Tensor, no_grad
from apb_ref.bench import measure_interleaved, speedup
from apb_ref.packed import export_model
from apb_ref.packed import PackedNetwork
from apb_ref.kernels import backend
from apb_ref.models import build
from apb_ref.quant.budget import MemoryBudget, fp_fraction_for_bits
from apb_ref.training.runtime import reuse_freed_memory

BATCH = 256


def packed_resnet20(act_bits: int) -> PackedNetwork:
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build("resnet20", num_classes=10, in_channels=1, method="apb", act_bits=act_bits, act=act)
    MemoryBudget(fp_fraction_for_bits(1.6, 16)).project(model)
    model.eval()
    build_args = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "image_size": 32, "act": act}
    return PackedNetwork(export_model(model, build_args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=backend.available_backends(),
                        choices=backend.BACKENDS)
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/packed_inference.json)")
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")
    reuse_freed_memory()
    x = np.random.default_rng(0).standard_normal((args.images, 1, 32, 32)).astype(np.float32)

    def passes(forward, backend_name="numpy"):
        def run():
            with backend.use_backend(backend_name):
                for i in range(0, len(x), BATCH):
                    forward(x[i:i + BATCH])
        return run

    float_model = build("resnet20", num_classes=10, in_channels=1)
    float_model.eval()

    def float_forward(xb):
        with no_grad():
            return float_model(Tensor(xb))

    runs = {"float": passes(float_forward)}
    for act_bits in (1, 2, 32):
        net = packed_resnet20(act_bits)
        for name in args.backends:
            runs[(act_bits, name)] = passes(net.logits, name)
    # one warm-up each, then --repeats rounds of one pass per model
    timed, _ = measure_interleaved(runs, repeats=args.repeats, min_time=0.0, rounds=args.repeats)
    base = len(x) / timed["float"]["median_s"]
    rows = [["float ResNet-20 (NumPy autograd)", "32", "-", f"{base:.0f}", "1.00x"]]
    records = [{"model": "float", "act_bits": 32, "backend": "numpy", "images_per_second": base}]
    for key, stats in timed.items():
        if key == "float":
            continue
        act_bits, name = key
        speed, ratio = len(x) / stats["median_s"], speedup(timed["float"], stats)
        rows.append(["packed APB, 1.6 bits/weight", str(act_bits), name, f"{speed:.0f}", f"{ratio:.2f}x"])
        records.append({"model": "packed-apb", "act_bits": act_bits, "backend": name, "images_per_second": speed,
                        "vs_float": ratio})
    m = machine()
    print(f"ResNet-20, 1x32x32, {args.images} images in batches of {BATCH}, median of {args.repeats}; "
          f"{m['cpu']} ({m['cores']} cores)")
    print_table(["model", "activation bits", "kernels", "images/s", "vs float"], rows)
    write_json("packed_inference", {"images": args.images, "repeats": args.repeats, "batch_size": BATCH,
                                    "results": records}, args.json)


if __name__ == "__main__":
    main()
