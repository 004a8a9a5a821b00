"""ResNet-20 training and inference throughput with the NumPy backend (batch 128, 32×32×3), against
PyTorch on the CPU when it imports (optional, never required).

    python benchmarks/train_speed.py [--steps 10] [--batch-size 128] [--no-torch] [--json PATH]

A training step is forward + cross-entropy + backward + SGD update (momentum, weight decay), in
train mode with batch statistics; inference is eval mode without a graph. Synthetic data: speed
does not depend on the pixel values. The models take turns (`apb_ref.bench.measure_interleaved`,
--steps timed steps each over 5 rounds) and report medians; "vs PyTorch" is the median of same-round
ratios. Threads: OPENBLAS_NUM_THREADS for NumPy's BLAS, APB_NUM_THREADS (else every core) for PyTorch;
set both to the same count.
"""
from __future__ import annotations

import argparse

import numpy as np

import torch_float
from common import machine, print_table, write_json

from apb_ref import ops as F
from apb_ref.autograd import Tensor, no_grad
from apb_ref.bench import measure_interleaved, speedup
from apb_ref.models import build
from apb_ref.nn.optim import SGD
from apb_ref.training.runtime import reuse_freed_memory


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch even if it imports")
    parser.add_argument("--json", help="where to write the results (default: benchmarks/results/train_speed.json)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = build(args.model, in_channels=3, num_classes=10, image_size=32)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def train_step():
        model.train()
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer_step():
        model.eval()
        with no_grad():
            model(Tensor(x))

    steps = {"numpy train": train_step, "numpy inference": infer_step}
    torch_threads = None
    if not args.no_torch and torch_float.available() and args.model == "resnet20":
        torch_train, torch_infer, torch_threads = torch_steps(x, y)
        steps.update({"torch train": torch_train, "torch inference": torch_infer})
    timed, _ = measure_interleaved(steps, repeats=args.steps, min_time=0.0, rounds=min(5, args.steps))
    rows, record = [], {}
    for what in ("train", "inference"):
        for engine in ("numpy", "torch"):
            stats = timed.get(f"{engine} {what}")
            if stats is None:
                continue
            mine = timed.get(f"torch {what}")
            ratio = speedup(mine, stats) if mine is not None else None
            rows.append([f"{what} step", engine, n, 1e3 * stats["median_s"], n / stats["median_s"],
                         "-" if ratio is None else f"{ratio:.2f}x"])
            record[f"{engine}_{what}"] = {"images_per_second": n / stats["median_s"], "vs_torch": ratio,
                                          **{k: stats[k] for k in ("median_s", "q1_s", "q3_s", "repeats")}}
    m = machine()
    print(f"{args.model}, batch {n}, 32x32x3, {m['cpu']} ({m['cores']} cores), PyTorch threads {torch_threads or '-'}")
    print_table(["what", "engine", "batch", "median ms", "images/s", "vs PyTorch"], rows)
    write_json("train_speed", {"model": args.model, "batch_size": n, "steps": args.steps,
                               "train_images_per_second": record["numpy_train"]["images_per_second"],
                               "inference_images_per_second": record["numpy_inference"]["images_per_second"],
                               "torch_threads": torch_threads, "engines": record}, args.json)


if __name__ == "__main__":
    main()
