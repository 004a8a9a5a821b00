"""Memory accounting (METHODS §1.7, the APB paper's formula) and a Larq-style summary table.

    model bits = 32·P_fp + P_csr·(32 + b_idx) + P_bin

P_bin: binarized weights of compressed layers (1 bit each); P_csr: their full-precision weights,
stored sparsely as a float32 value plus a b_idx-bit index; b_idx = ⌊log2(max_el)⌋ + 1 with max_el
the largest tensor in the model's state dict; P_fp: every other state entry (full-precision layers,
BatchNorm parameters and running statistics, biases). Quantizer internals (α, δ, margin, masks)
are not counted, as in the released code.

The same formula covers the baselines through each quantizer's `WeightCount` (`WeightCount.bits`):
k-bit weights cost k bits (P_bin generalised), pruned weights nothing, and a sparse group of k-bit
survivors k + b_idx bits each. The packed file's size is reported beside it (`packed_bytes`), and
so is the entropy bound of methods that report one (`WeightCount.entropy_bits`; SBNN: Σ_l N_l·H(p_l)).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import nn
from ..autograd import Tensor, no_grad
from ..quant.base import WeightCount

QUANTIZER_STATE = ("weight_quantizer.", "act_quantizer.")


@dataclass
class LayerRow:
    name: str
    shape: tuple[int, ...]
    compressed: bool
    quantized: int  # weights stored at quantized_bits each (1: binary)
    full: int  # full-precision weights
    pruned: int  # weights stored as nothing
    quantized_bits: int
    bits: int  # storage by the paper's formula
    macs: int
    quantized_macs: int  # MACs whose weight is quantized (low-bit)
    act_bits: int
    stored_bytes: int | None = None  # the layer's tensors in the packed file, when known
    entropy_bits: float | None = None  # the entropy bound of its quantized weights, when the method reports one

    @property
    def weights(self) -> int:
        return self.quantized + self.full + self.pruned

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.weights

    @property
    def pruned_macs(self) -> int:
        """MACs skipped because their weight is pruned."""
        return self.macs * self.pruned // max(self.weights, 1)


@dataclass
class ModelSummary:
    layers: list[LayerRow]
    other_fp_values: int  # BatchNorm, biases, ... counted at 32 bits
    b_idx: int
    packed_bytes: int | None = None  # the packed file's size

    @property
    def model_bits(self) -> int:
        return sum(r.bits for r in self.layers) + 32 * self.other_fp_values

    @property
    def float32_bits(self) -> int:
        return 32 * (sum(r.weights for r in self.layers) + self.other_fp_values)

    @property
    def compressed_weights(self) -> int:
        return sum(r.weights for r in self.layers if r.compressed)

    @property
    def fp_fraction(self) -> float:
        """Full-precision share of the weights in compressed layers."""
        n = self.compressed_weights
        return sum(r.full for r in self.layers if r.compressed) / n if n else 1.0

    @property
    def bits_per_weight(self) -> float:
        """Storage per weight of the compressed layers (the budget's unit)."""
        n = self.compressed_weights
        return sum(r.bits for r in self.layers if r.compressed) / n if n else 32.0

    @property
    def packed_bits_per_weight(self) -> float | None:
        """What the packed file stores per weight of the compressed layers (their tensors' bits, scales,
        row pointers and padding included), when the layers' stored sizes are known."""
        rows = [r for r in self.layers if r.compressed]
        if not rows or any(r.stored_bytes is None for r in rows):
            return None
        return 8 * sum(r.stored_bytes for r in rows) / self.compressed_weights

    @property
    def entropy_bits_per_weight(self) -> float | None:
        """The entropy bound per weight of the compressed layers (SBNN: Σ_l N_l·H(p_l) / Σ_l N_l), when
        every compressed layer reports one."""
        rows = [r for r in self.layers if r.compressed]
        if not rows or any(r.entropy_bits is None for r in rows):
            return None
        return sum(r.entropy_bits for r in rows) / self.compressed_weights

    @property
    def quantized_mac_fraction(self) -> float:
        total = sum(r.macs for r in self.layers)
        return sum(r.quantized_macs for r in self.layers) / total if total else 0.0

    def totals(self) -> dict[str, Any]:
        return {"model_bits": self.model_bits, "model_kib": self.model_bits / 8 / 1024,
                "float32_kib": self.float32_bits / 8 / 1024, "compression_ratio": self.float32_bits / self.model_bits,
                "bits_per_weight": self.bits_per_weight, "fp_fraction": self.fp_fraction,
                "quantized_mac_fraction": self.quantized_mac_fraction, "b_idx": self.b_idx,
                "compressed_weights": self.compressed_weights, "packed_bytes": self.packed_bytes,
                "packed_bits_per_weight": self.packed_bits_per_weight,
                "entropy_bits_per_weight": self.entropy_bits_per_weight}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "other_fp_values": self.other_fp_values, **self.totals()}

    def table(self) -> str:
        head = ["layer", "weight shape", "low-bit (bits)", "full prec.", "pruned", "FP %", "bits/w", "memory kB",
                "act bits", "MACs low-bit W", "MACs FP W"]
        rows = [[r.name, "x".join(map(str, r.shape)), f"{r.quantized:,} ({r.quantized_bits})" if r.quantized else "0", f"{r.full:,}",
                 f"{r.pruned:,}", f"{100 * r.full / r.weights:.2f}", f"{r.bits_per_weight:.3f}", f"{r.bits / 8000:.2f}",
                 str(r.act_bits), f"{r.quantized_macs:,}", f"{r.macs - r.quantized_macs - r.pruned_macs:,}"]
                for r in self.layers]
        rows.append(["other (BN, biases)", "", "0", f"{self.other_fp_values:,}", "0", "100.00", "32.000",
                     f"{32 * self.other_fp_values / 8000:.2f}", "", "", ""])
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [line(head), "-" * len(line(head))] + [line(r) for r in rows] + ["-" * len(line(head))]
        t = self.totals()
        out.append(f"model size (paper formula, b_idx={self.b_idx}): {t['model_kib']:.2f} KiB = {self.model_bits:,} bits")
        if self.packed_bytes is not None:
            out.append(f"packed file: {self.packed_bytes / 1024:.2f} KiB = {self.packed_bytes:,} bytes")
        if self.packed_bits_per_weight is not None:
            out.append(f"compressed layers in the packed file: {self.packed_bits_per_weight:.3f} bits/weight "
                       "(values, indices at their stored width, scales)")
        if self.entropy_bits_per_weight is not None:
            out.append(f"compressed layers' entropy bound: {self.entropy_bits_per_weight:.3f} bits/weight "
                       "(each layer's H(p), p its fraction of one of the two values)")
        out.append(f"float32 equivalent: {t['float32_kib']:.2f} KiB   compression ratio: {t['compression_ratio']:.2f}x")
        out.append(f"compressed layers: {self.compressed_weights:,} weights, {self.bits_per_weight:.3f} bits/weight, "
                   f"{100 * self.fp_fraction:.3f}% full precision")
        out.append(f"MACs with low-bit weights: {100 * self.quantized_mac_fraction:.2f}% of all")
        return "\n".join(out)


