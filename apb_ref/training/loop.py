"""The training loop: seeded batches, progress, evaluation each epoch, atomic checkpoints
(`last.ckpt`, `best.ckpt`), a JSON-lines metrics log, `summary.json`, exact resume and a NaN guard.

Exact resume: every source of randomness in epoch e is a generator seeded with (seed, e), and the
checkpoint at the end of an epoch holds the model, optimizer and schedule, so continuing from it
replays the remaining epochs bit for bit.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels, nn  # kernels: its backend seam plugs the Rust training kernels into the ops
from .. import ops as F
from ..fileio import atomic_write_text
from ..autograd import Tensor, no_grad
from ..data import Dataset, batches, load_dataset, num_batches
from ..models import build
from ..nn.optim import build_optimizer, build_scheduler
from ..quant import METHODS, quantized_layers
from ..quant.activations import FullPrecision
from ..quant.budget import MemoryBudget, fp_fraction_for_bits
from . import checkpoint
from .config import TrainConfig
from .progress import Progress
from .runtime import reuse_freed_memory
from .summary import index_bits, summarize

LAST, BEST, METRICS, SUMMARY = "last.ckpt", "best.ckpt", "metrics.jsonl", "summary.json"
CURVES, BAND, BITWIDTHS = "curves.png", "band.png", "bitwidths.png"
# Everything a run writes into its directory. Nothing else there is ever removed or replaced.
RUN_FILES = (LAST, BEST, METRICS, SUMMARY, CURVES, BAND, BITWIDTHS)


class TrainingDiverged(RuntimeError):
    """The loss, a parameter or a buffer became NaN or infinite; the last good checkpoint is left untouched."""


def _is_leftover_temp(path: Path) -> bool:
    """A temporary file of an interrupted atomic write of one of the run's files (`.last.ckpt.x1y2.tmp`)."""
    return path.suffix == ".tmp" and any(path.name.startswith(f".{name}.") for name in RUN_FILES)


def foreign_entries(out: Path) -> list[str]:
    """What `out` holds that a run did not write (empty for a fresh or a run-only directory)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not _is_leftover_temp(p))


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` ready for a run without losing anything the tool did not write.

    Leftover temp files of interrupted writes are removed (they are the run's own). A new run needs
    an empty directory, or one holding only a run's files with `overwrite`; `overwrite` removes the
    run's files and nothing else. A directory with other files is refused unless `overwrite` is given,
    and even then those files are kept.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        if _is_leftover_temp(p):
            p.unlink(missing_ok=True)
    if resume:
        return
    ours = [name for name in RUN_FILES if (out / name).exists()]
    foreign = foreign_entries(out)
    if (ours or foreign) and not overwrite:
        held = ", ".join(ours + foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        hint = "pass --resume to continue the run, " if LAST in ours else ""
        raise FileExistsError(f"--out {out} is not empty (it holds {held}); {hint}pass --overwrite to replace "
                              f"a run's files there (other files are kept), or choose another --out")
    for name in ours:
        (out / name).unlink()


def first_nonfinite(model) -> str | None:
    """Name of the first parameter or buffer holding NaN or inf, or None."""
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            return name
    for name, b in model.named_buffers():
        b = np.asarray(b)
        if b.dtype.kind == "f" and not np.isfinite(b).all():
            return name
    return None


def image_batches(x: np.ndarray, y: np.ndarray, data: Dataset, batch_size: int, **kw):
    return batches(x, y, batch_size, mean=data.mean, std=data.std, **kw)


def evaluate(model, data: Dataset, batch_size: int = 500, split: str = "test",
             progress: str | None = None) -> dict[str, float]:
    """Mean loss and accuracy of `model` on a split, in eval mode without building a graph; with a
    `progress` label, a progress bar (on stderr) while it runs."""
    x, y = data.split(split)
    if len(y) == 0:
        raise ValueError(f"evaluate: {data!r} has no {split!r} images")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    bar = Progress(num_batches(len(y), batch_size, drop_last=False), progress or "", enabled=progress is not None)
    with no_grad():
        for xb, yb in image_batches(x, y, data, batch_size):
            logits = model(Tensor(xb))
            total_loss += float(F.cross_entropy(logits, yb).data) * len(yb)
            correct += int((logits.data.argmax(axis=1) == yb).sum())
            bar.update(len(yb))
    bar.close()
    model.train(was_training)
    return {"loss": total_loss / len(y), "accuracy": correct / len(y)}


def recalibrate_batch_norm(model, batches) -> int:
    """Replace every BatchNorm's running mean and variance by the mean of its batch statistics over
    `batches` ((x, y) pairs), computed in train mode without a graph; nothing else changes. Running
    averages lag behind weights that moved during the epoch, and a sign after a BatchNorm turns that lag
    into flipped activations at evaluation; statistics of the current weights remove it. Returns the
    number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], model.training
    model.train()
    count = 0
    try:
        with no_grad():
            for count, (xb, _) in enumerate(batches, 1):
                for m in norms:  # momentum 1/k: the running value becomes the mean over the k batches so far
                    m.momentum = 1.0 / count
                model(Tensor(xb))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return count


