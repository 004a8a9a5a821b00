"""ResNet-20 training and inference throughput with the NumPy backend (batch 128, 32×32×3).

    python benchmarks/train_speed.py [--steps 10] [--batch-size 128]

A training step is forward + cross-entropy + backward + SGD update (momentum, weight decay), in
train mode with batch statistics; inference is eval mode without a graph. Synthetic data: speed
does not depend on the pixel values. Reports the median over --steps timed steps.
"""
from __future__ import annotations

import argparse

import numpy as np

from common import machine, print_table, time_median, write_json

from apb_ref import ops as F
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.nn.optim import SGD
from apb_ref.training.runtime import reuse_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="resnet20")
    args = parser.parse_args()
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    model = build(args.model, in_channels=3, num_classes=10, image_size=32)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def train_step():
        loss = F.cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer_step():
        with no_grad():
            model(Tensor(x))

    model.train()
    train_s, train_all = time_median(train_step, args.steps, warmup=2)
    model.eval()
    infer_s, infer_all = time_median(infer_step, args.steps, warmup=2)
    rows = [["train step", n, 1e3 * train_s, n / train_s], ["inference", n, 1e3 * infer_s, n / infer_s]]
    print(f"{args.model}, batch {n}, 32x32x3, NumPy backend, {machine()['cpu']} ({machine()['cores']} cores)")
    print_table(["what", "batch", "median ms", "images/s"], rows)
    write_json("train_speed", {"model": args.model, "batch_size": n, "steps": args.steps,
                               "train_images_per_second": n / train_s, "inference_images_per_second": n / infer_s,
                               "train_step_seconds": train_all, "inference_step_seconds": infer_all})


if __name__ == "__main__":
    main()
