"""The method seam. A weight quantizer maps a layer's latent weights to the weights the layer
computes with, inside autograd, and owns everything else about its method:

  Options          a dataclass of the method's own settings; the CLI flags and TrainConfig fields
                   are generated from it (field metadata: help, choices)
  forward(w)       the effective weights (a graph node: the method's STE lives in its Function)
  product          the layer's output from its input and weights: op(x, forward(w), bias) unless the
                   layer is a sum of products (PaBT: one per activation base)
  activation_quantizer  the layer's activation quantizer when the method makes its input's bases
                   itself (PaBT); None: the run's --act-bits quantizer
  quantizer_parameters()  parameters trained by their own optimizer (e.g. APB's α, δ)
  on_epoch_start   schedule hooks (freezing), idempotent in the epoch so resume replays them
  on_step          a schedule hook after every optimizer step (gradual pruning)
  project_parameters  keep its parameters in their domain after each optimizer step (APB: α, δ > 0)
  project_weights  keep the layer's latent weights in their domain after each step (SBNN's clamp)
  init_weights     set the layer's initial latent weights, once, when the layer is built
  loss_term        a term the method adds to the training loss, over all the run's layers at once
                   (a classmethod: SBNN's constraint is on a fraction counted over every layer)
  count(w)         how the weights are stored (the memory formula reads only this)
  layer_log(w)     scalars for the per-epoch metrics log
  budget hooks     soft_fp_fraction / budget_distances / apply_budget, for methods with a memory
                   budget shared by the model (budgeted = True, budget_scope "model"); the budget
                   asks, it never writes a quantizer's state. set_budget for a per-layer budget
                   (budget_scope "layer": pruning maps bits/weight to its density)
  op_specs         how its autograd ops are tested (forward reference, gradient or STE surrogate)
  pack(w)          the packed form: tensors + a JSON spec, run at inference by `packed_layer`
                   (a name in apb_ref.packed.layers.PACKED_LAYERS)

`QuantConv2d`/`QuantLinear` (layers.py) hold one and never ask which method it is.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

import numpy as np

from .. import nn
from ..autograd import Tensor


def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A method option: a dataclass field whose metadata becomes its CLI flag's help and choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


def check_option_types(owner: str, obj: Any, types: dict[str, Any]) -> None:
    """Every field of a config dataclass has its annotated type (int is not bool, a float may be an
    int) and every number is finite: ValueError naming the option otherwise. Values read from a file
    or built by hand are checked as strictly as the CLI's."""
    for name, annotation in types.items():
        value = getattr(obj, name)
        allowed = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
        if value is None and len(allowed) < len(typing.get_args(annotation) or (annotation,)):
            continue  # Optional and None
        base = allowed[0]
        ok = (isinstance(value, bool) if base is bool
              else isinstance(value, int) and not isinstance(value, bool) if base is int
              else isinstance(value, (int, float)) and not isinstance(value, bool) if base is float
              else isinstance(value, base))
        if not ok:
            raise ValueError(f"{owner}: {name} must be {annotation}, got {value!r} ({type(value).__name__})")
        if base is float and not math.isfinite(value):
            raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options (full precision has none)."""

    def validate(self) -> None:
        """Raise ValueError naming the option when a value has the wrong type, is not finite or not
        one of its field's choices. Subclasses add their ranges after calling this."""
        owner = type(self).__name__
        check_option_types(owner, self, typing.get_type_hints(type(self)))
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{owner}: {f.name} must be one of {', '.join(map(str, choices))}, "
                                 f"got {getattr(self, f.name)!r}")

    @property
    def quantizer_lr(self) -> float | None:
        """Learning rate of the quantizer's own optimizer (Adam), when it has parameters."""
        return None


@dataclass(frozen=True)
class WeightCount:
    """How a layer's weights are stored. Every weight is in exactly one group:

      quantized  at `quantized_bits` bits each (1 for binary, k for k-bit uniform)
      full       as float32
      pruned     not at all (zero)

    A sparse group (`sparse` for the full-precision weights, `quantized_sparse` for the quantized
    ones) also stores a b_idx-bit index per weight. `bits` is the one memory formula (METHODS §1.7).
    `entropy_bits`, when a method knows it, is what an ideal entropy coder needs for the quantized
    group (SBNN: N·H(p)): reported beside the formula, never part of it."""

    quantized: int
    full: int
    sparse: bool  # full-precision weights kept sparsely (APB's residual, pruning's survivors)
    pruned: int = 0
    quantized_bits: int = 1
    quantized_sparse: bool = False  # quantized weights kept sparsely (pruning + quantization)
    entropy_bits: float | None = None  # the quantized group's entropy bound, when the method reports one

    @property
    def total(self) -> int:
        return self.quantized + self.full + self.pruned

    def bits(self, b_idx: int) -> int:
        return (self.quantized * (self.quantized_bits + (b_idx if self.quantized_sparse else 0))
                + self.full * (32 + (b_idx if self.sparse else 0)))