def load_teacher(config: TrainConfig, data: Dataset):
    """The model in `config.teacher`, in eval mode, checked to see the run's images as it was trained to."""
    try:
        teacher, teacher_config, _ = load_model(config.teacher, data)
    except FileNotFoundError:
        raise FileNotFoundError(f"--teacher: no checkpoint {config.teacher}") from None
    same = ("dataset", "pad_to", "limit_train", "val_fraction")
    differ = [f"{k} {getattr(teacher_config, k)!r} (run: {getattr(config, k)!r})" for k in same
              if getattr(teacher_config, k) != getattr(config, k)]
    if differ:  # another input normalization or class set: its logits would not mean what they should
        raise ValueError(f"--teacher {config.teacher} was trained on other data: {', '.join(differ)}")
    return teacher


def load_run_data(config: TrainConfig) -> Dataset:
    """The images a run trains, validates and tests on, as its config says."""
    return load_dataset(config.dataset, config.data_dir, config.pad_to, limit_train=config.limit_train,
                        limit_test=config.limit_test, val_fraction=config.val_fraction)


def build_model(config: TrainConfig, data: Dataset):
    c, h, _ = data.image_shape
    model = build(config.model, num_classes=data.num_classes, in_channels=c, image_size=h, seed=config.seed,
                  act=config.activation, method=config.method, act_bits=config.act_bits, act_ste=config.act_ste,
                  options=config.method_options(), block=config.model_block, react=config.react,
                  act_scale=config.act_scale)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm):
            m.momentum = config.bn_momentum
    return model


def quantizer_parameter_ids(model) -> set[int]:
    """Parameters owned by weight quantizers (α, δ, ...): never in the main optimizer."""
    return {id(p) for name, p in model.named_parameters() if ".weight_quantizer." in f".{name}"}


