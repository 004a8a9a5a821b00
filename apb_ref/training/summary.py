"""Memory accounting (METHODS §1.7, the APB paper's formula) and a Larq-style summary table.

    model bits = 32·P_fp + P_csr·(32 + b_idx) + P_bin

P_bin: binarized weights of compressed layers (1 bit each); P_csr: their full-precision weights,
stored sparsely as a float32 value plus a b_idx-bit index; b_idx = ⌊log2(max_el)⌋ + 1 with max_el
the largest tensor in the model's state dict; P_fp: every other state entry (full-precision layers,
BatchNorm parameters and running statistics, biases). Quantizer internals (α, δ, margin, masks)
are not counted, as in the released code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import nn
from ..autograd import Tensor, no_grad

QUANTIZER_STATE = ("weight_quantizer.", "act_quantizer.")


@dataclass
class LayerRow:
    name: str
    shape: tuple[int, ...]
    compressed: bool
    binary: int  # 1-bit weights
    full: int  # full-precision weights
    bits: int  # storage by the paper's formula
    macs: int
    binary_macs: int  # MACs whose weight is binary
    act_bits: int

    @property
    def weights(self) -> int:
        return self.binary + self.full

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.weights


@dataclass
class ModelSummary:
    layers: list[LayerRow]
    other_fp_values: int  # BatchNorm, biases, ... counted at 32 bits
    b_idx: int
    packed_bytes: int | None = None

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
    def binary_mac_fraction(self) -> float:
        total = sum(r.macs for r in self.layers)
        return sum(r.binary_macs for r in self.layers) / total if total else 0.0

    def totals(self) -> dict[str, Any]:
        return {"model_bits": self.model_bits, "model_kib": self.model_bits / 8 / 1024,
                "float32_kib": self.float32_bits / 8 / 1024, "compression_ratio": self.float32_bits / self.model_bits,
                "bits_per_weight": self.bits_per_weight, "fp_fraction": self.fp_fraction,
                "binary_mac_fraction": self.binary_mac_fraction, "b_idx": self.b_idx,
                "compressed_weights": self.compressed_weights, "packed_bytes": self.packed_bytes}

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "other_fp_values": self.other_fp_values, **self.totals()}

    def table(self) -> str:
        head = ["layer", "weight shape", "1-bit", "full prec.", "FP %", "bits/w", "memory kB", "act bits", "MACs 1-bit W", "MACs FP W"]
        rows = [[r.name, "x".join(map(str, r.shape)), f"{r.binary:,}", f"{r.full:,}", f"{100 * r.full / r.weights:.2f}",
                 f"{r.bits_per_weight:.3f}", f"{r.bits / 8000:.2f}", str(r.act_bits),
                 f"{r.binary_macs:,}", f"{r.macs - r.binary_macs:,}"] for r in self.layers]
        rows.append(["other (BN, biases)", "", "0", f"{self.other_fp_values:,}", "100.00", "32.000",
                     f"{32 * self.other_fp_values / 8000:.2f}", "", "", ""])
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [line(head), "-" * len(line(head))] + [line(r) for r in rows] + ["-" * len(line(head))]
        t = self.totals()
        out.append(f"model size (paper formula, b_idx={self.b_idx}): {t['model_kib']:.2f} KiB = {self.model_bits:,} bits")
        if self.packed_bytes is not None:
            out.append(f"packed file: {self.packed_bytes / 1024:.2f} KiB = {self.packed_bytes:,} bytes")
        out.append(f"float32 equivalent: {t['float32_kib']:.2f} KiB   compression ratio: {t['compression_ratio']:.2f}x")
        out.append(f"compressed layers: {self.compressed_weights:,} weights, {self.bits_per_weight:.3f} bits/weight, "
                   f"{100 * self.fp_fraction:.3f}% full precision")
        out.append(f"binarized MACs: {100 * self.binary_mac_fraction:.2f}% of all")
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


def summarize(model: nn.Module, input_shape: tuple[int, int, int], packed_bytes: int | None = None) -> ModelSummary:
    """Per-layer and total storage and MACs of `model` for one input of `input_shape` (C, H, W)."""
    b_idx = index_bits(model)
    positions = _output_sizes(model, input_shape)
    rows, counted = [], set()
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.data
        quantizer = getattr(m, "weight_quantizer", None)
        count = quantizer.count(w) if quantizer is not None else None
        compressed = count is not None and count.binary + count.full == w.size and (count.binary > 0 or count.sparse)
        if count is None or not compressed:
            binary, full, bits = 0, int(w.size), 32 * int(w.size)
        else:
            binary, full = count.binary, count.full
            bits = binary + full * (32 + b_idx if count.sparse else 32)
        macs = int(w.size) * positions.get(name, 1)
        act = getattr(m, "act_quantizer", None)
        rows.append(LayerRow(name, tuple(w.shape), compressed, binary, full, bits, macs,
                             macs * binary // max(int(w.size), 1), getattr(act, "bits", 32)))
        counted.add(f"{name}.weight" if name else "weight")
    other = sum(int(np.size(v)) for k, v in model.state_dict().items()
                if k not in counted and not any(q in k for q in QUANTIZER_STATE))
    return ModelSummary(rows, other, b_idx, packed_bytes)