class WeightQuantizer(nn.Module):
    """Base, and the "fp" method: the identity (full precision)."""

    name: ClassVar[str] = "fp"
    description: ClassVar[str] = "full precision (no compression)"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    budgeted: ClassVar[bool] = False  # takes --bits-per-weight / --fp-fraction
    # "model": one budget shared by all layers through the soft penalty and the hard projection
    # (budget.py, APB); "layer": each quantizer is given the budget and meets it itself (`set_budget`)
    budget_scope: ClassVar[str] = "model"
    budget_replaces: ClassVar[tuple[str, ...]] = ()  # options a budget sets (TrainConfig refuses both)
    takes_fp_fraction: ClassVar[bool] = True  # False: keeps no full-precision weights, so no --fp-fraction
    # True: the method binarizes its layers' inputs itself (`activation_quantizer`, `product`; PaBT's
    # activation bases), so a run keeps --act-bits at 32 and the inputs want hardtanh's range
    binarizes_inputs: ClassVar[bool] = False
    packed_layer: ClassVar[str | None] = None  # None: exported as float32 weights
    op_specs: ClassVar[tuple] = ()  # the method's ops' test specs (apb_ref.testing collects them)

    def __init__(self, w: np.ndarray | None = None, options: MethodOptions | None = None):
        super().__init__()
        self.options = options if options is not None else self.Options()

    def forward(self, w: Tensor) -> Tensor:
        return w

    def product(self, x: Tensor, w: Tensor, op: Callable[[Tensor, Tensor, Tensor | None], Tensor],
                bias: Tensor | None) -> Tensor:
        """The layer's output from its (activation-quantized) input x and latent weights w, given the
        layer's own product op(x, q, bias) (a conv, or x·qᵀ, plus bias): op(x, self(w), bias). A
        method whose layer is a sum of products overrides it (PaBT: Σ_j op(H_j(x), W_j))."""
        return op(x, self(w), bias)

    def activation_quantizer(self) -> "ActivationQuantizer | None":
        """The layer's activation quantizer, for a method that makes its input's bases itself in
        `product` (`binarizes_inputs`, PaBT; it reports the bits the summary shows); None: the run's
        (--act-bits)."""
        return None

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the method's own optimizer (e.g. APB's α, δ); the rest go to the main one."""
        return []

    def on_epoch_start(self, epoch: int, w: np.ndarray) -> None:
        """Schedule hook (freezing), called by the trainer at the start of every epoch."""

    def project_parameters(self) -> None:
        """Put the quantizer's parameters back in their domain; called after every optimizer step."""

    def project_weights(self, w: np.ndarray) -> None:
        """Put the layer's latent weights w back in their domain, in place (SBNN clamps them); called
        after every optimizer step."""

    def init_weights(self, w: np.ndarray) -> None:
        """Set the layer's initial latent weights w in place (SBNN's closed-form start); called once,
        when the layer is built, right after the quantizer."""

    @classmethod
    def loss_term(cls, quantizers: list["WeightQuantizer"], weights: list[Tensor], loss_value: float) -> Tensor | None:
        """A term added to the training loss (a graph node), or None. Called once per training step
        with all the run's quantizers of this method, their layers' latent weights (in the same order)
        and the loss value; a method-wide hook because a constraint may count over every layer (SBNN)."""
        return None

    def on_step(self, progress: float, w: np.ndarray) -> None:
        """Schedule hook called after every optimizer step with the fraction of training done, in
        (0, 1] (gradual pruning). A function of `progress` and the weights, so resume replays it."""

    def set_budget(self, bits_per_weight: float | None, fp_fraction: float | None, b_idx: int) -> None:
        """A per-layer budget (budget_scope "layer"): the quantizer sets its own target from it."""
        raise NotImplementedError(f"method {self.name!r} takes no per-layer budget")

    def count(self, w: np.ndarray) -> WeightCount:
        return WeightCount(quantized=0, full=int(w.size), sparse=False)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        """Scalars for the per-epoch metrics log."""
        return {}

    def mask(self, w: np.ndarray) -> np.ndarray:
        """True where a weight is binarized (none in full precision)."""
        return np.zeros(w.shape, dtype=bool)

    def band(self) -> tuple[float, float] | None:
        """(centre, half-width) of the band of weights that are binarized, for plots; None if none."""
        return None

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The packed form of latent weights w: named tensors and a JSON-able spec."""
        raise NotImplementedError(f"method {self.name!r} has no packed form")


class ActivationQuantizer(nn.Module):
    """Base: full-precision activations."""

    bits = 32

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