class Trainer:
    """Owns one run directory. `run()` trains from scratch or, with resume=True, continues."""

    def __init__(self, config: TrainConfig, out: str | Path, data: Dataset | None = None, progress: bool = True,
                 overwrite: bool = False):
        self.config = config.validate()
        self.out = Path(out)
        self.progress, self.overwrite = progress, overwrite
        self.data = data or load_run_data(config)
        if not self.data.has_validation:
            print("warning: no validation split (val_fraction 0): best.ckpt is chosen on the test set, so its "
                  "test accuracy is optimistic", file=sys.stderr)
        self.model = build_model(config, self.data)
        self.teacher = load_teacher(config, self.data) if config.teacher else None
        owned = quantizer_parameter_ids(self.model)
        weights = [p for p in self.model.parameters() if id(p) not in owned]
        self.optimizer = build_optimizer(config.optimizer, weights, config.lr, config.weight_decay,
                                         momentum=config.momentum, nesterov=config.nesterov)
        # the schedules tick once per epoch, or once per batch (`lr_update`)
        ticks = num_batches(len(self.data.y_train), config.batch_size, drop_last=False) if config.lr_update == "batch" else 1
        self.scheduler = build_scheduler(config.schedule, self.optimizer, config.epochs, config.warmup_epochs, ticks)
        # α, δ and the like: their own Adam, no weight decay, cosine over all epochs (METHODS §1.4)
        self.quantized = [m for _, m in quantized_layers(self.model)]  # fixed for the run
        self.quantizers = [m.weight_quantizer for m in self.quantized]
        self.act_quantizers = [m.act_quantizer for m in self.quantized]  # as built (two-step swaps them)
        self.method = METHODS[config.method]  # its loss_term hook sees all the run's layers at once
        method_params = [p for q in self.quantizers for p in q.quantizer_parameters()]
        method_lr = config.method_options().quantizer_lr
        self.method_optimizer = build_optimizer("adam", method_params, method_lr, 0.0) if method_params else None
        self.method_scheduler = (build_scheduler("cosine", self.method_optimizer, config.epochs, steps_per_epoch=ticks)
                                 if self.method_optimizer else None)
        self.budget = self._budget()
        self.epoch = 0  # epochs completed
        self.saved_epoch: int | None = None  # epoch of the last good checkpoint on disk
        self.best_accuracy = -1.0  # of the selection split (validation, else test)
        self.best_epoch: int | None = None
        self.best_test_accuracy: float | None = None  # test accuracy of the best checkpoint
        self.train_seconds = 0.0
        self.images_seen = 0

    def _budget(self) -> MemoryBudget | None:
        cfg = self.config
        if cfg.bits_per_weight is None and cfg.fp_fraction is None:
            return None
        if self.method.budget_scope == "layer":  # each layer meets the budget itself (pruning)
            b_idx = index_bits(self.model)
            for q in self.quantizers:
                q.set_budget(cfg.bits_per_weight, cfg.fp_fraction, b_idx)
            return None
        f = cfg.fp_fraction if cfg.fp_fraction is not None else fp_fraction_for_bits(cfg.bits_per_weight, index_bits(self.model))
        return MemoryBudget(f, cfg.budget_weight)

    @property
    def budget_epoch(self) -> int:
        return self.config.epochs // 2 if self.config.budget_epoch is None else self.config.budget_epoch

    def _optimizers(self):
        return [o for o in (self.optimizer, self.method_optimizer) if o is not None]

    def _schedulers(self):
        return [s for s in (self.scheduler, self.method_scheduler) if s is not None]

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "epoch": self.epoch, "best_accuracy": self.best_accuracy,
                "best_epoch": self.best_epoch, "best_test_accuracy": self.best_test_accuracy,
                "train_seconds": self.train_seconds, "images_seen": self.images_seen,
                "model": dict(self.model.state_dict()),
                "optimizers": [o.state_dict() for o in self._optimizers()],
                "schedulers": [s.state_dict() for s in self._schedulers()]}

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        saved = TrainConfig.from_dict(state["config"])
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in asdict(saved).items() if getattr(self.config, k) != v}
            raise ValueError(f"resume: {path} was written with different options (saved, now): {diff}")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self._optimizers(), state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self._schedulers(), state["schedulers"]):
            sch.load_state_dict(s)
        self.epoch, self.best_accuracy = int(state["epoch"]), float(state["best_accuracy"])
        self.best_epoch, self.best_test_accuracy = state.get("best_epoch"), state.get("best_test_accuracy")
        if self.best_test_accuracy is None and self.best_accuracy >= 0 and not self.data.has_validation:
            self.best_test_accuracy = self.best_accuracy  # a checkpoint from before the split chose on test
        self.saved_epoch = self.epoch
        self.train_seconds, self.images_seen = float(state["train_seconds"]), int(state["images_seen"])

    def resume(self) -> None:
        path = self.out / LAST
        if not path.exists():
            raise FileNotFoundError(f"resume: no checkpoint {path} to resume from")
        self.load_state(checkpoint.load(path), path)
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop log lines of epochs after the checkpoint (written before a crash), so no line repeats,
        and a torn last line (a kill during the append), saying so."""
        log = self.out / METRICS
        if not log.exists():
            return
        lines = log.read_text(errors="replace").splitlines()
        kept = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                epoch = json.loads(line)["epoch"]
                if not isinstance(epoch, int):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                if i == len(lines) - 1:
                    print(f"resume: dropped the torn last line of {log} (an interrupted append)", file=sys.stderr)
                    break
                raise ValueError(f"resume: {log} line {i + 1} is not a metrics record: {line[:60]!r}; "
                                 "repair or remove that line, then resume again") from None
            if epoch <= self.epoch:
                kept.append(line)
        atomic_write_text(log, "".join(l + "\n" for l in kept))

    def last_good(self) -> str:
        """Where the last good checkpoint is, for divergence messages."""
        if self.saved_epoch is None:
            return "there is no good checkpoint yet (nothing was saved)"
        return f"the last good checkpoint is {self.out / LAST} (epoch {self.saved_epoch})"

    # --- the loop ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data = self.config, self.data
        rng = np.random.default_rng([cfg.seed, epoch])
        augment = data.augment if cfg.augment == "auto" else cfg.augment == "on"
        steps = num_batches(len(data.y_train), cfg.batch_size, drop_last=False)
        bar = Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.progress)
        self.model.train()
        self.start_epoch_hooks(epoch)
        penalize = self.budget is not None and epoch < self.budget_epoch
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (xb, yb) in enumerate(image_batches(data.x_train, data.y_train, data, cfg.batch_size, rng=rng, augment=augment)):
            logits = self.model(Tensor(xb))
            loss = F.cross_entropy(logits, yb, cfg.label_smoothing)
            value = float(loss.data)  # the logged training loss: the cross-entropy alone, comparable across runs
            if self.teacher is not None:
                with no_grad():
                    taught = self.teacher(Tensor(xb)).data
                loss = loss * (1.0 - cfg.kd_weight) + F.distillation(logits, taught, cfg.kd_temperature) * cfg.kd_weight
            total = float(loss.data)  # what the method's loss term scales with
            if not math.isfinite(total):
                bar.close()
                raise TrainingDiverged(f"loss became {total} at epoch {epoch + 1}, step {step + 1}; {self.last_good()}")
            if penalize:
                loss = loss + self.budget.penalty(self.model)
            term = self.method.loss_term(self.quantizers, [layer.weight for layer in self.quantized], total)
            if term is not None:  # the method's own loss term (SBNN's EC constraint)
                loss = loss + term
            for o in self._optimizers():
                o.zero_grad()
            loss.backward()
            for o in self._optimizers():
                o.step()
            if cfg.lr_update == "batch":
                for s in self._schedulers():
                    s.step()
            done = (epoch + (step + 1) / steps) / cfg.epochs  # fraction of training done, for schedules
            for layer in self.quantized:  # keep each method's parameters and weights in their domain; step schedules
                layer.weight_quantizer.project_parameters()
                layer.weight_quantizer.project_weights(layer.weight.data)
                layer.weight_quantizer.on_step(done, layer.weight.data)
            loss_sum += value * len(yb)
            correct += int((logits.data.argmax(axis=1) == yb).sum())
            seen += len(yb)
            bar.update(len(yb), loss=loss_sum / seen, acc=correct / seen)
        bar.close()
        return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                "images_per_second": bar.items_per_second, "train_epoch_seconds": seen / bar.items_per_second}

    def end_epoch_schedules(self) -> None:
        """Advance the learning-rate schedules at the end of an epoch (with `lr_update` "batch" they
        advanced after every batch of `train_epoch` instead)."""
        if self.config.lr_update == "epoch":
            for s in self._schedulers():
                s.step()

    def start_epoch_hooks(self, epoch: int) -> None:
        """Method schedules (freezing), the two-step activations and, at the projection epoch, the
        budget's hard projection."""
        float_acts = epoch < self.config.float_act_epochs
        for layer, quantizer in zip(self.quantized, self.act_quantizers):  # no parameters: a swap loses nothing
            layer.act_quantizer = FullPrecision() if float_acts else quantizer
        for _, layer in quantized_layers(self.model):
            layer.weight_quantizer.on_epoch_start(epoch, layer.weight.data)
        if self.budget is not None and epoch == self.budget_epoch:
            self.budget.project(self.model)

    def run(self, resume: bool = False) -> dict[str, Any]:
        reuse_freed_memory()
        prepare_run_dir(self.out, resume, self.overwrite)
        if resume:
            self.resume()
        wall_start = time.perf_counter()
        while self.epoch < self.config.epochs:
            e = self.epoch
            lr = self.optimizer.param_groups[0]["lr"]
            stats = self.train_epoch(e)
            self.end_epoch_schedules()
            if self.config.recalibrate_batches:
                self.recalibrate(e)
            scores = {split: evaluate(self.model, self.data, self.config.eval_batch_size,
                                      split=split, progress=f"{split} {e + 1}/{self.config.epochs}" if self.progress else None)
                      for split in self.eval_splits}
            self.epoch = e + 1
            self.train_seconds += stats["train_epoch_seconds"]
            self.images_seen += len(self.data.y_train)
            record = {"epoch": self.epoch, "lr": lr, **stats,
                      **{f"{split}_{k}": v for split, score in scores.items() for k, v in score.items()},
                      **self.compression_log()}
            if self.config.float_act_epochs:
                record["float_activations"] = e < self.config.float_act_epochs
            if self.budget is not None:  # epochs from the hard projection on fine-tune with the masks frozen
                record["budget_projected"] = e >= self.budget_epoch
            bad = first_nonfinite(self.model) or next(
                (f"the {split} loss" for split, score in scores.items() if not math.isfinite(score["loss"])), None)
            if bad:  # never call such a state good: the previous checkpoint stays
                raise TrainingDiverged(f"{bad} became NaN or infinite in epoch {self.epoch}; {self.last_good()}")
            chosen_on = scores[self.selection_split]["accuracy"]
            improved = chosen_on > self.best_accuracy
            if improved:
                self.best_accuracy, self.best_epoch = chosen_on, self.epoch
                self.best_test_accuracy = scores["test"]["accuracy"]
            self.log_epoch(record)
            checkpoint.save(self.out / LAST, self.state())
            self.saved_epoch = self.epoch
            if improved:
                checkpoint.save(self.out / BEST, self.state())
        summary = self.summary(time.perf_counter() - wall_start)
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary

    def recalibrate(self, epoch: int) -> None:
        """BatchNorm statistics for evaluation from the model as it is now (`recalibrate_batch_norm`),
        over the first `bn_recalibrate` batches of a seeded shuffle of the training images."""
        cfg, data = self.config, self.data
        rng = np.random.default_rng([cfg.seed, epoch, 1])  # its own stream: training's shuffles stay the same
        batches = image_batches(data.x_train, data.y_train, data, cfg.batch_size, rng=rng, augment=False)
        recalibrate_batch_norm(self.model, itertools.islice(batches, cfg.recalibrate_batches))

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("val", "test") if self.data.has_validation else ("test",)

    @property
    def selection_split(self) -> str:
        """Where best.ckpt is chosen: the validation split, else (val_fraction 0) the test set."""
        return "val" if self.data.has_validation else "test"

    def compression_log(self) -> dict[str, Any]:
        """Per-layer method scalars (α, δ, FP fraction) and the model's bits/weight, for the metrics log."""
        layers = {name: layer.weight_quantizer.layer_log(layer.weight.data) for name, layer in quantized_layers(self.model)}
        if not any(layers.values()):
            return {}
        s = summarize(self.model, self.data.image_shape)
        entropy = {} if s.entropy_bits_per_weight is None else {"entropy_bits_per_weight": s.entropy_bits_per_weight}
        return {"fp_fraction": s.fp_fraction, "bits_per_weight": s.bits_per_weight, **entropy, "layers": layers}

    def log_epoch(self, record: dict[str, Any]) -> None:
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.progress:
            val = (f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} | "
                   if "val_accuracy" in record else "")
            print(f"epoch {record['epoch']}/{self.config.epochs}: train loss {record['train_loss']:.4f} "
                  f"acc {record['train_accuracy']:.4f} | {val}test loss {record['test_loss']:.4f} "
                  f"acc {record['test_accuracy']:.4f} | {record['images_per_second']:.0f} img/s", flush=True)

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        final = evaluate(self.model, self.data, self.config.eval_batch_size, progress="final test" if self.progress else None)
        memory = summarize(self.model, self.data.image_shape).totals()
        budget = None
        if self.budget is not None:
            budget = {"fp_fraction": self.budget.fp_fraction, "bits_per_weight": self.config.bits_per_weight,
                      "met": memory["fp_fraction"] <= self.budget.fp_fraction + 1e-3}
        elif self.config.bits_per_weight is not None or self.config.fp_fraction is not None:  # per-layer budget
            cfg = self.config
            met = (memory["bits_per_weight"] <= cfg.bits_per_weight + 1e-6 if cfg.bits_per_weight is not None
                   else memory["fp_fraction"] <= cfg.fp_fraction + 1e-6)
            budget = {"fp_fraction": cfg.fp_fraction, "bits_per_weight": cfg.bits_per_weight, "met": met}
        return {"model": self.config.model, "dataset": self.config.dataset, "seed": self.config.seed,
                "method": self.config.method, "act_bits": self.config.act_bits,
                "bits_per_weight": memory["bits_per_weight"], "fp_fraction": memory["fp_fraction"],
                "model_bits": memory["model_bits"], "compression_ratio": memory["compression_ratio"],
                "entropy_bits_per_weight": memory["entropy_bits_per_weight"],
                "budget": budget,
                "epochs": self.epoch, "test_accuracy": final["accuracy"], "test_loss": final["loss"],
                # best.ckpt: the epoch chosen on the selection split, and its test accuracy
                "best_test_accuracy": self.best_test_accuracy, "best_epoch": self.best_epoch,
                "best_selected_on": "validation" if self.selection_split == "val" else "test",
                "best_val_accuracy": self.best_accuracy if self.selection_split == "val" else None,
                "validation_images": len(self.data.y_val), "wall_seconds": wall_seconds,
                "train_seconds": self.train_seconds,
                "images_per_second": self.images_seen / max(self.train_seconds, 1e-9),
                "backend": kernels.get_backend(),
                "parameters": int(sum(p.size for p in self.model.parameters())),
                "config": asdict(self.config)}


def train(config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    return Trainer(config, out, progress=progress).run(resume=resume)


def export_args(config: TrainConfig, data: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a packed file needs to rebuild the architecture and normalize inputs."""
    c, h, _ = data.image_shape
    build_args = {"name": config.model, "num_classes": data.num_classes, "in_channels": c, "image_size": h,
                  "act": config.activation, **({"block": config.model_block} if config.model_block != "basic" else {}),
                  **({"react": True} if config.react else {}), **({"act_scale": True} if config.act_scale else {})}
    # what evaluating the packed file needs to see the data as training did (`apb-ref eval --packed`)
    normalization = {"dataset": config.dataset, "mean": data.mean.tolist(), "std": data.std.tolist(),
                     "image_shape": list(data.image_shape), "pad_to": config.pad_to, "data_dir": config.data_dir,
                     "class_names": data.class_names}
    return build_args, normalization


def load_model(path: str | Path, data: Dataset | None = None):
    """Rebuild the model stored in a checkpoint; returns (model, config, dataset)."""
    state = checkpoint.load(path)
    config = TrainConfig.from_dict(state["config"])
    data = data or load_run_data(config)  # the same images, so the same normalization
    model = build_model(config, data)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, data