def index_bits(model: nn.Module) -> int:
    max_el = max(int(np.size(v)) for v in model.state_dict().values())
    return int(math.floor(math.log2(max_el))) + 1


def _output_sizes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Output positions per conv/linear layer, from one traced forward pass of a single image."""
    sizes: dict[str, int] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def tracing(name, module):
        original = type(module).forward

        def forward(x):
            y = original(module, x)
            sizes[name] = int(np.prod(y.shape[2:])) if y.ndim == 4 else 1
            return y
        return forward

    was_training = model.training
    try:
        for name, m in layers:
            object.__setattr__(m, "forward", tracing(name, m))
        model.eval()
        with no_grad():
            model(Tensor(np.zeros((1,) + tuple(input_shape), np.float32)))
    finally:
        for _, m in layers:
            m.__dict__.pop("forward", None)
        model.train(was_training)
    return sizes


def summarize(model: nn.Module, input_shape: tuple[int, int, int], packed_bytes: int | None = None,
              layer_bytes: dict[str, int] | None = None) -> ModelSummary:
    """Per-layer and total storage and MACs of `model` for one input of `input_shape` (C, H, W);
    with the packed file's size and each layer's bytes in it (`packed.packed_memory`), those too."""
    b_idx = index_bits(model)
    positions = _output_sizes(model, input_shape)
    rows, counted = [], set()
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.data
        quantizer = getattr(m, "weight_quantizer", None)
        count = quantizer.count(w) if quantizer is not None else None
        if count is not None and count.total != w.size:
            raise ValueError(f"summarize: {name}'s quantizer counts {count.total} weights, the layer has {w.size}")
        compressed = count is not None and (count.quantized > 0 or count.sparse or count.pruned > 0)
        if not compressed:
            count = WeightCount(quantized=0, full=int(w.size), sparse=False)
        macs = int(w.size) * positions.get(name, 1)
        act = getattr(m, "act_quantizer", None)
        rows.append(LayerRow(name, tuple(w.shape), compressed, count.quantized, count.full, count.pruned,
                             count.quantized_bits, count.bits(b_idx), macs,
                             macs * count.quantized // max(int(w.size), 1), getattr(act, "bits", 32),
                             None if layer_bytes is None else layer_bytes.get(name), count.entropy_bits))
        counted.add(f"{name}.weight" if name else "weight")
    other = sum(int(np.size(v)) for k, v in model.state_dict().items()
                if k not in counted and not any(q in k for q in QUANTIZER_STATE))
    return ModelSummary(rows, other, b_idx, packed_bytes)
