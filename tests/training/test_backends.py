"""The Rust training backend against the NumPy one: whole training steps and the `train` command."""
import json

import numpy as np
import pytest

from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.cli import main
from apb_ref.kernels import use_backend
from apb_ref.models import build
from apb_ref.nn.optim import SGD
from kernel_helpers import needs_rust


def train_steps(backend, steps=20, seed=0, lr=0.002):
    """The parameters of a ResNet-20 on 8x8 images (stride-1 and stride-2 convs, BatchNorm) after
    `steps` momentum SGD steps on seeded random batches, all on `backend`.

    The learning rate is small on purpose: with random labels at lr 0.01 the run is chaotic (moving the first
    conv's initial weights by one ulp moves the weights after 20 steps by 7 % on NumPy alone), so no
    two implementations could agree; at 0.002 the same nudge moves them by 1e-6."""
    rng = np.random.default_rng(seed)
    model = build("resnet20", in_channels=1, num_classes=10, image_size=8)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    with use_backend(backend):
        for _ in range(steps):
            x = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
            y = rng.integers(0, 10, 12)
            loss = F.cross_entropy(model(Tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [p.data.copy() for p in model.parameters()]


@needs_rust
def test_twenty_training_steps_give_the_same_weights_on_both_backends():
    numpy_params, rust_params = train_steps("numpy"), train_steps("rust")
    moved = [np.abs(a - b).max() / (np.abs(a).max() + 1e-12) for a, b in zip(numpy_params, rust_params)]
    # each step's sums differ by float32 rounding (tests/kernels/test_train_kernels.py); twenty
    # non-chaotic steps keep that near 1e-6 of a parameter's size, a wrong gradient would not
    assert max(moved) < 1e-5, max(moved)


@needs_rust
def test_train_command_takes_a_backend_and_reports_it(tmp_path, capsys):
    for backend in ("numpy", "rust"):
        out = tmp_path / backend
        assert main(["train", "--backend", backend, "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
                     "--out", str(out), "--quiet"]) == 0
        assert json.loads((out / "summary.json").read_text())["backend"] == backend
    numpy_run, rust_run = (json.loads((tmp_path / b / "summary.json").read_text()) for b in ("numpy", "rust"))
    assert abs(numpy_run["test_accuracy"] - rust_run["test_accuracy"]) <= 0.02


def _interrupted_then_resumed(config, out, first_backend, then_backend):
    """A run killed after its first epoch's checkpoint on `first_backend`, resumed on `then_backend`."""
    from apb_ref.training import Trainer, checkpoint
    with use_backend(first_backend):
        first = Trainer(config, out, progress=False)
        first.train_epoch(0)
        first.end_epoch_schedules()
        first.epoch = 1
        checkpoint.save(out / "last.ckpt", first.state())
    with use_backend(then_backend):
        resumed = Trainer(config, out, progress=False)
        summary = resumed.run(resume=True)
    return resumed, summary


@needs_rust
def test_resume_on_rust_continues_exactly_and_a_run_may_switch_backends(tmp_path):
    from apb_ref.training import TrainConfig, Trainer
    config = TrainConfig(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.05, limit_train=256,
                         limit_test=128)
    with use_backend("rust"):
        straight = Trainer(config, tmp_path / "straight", progress=False)
        straight.run()
    resumed, _ = _interrupted_then_resumed(config, tmp_path / "resumed", "rust", "rust")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the Rust kernels are deterministic
    _, summary = _interrupted_then_resumed(config, tmp_path / "switched", "numpy", "rust")
    assert summary["backend"] == "rust" and summary["epochs"] == 2
