"""TrainConfig: every option of a training run, as one flat dataclass.

The common options are written out below; each registered method's options (its `Options` dataclass
in apb_ref.quant) are appended as fields by `make_dataclass`, so a method's settings are declared once,
in its own file, and the CLI flags (apb_ref.cli) are generated from these fields. Field metadata
carries each option's help text and choices.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from ..data import DATASETS
from ..models import MODELS
from ..quant import METHODS, MethodOptions
from ..quant.base import check_option_types
from ..quant.activations import STES


RECALIBRATE_1BIT = 20  # bn_recalibrate's default with 1-bit activations (benchmarks/ablation_1bit.py)

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
    lr_update: str = _opt("batch", "when the schedule advances: after every batch (the cosine anneals smoothly to "
                          "zero at the end of training) or after every epoch (each epoch holds one value)",
                          ("batch", "epoch"))
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    augment: str = _opt("auto", "random crop + flip (auto: what the dataset suggests, on for CIFAR-10)",
                        ("auto", "on", "off"))
    act: str = _opt("auto", "activation function (auto: hardtanh with --act-bits 1 or a method that binarizes "
                    "its layers' inputs itself (pabt), relu otherwise)",
                    ("auto", "relu", "hardtanh"))
    block: str = _opt("auto", "ResNet-20 block: basic (one shortcut per two convs, He et al.) or bireal (a "
                      "real-valued shortcut around every conv, Bi-Real Net); auto: bireal with --act-bits 1, basic "
                      "otherwise", ("auto", "basic", "bireal"))
    react: bool = _opt(False, "ResNet-20 with ReActNet's learned activations: a learned threshold per channel before "
                       "each compressed conv (RSign) and RPReLU in place of the blocks' activations")
    act_scale: bool = _opt(False, "ResNet-20 with XNOR-Net's activation scale: each compressed conv's output times "
                           "the mean |input| over channels, averaged over its window")
    bn_momentum: float = _opt(0.1, "momentum of the BatchNorm running statistics (the weight of each new batch)")
    bn_recalibrate: int | None = _opt(None, "before each evaluation, re-estimate every BatchNorm's running statistics "
                                      "as the mean over this many training batches (0: keep the running averages; "
                                      f"default: {RECALIBRATE_1BIT} with --act-bits 1, else 0)")
    float_act_epochs: int = _opt(0, "two-step training: the first N epochs run the compressed layers on float "
                                 "activations, the rest on --act-bits")
    teacher: str | None = _opt(None, "checkpoint of a trained model (say, the full-precision one) to distil from: the "
                               "loss becomes (1 - w)·cross-entropy + w·distillation")
    kd_weight: float = _opt(0.5, "weight w of the distillation term (with --teacher)")
    kd_temperature: float = _opt(1.0, "softmax temperature T of the distillation term, scaled by T² (with --teacher)")
    seed: int = _opt(0, "seed of the initial weights and of every epoch's shuffling and augmentation")
    eval_batch_size: int = _opt(500, "images per evaluation batch")
    limit_train: int | None = _opt(None, "use only the first N training images (quick runs)")
    limit_test: int | None = _opt(None, "use only the first N test images")
    val_fraction: float = _opt(0.1, "fraction of the training images held out as a stratified validation split, "
                               "on which the best checkpoint is chosen (0: none; best is then chosen on the test "
                               "set, which is optimistic)")
    # compression: the method of the compressible layers, their input activations, a memory budget
    method: str = _opt("fp", "compression method of the compressible layers (first conv and last linear stay "
                       "float32)", tuple(sorted(METHODS)), "compression")
    act_bits: int = _opt(32, "bits of the activations into compressed layers", (32, 2, 1), "compression")
    act_ste: str = _opt("identity", "straight-through estimator of 1-bit activations: identity, clipped "
                        "(1 inside [-1, 1]) or approx (Bi-Real's 2 - 2|x| inside [-1, 1])", STES,
                        "compression")
    bits_per_weight: float | None = _opt(None, "memory budget of the compressed layers in bits/weight "
                                         "(methods that take a budget)", None, "compression")
    fp_fraction: float | None = _opt(None, "memory budget as a full-precision fraction of the compressed "
                                     "layers' weights (instead of --bits-per-weight)", None, "compression")
    budget_weight: float = _opt(1.0, "λ of the smooth budget penalty", None, "compression")
    budget_epoch: int | None = _opt(None, "epoch (0-based) at whose start the hard budget projection runs (default: "
                                    "the middle one, epochs // 2, so the second half trains with the masks frozen)",
                                    None, "compression")

    @property
    def model_block(self) -> str:
        """The ResNet-20 block built: `block`, with auto resolved (Bi-Real with 1-bit activations)."""
        return ("bireal" if self.act_bits == 1 and self.model == "resnet20" else "basic") if self.block == "auto" else self.block

    @property
    def recalibrate_batches(self) -> int:
        """Training batches that re-estimate the BatchNorm statistics before each evaluation (`bn_recalibrate`,
        with its default resolved: on with 1-bit activations, where a sign follows every BatchNorm)."""
        if self.bn_recalibrate is not None:
            return self.bn_recalibrate
        return RECALIBRATE_1BIT if self.act_bits == 1 else 0

    @property
    def activation(self) -> str:
        binary = self.act_bits == 1 or METHODS[self.method].binarizes_inputs
        return ("hardtanh" if binary else "relu") if self.act == "auto" else self.act

    def method_options(self) -> MethodOptions:
        """The chosen method's Options, read from this config's fields."""
        options = METHODS[self.method].Options
        return options(**{f.name: getattr(self, f.name) for f in fields(options)})

    def validate(self) -> "TrainConfig":
        """Types, finiteness, ranges and choices of every option (the common ones here, the method's
        through its Options); ValueError naming the option."""
        check_option_types("TrainConfig", self, typing.get_type_hints(CommonConfig))
        for f in fields(CommonConfig):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"TrainConfig: {f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"TrainConfig: {name} must be in [{low}, {high}], got {value}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"TrainConfig: momentum and label_smoothing must be in [0, 1), got "
                             f"{self.momentum} and {self.label_smoothing}")
        if (self.block not in ("auto", "basic") or self.react or self.act_scale) and self.model != "resnet20":
            raise ValueError(f"TrainConfig: block, react and act_scale are ResNet-20 options, not of {self.model!r}")
        if self.teacher is None and (self.kd_weight != 0.5 or self.kd_temperature != 1.0):
            raise ValueError("TrainConfig: kd_weight and kd_temperature tune the distillation from a teacher; give "
                             "teacher (a checkpoint) too")
        if self.float_act_epochs and (self.act_bits == 32 or self.float_act_epochs >= self.epochs):
            raise ValueError(f"TrainConfig: float_act_epochs ({self.float_act_epochs}) needs low-bit activations "
                             f"(act_bits {self.act_bits}) and must leave epochs for them (epochs {self.epochs})")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"TrainConfig: warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        budgeted = self.bits_per_weight is not None or self.fp_fraction is not None
        if self.bits_per_weight is not None and self.fp_fraction is not None:
            raise ValueError("TrainConfig: give bits_per_weight or fp_fraction, not both")
        if budgeted and not METHODS[self.method].budgeted:
            takers = sorted(n for n, m in METHODS.items() if m.budgeted)
            raise ValueError(f"TrainConfig: a memory budget needs a method that takes one ({', '.join(takers)}), "
                             f"got {self.method!r}")
        if self.budget_epoch is not None and not 0 <= self.budget_epoch < self.epochs:
            raise ValueError(f"TrainConfig: budget_epoch must be in [0, epochs), got {self.budget_epoch}")
        self._check_method_fit(budgeted)
        self.method_options().validate()
        return self

    def _check_method_fit(self, budgeted: bool) -> None:
        """Options that would be silently ignored are refused: another method's options changed from
        their defaults, the model-wide budget's knobs with a per-layer budget, an option the budget
        replaces, an FP-fraction budget for a method that keeps no full-precision weights."""
        cls = METHODS[self.method]
        own = {f.name for f in fields(cls.Options)}
        for name, _, f in _method_fields():
            if name not in own and getattr(self, name) != f.default:
                owners = sorted(m for m, c in METHODS.items() if name in {g.name for g in fields(c.Options)})
                raise ValueError(f"TrainConfig: {name} is an option of {', '.join(owners)}, not of {self.method!r}; "
                                 f"leave it at its default ({f.default!r})")
        defaults = {f.name: f.default for f in fields(CommonConfig)}
        for name in ("budget_weight", "budget_epoch"):
            if getattr(self, name) != defaults[name] and not (budgeted and cls.budget_scope == "model"):
                raise ValueError(f"TrainConfig: {name} tunes a model-wide memory budget (--bits-per-weight or "
                                 f"--fp-fraction with {', '.join(sorted(m for m, c in METHODS.items() if c.budgeted and c.budget_scope == 'model'))}); "
                                 f"this run has none")
        option_defaults = {f.name: f.default for f in fields(cls.Options)}
        for name in cls.budget_replaces:
            if budgeted and getattr(self, name) != option_defaults[name]:
                raise ValueError(f"TrainConfig: give {name} or a budget (--bits-per-weight/--fp-fraction), not both: "
                                 f"the budget sets it")
        if cls.binarizes_inputs and self.act_bits != 32:
            raise ValueError(f"TrainConfig: {self.method!r} binarizes its layers' inputs itself (its activation "
                             f"bases); leave act_bits at 32, got {self.act_bits}")
        if self.fp_fraction is not None and not cls.takes_fp_fraction:
            raise ValueError(f"TrainConfig: {self.method!r} keeps no full-precision weights; give its budget as "
                             "bits_per_weight, not fp_fraction")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From a saved config, checked as strictly as the CLI's options; options added since it was
        saved take the value its run had in effect (`LEGACY_VALUES`), else their defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"TrainConfig: a saved config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown options {unknown}")
        return cls(**{**{k: v for k, v in LEGACY_VALUES.items() if k not in d}, **d}).validate()


# Inclusive bounds of numeric options: beyond them a run is a typo (or a denial of service), not a study.
RANGES = {
    "epochs": (1, 100_000), "batch_size": (1, 1 << 20), "eval_batch_size": (1, 1 << 20), "seed": (0, 2**63 - 1),
    "pad_to": (1, 1024), "limit_train": (1, 1 << 40), "limit_test": (1, 1 << 40), "weight_decay": (0.0, 1e3),
    "warmup_epochs": (0, 100_000), "bits_per_weight": (1.0, 32.0), "fp_fraction": (0.0, 1.0),
    "budget_weight": (0.0, 1e6), "budget_epoch": (0, 100_000), "lr": (0.0, 1e3), "val_fraction": (0.0, 0.9), "bn_recalibrate": (0, 1 << 20), "kd_weight": (0.0, 1.0), "float_act_epochs": (0, 100_000), "bn_momentum": (1e-4, 1.0),
    "kd_temperature": (1e-3, 100.0),
}

# Options added after runs were saved without them, and the value those runs had in effect (a saved
# config missing one is read with this value, not the new default, so it still describes the run).
LEGACY_VALUES = {"val_fraction": 0.0, "lr_update": "epoch", "block": "basic", "bn_recalibrate": 0}


def _method_fields() -> list[tuple[str, Any, Any]]:
    """(name, type, field) of every registered method's options, tagged with the method's name."""
    out, seen = [], set()
    for name, cls in METHODS.items():
        hints = typing.get_type_hints(cls.Options)
        for f in fields(cls.Options):
            if f.name in seen:  # an option shared by several methods (the registry checked it is the same)
                continue
            seen.add(f.name)
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
