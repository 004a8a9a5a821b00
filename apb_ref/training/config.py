"""TrainConfig: every option of a training run, as one flat dataclass.

The common options are written out below; each registered method's options (its `Options` dataclass
in apb_ref.quant) are appended as fields by `make_dataclass`, so a method's settings are declared once,
in its own file, and the CLI flags (apb_ref.cli) are generated from these fields. Field metadata
carries each option's help text and choices.
"""
from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from ..data import DATASETS
from ..models import MODELS
from ..quant import METHODS, MethodOptions


def _opt(default: Any, help: str, choices: tuple | None = None, group: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


@dataclass
class CommonConfig:
    model: str = _opt("digits_cnn", "network architecture", tuple(sorted(MODELS)))
    dataset: str = _opt("digits", "dataset (nothing is downloaded: fashion-mnist reads Debian's "
                        "dataset-fashion-mnist package or --data-dir)", tuple(sorted(DATASETS)))
    data_dir: str | None = _opt(None, "directory of the dataset files (IDX or CIFAR-10 python batches)")
    pad_to: int | None = _opt(None, "zero-pad images to this size in pixels (e.g. 32 for Fashion-MNIST + ResNet-20)")
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(64, "training images per step")
    lr: float = _opt(0.1, "learning rate of the main optimizer (peak, before the schedule)")
    optimizer: str = _opt("sgd", "main optimizer", ("sgd", "adam", "adamw"))
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = _opt(5e-4, "L2 weight decay of the main optimizer")
    schedule: str = _opt("cosine", "learning-rate schedule over the epochs", ("cosine", "step", "constant"))
    warmup_epochs: int = _opt(0, "epochs of linear learning-rate warm-up")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    augment: str = _opt("auto", "random crop + flip (auto: what the dataset suggests, on for CIFAR-10)",
                        ("auto", "on", "off"))
    act: str = _opt("auto", "activation function (auto: hardtanh with --act-bits 1, relu otherwise)",
                    ("auto", "relu", "hardtanh"))
    seed: int = _opt(0, "seed of the initial weights and of every epoch's shuffling and augmentation")
    eval_batch_size: int = _opt(500, "images per evaluation batch")
    limit_train: int | None = _opt(None, "use only the first N training images (quick runs)")
    limit_test: int | None = _opt(None, "use only the first N test images")
    # compression: the method of the compressible layers, their input activations, a memory budget
    method: str = _opt("fp", "compression method of the compressible layers (first conv and last linear stay "
                       "float32)", tuple(sorted(METHODS)), "compression")
    act_bits: int = _opt(32, "bits of the activations into compressed layers", (32, 2, 1), "compression")
    act_ste: str = _opt("identity", "straight-through estimator of 1-bit activations", ("identity", "clipped"),
                        "compression")
    bits_per_weight: float | None = _opt(None, "memory budget of the compressed layers in bits/weight "
                                         "(methods that take a budget)", None, "compression")
    fp_fraction: float | None = _opt(None, "memory budget as a full-precision fraction of the compressed "
                                     "layers' weights (instead of --bits-per-weight)", None, "compression")
    budget_weight: float = _opt(1.0, "λ of the smooth budget penalty", None, "compression")
    budget_epoch: int | None = _opt(None, "epoch (0-based) of the hard budget projection (default: the last)",
                                    None, "compression")

    @property
    def activation(self) -> str:
        return ("hardtanh" if self.act_bits == 1 else "relu") if self.act == "auto" else self.act

    def method_options(self) -> MethodOptions:
        """The chosen method's Options, read from this config's fields."""
        options = METHODS[self.method].Options
        return options(**{f.name: getattr(self, f.name) for f in fields(options)})

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"TrainConfig: method must be one of {sorted(METHODS)}, got {self.method!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for name, v in positive.items():
            if int(v) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {v}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig: lr must be a positive finite number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay}")
        if self.augment not in ("auto", "on", "off"):
            raise ValueError(f"TrainConfig: augment must be auto, on or off, got {self.augment!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"TrainConfig: warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.act_bits not in (32, 2, 1):
            raise ValueError(f"TrainConfig: act_bits must be 32, 2 or 1, got {self.act_bits}")
        budgeted = self.bits_per_weight is not None or self.fp_fraction is not None
        if self.bits_per_weight is not None and self.fp_fraction is not None:
            raise ValueError("TrainConfig: give bits_per_weight or fp_fraction, not both")
        if budgeted and not METHODS[self.method].budgeted:
            takers = sorted(n for n, m in METHODS.items() if m.budgeted)
            raise ValueError(f"TrainConfig: a memory budget needs a method that takes one ({', '.join(takers)}), "
                             f"got {self.method!r}")
        if self.budget_epoch is not None and not 0 <= self.budget_epoch < self.epochs:
            raise ValueError(f"TrainConfig: budget_epoch must be in [0, epochs), got {self.budget_epoch}")
        self.method_options().validate()
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From a saved config; options added since it was saved take their defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown options {unknown}")
        return cls(**d)


def _method_fields() -> list[tuple[str, Any, Any]]:
    """(name, type, field) of every registered method's options, tagged with the method's name."""
    out = []
    for name, cls in METHODS.items():
        hints = typing.get_type_hints(cls.Options)
        for f in fields(cls.Options):
            default = f.default if f.default is not MISSING else f.default_factory()
            out.append((f.name, hints[f.name], field(default=default, metadata={**f.metadata, "group": name})))
    return out


TrainConfig = make_dataclass("TrainConfig", _method_fields(), bases=(CommonConfig,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = "Every option of a training run: the common ones, then each method's own (see module doc)."


def option_types(config_cls: type = TrainConfig) -> dict[str, Any]:
    """Resolved annotation of every field (for generating CLI flags)."""
    hints = typing.get_type_hints(CommonConfig)
    hints.update({name: typ for name, typ, _ in _method_fields()})
    return {f.name: hints[f.name] for f in fields(config_cls)}
