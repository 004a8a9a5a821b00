"""ResNet-20 training and inference throughput on this project's backends (NumPy, Rust), against
PyTorch on the CPU when it imports (optional, never required); batch 128, 32×32×3.

    python benchmarks/train_speed.py [--backend numpy rust] [--method fp|apb] [--steps 10]
                                     [--batch-size 128] [--no-torch] [--settle 0.5] [--json PATH]

A training step is forward + cross-entropy + backward + SGD update (momentum, weight decay), in
train mode with batch statistics; inference is eval mode without a graph. `--method apb` trains APB
at 1.6 bits/weight with 1-bit activations (its quantizers are extra work PyTorch's float model does
not do: its column stays the float model). Synthetic data: speed does not depend on the pixel
values. The engines take turns (`apb_ref.bench.measure_interleaved`, --steps timed steps each over 5
rounds, each block after --settle seconds of sleep, so that one engine's spinning worker threads do
not take the next one's cores) and report medians; "vs PyTorch" and "vs NumPy" are medians of
same-round ratios. Threads: APB_NUM_THREADS (else every core) for the Rust kernels and PyTorch,
OPENBLAS_NUM_THREADS for NumPy's BLAS; set both to the same count. Prints the CPU and the Rust kernels' instruction set.
"""
from __future__ import annotations

import argparse

import numpy as np

import torch_float
from common import machine, print_table, write_json

from apb_ref import kernels
from apb_ref import ops as F
from apb_ref.autograd import Tensor, no_grad
from apb_ref.bench import measure_interleaved, speedup
from apb_ref.models import build
from apb_ref.nn.optim import SGD
from apb_ref.quant.budget import MemoryBudget, fp_fraction_for_bits
from apb_ref.training.runtime import reuse_freed_memory

APB_1BIT = {"method": "apb", "act_bits": 1, "act": "hardtanh", "block": "bireal"}


def torch_steps(x: np.ndarray, y: np.ndarray):
    """PyTorch's train and inference steps of the same ResNet-20 on the same batch."""
    import torch
    threads = torch_float.set_threads()
    model = torch_float.resnet20(in_channels=x.shape[1], num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def train_step():
        model.train()
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer_step():
        model.eval()
        with torch.inference_mode():
            model(tx)
    return train_step, infer_step, threads


def our_steps(backend: str, x: np.ndarray, y: np.ndarray, model_name: str, method: str):
    """This project's train and inference steps of a fresh model, on `backend`."""
    model = build(model_name, in_channels=x.shape[1], num_classes=10, image_size=x.shape[2],
                  **(APB_1BIT if method == "apb" else {}))
    budget = MemoryBudget(fp_fraction_for_bits(1.6, 16))  # APB's smooth budget penalty, as training adds it
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def train_step():
        with kernels.use_backend(backend):
            model.train()
            loss = F.cross_entropy(model(Tensor(x)), y)
            if method == "apb":
                loss = loss + budget.penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def infer_step():
        with kernels.use_backend(backend), no_grad():
            model.eval()
            model(Tensor(x))
    return train_step, infer_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", choices=("numpy", "rust"), default=None,
                        help="this project's backends to time (default: every one available)")
    parser.add_argument("--method", choices=("fp", "apb"), default="fp",
                        help="fp: float ResNet-20; apb: APB 1.6 bits/weight, 1-bit activations (Bi-Real blocks)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch even if it imports")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of sleep before each engine's block, so that the previous engine's "
                             "spinning worker threads (OpenMP, OpenBLAS) are idle (default 0.5)")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/train_speed.json)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    if not args.settle >= 0:
        parser.error("--settle must be >= 0 seconds")
    backends = args.backend or kernels.available_backends()
    missing = [b for b in backends if b not in kernels.available_backends()]
    if missing:
        parser.error(f"--backend {' '.join(missing)}: the Rust extension is not built")
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    steps = {}
    for backend in backends:
        steps[f"{backend} train"], steps[f"{backend} inference"] = our_steps(backend, x, y, args.model, args.method)
    torch_threads = None
    if not args.no_torch and torch_float.available() and args.model == "resnet20":
        torch_train, torch_infer, torch_threads = torch_steps(x, y)
        steps.update({"torch train": torch_train, "torch inference": torch_infer})
    timed, _ = measure_interleaved(steps, repeats=args.steps, min_time=0.0, rounds=min(5, args.steps),
                                   settle=args.settle)
    rows, record = [], {}
    for what in ("train", "inference"):
        for engine in (*backends, "torch"):
            stats = timed.get(f"{engine} {what}")
            if stats is None:
                continue
            ratios = {ref: speedup(timed[f"{ref} {what}"], stats) if f"{ref} {what}" in timed else None
                      for ref in ("torch", "numpy")}
            label = engine if engine == "torch" or args.method == "fp" else f"{engine} (APB 1.6, 1-bit acts)"
            rows.append([f"{what} step", label, n, 1e3 * stats["median_s"], n / stats["median_s"],
                         *("-" if r is None else f"{r:.2f}x" for r in ratios.values())])
            record[f"{engine}_{what}"] = {"images_per_second": n / stats["median_s"], "vs_torch": ratios["torch"],
                                          "vs_numpy": ratios["numpy"],
                                          **{k: stats[k] for k in ("median_s", "q1_s", "q3_s", "repeats")}}
    m = machine()
    isa = kernels.backend.rust_isa() if "rust" in backends else None
    print(f"{args.model} ({args.method}), batch {n}, 32x32x3, {m['cpu']} ({m['cores']} cores), "
          f"Rust kernels' ISA {isa or '-'}, PyTorch threads {torch_threads or '-'}")
    print_table(["what", "engine", "batch", "median ms", "images/s", "vs PyTorch", "vs NumPy"], rows)
    write_json("train_speed", {"model": args.model, "method": args.method, "batch_size": n, "steps": args.steps,
                               "backends": backends, "isa": isa, "torch_threads": torch_threads,
                               "engines": record}, args.json)


if __name__ == "__main__":
    main()
