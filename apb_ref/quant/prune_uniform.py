"""Pruning + k-bit quantization of the survivors (Han et al., "Deep Compression", ICLR 2016, with the
gradual schedule of Zhu & Gupta 2017 and LSQ steps; METHODS §4.4): the "pruning + quantization"
baseline of APB's comparison.

    q_i = m_i·s·(j_i + ½)        m from `prune` (cubic schedule, magnitudes), j and s from `uniform`

The gradient is the composition of the two: ∂L/∂w_i = m_i·inside_i·g_i, and s sees the survivors only.
While the schedule prunes, the survivors are ever larger weights, so s is refitted to them (the
least-squares step of `uniform.best_step` over the kept weights) whenever the number kept has fallen
by 5 % since the last fit, and once more when the mask freezes; from then on LSQ trains it. Without
the refit s stays fitted to the dense layer and most survivors end up clipped at ±3s/2.
A budget of B bits/weight gives the density d = B/(k + b_idx) (each survivor costs a k-bit code
and a b_idx-bit index); there are no full-precision weights, so an --fp-fraction budget is refused.

Packed form: CSR row pointers and column indices, the survivors' k-bit codes c = j + 2^(k−1) packed
k planes × ⌈nnz/8⌉ bytes, and s/2 per row (or per layer): value = (s/2)·(2c − 2^k + 1). The packed
layer decodes the values once when the file loads and runs the same sparse kernels as `prune`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..autograd import Tensor
from .base import WeightCount
from .packing import csr_rows, pack_codes
from .prune import Prune, PruneOptions, prune_mask
from .uniform import LearnedStep, UniformOptions, best_step, level_index, uniform_quantize


@dataclass(frozen=True)
class PruneUniformOptions(PruneOptions, UniformOptions):
    pass


class PruneUniform(LearnedStep, Prune):
    name = "prune_uniform"
    description = "magnitude pruning + k-bit uniform survivors (Deep Compression style; METHODS §4.4)"
    Options = PruneUniformOptions
    takes_fp_fraction = False  # its survivors are k-bit, not full precision

    def __init__(self, w: np.ndarray, options: PruneUniformOptions | None = None):
        super().__init__(w, options)
        self.init_step(w)
        self.value_bits = self.bits
        self.register_buffer("fitted_count", np.asarray(w.size, dtype=np.int64))  # kept at the last refit

    REFIT = 0.95  # refit s when the kept count falls below this fraction of the count at the last fit

    def on_step(self, progress: float, w: np.ndarray) -> None:
        was_done = bool(self.schedule_done)
        super().on_step(progress, w)
        kept = int(self.keep.sum())
        if not was_done and (kept < self.REFIT * int(self.fitted_count) or bool(self.schedule_done)):
            self.step.data[...] = best_step(w, self.bits, self.per_channel, self.keep)
            self.fitted_count[...] = kept

    def forward(self, w: Tensor) -> Tensor:
        return prune_mask(uniform_quantize(w, self.step, self.bits), self.keep)

    def count(self, w: np.ndarray) -> WeightCount:
        kept = int(self.keep.sum())
        return WeightCount(quantized=kept, full=0, sparse=False, pruned=int(w.size) - kept,
                           quantized_bits=self.bits, quantized_sparse=True)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"density": float(self.keep.mean()), "step": float(self.step.data.mean())}

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        o = w.shape[0]
        keep = self.keep.reshape(o, -1)
        csr = csr_rows(w.reshape(o, -1), keep)
        codes = level_index(w, self.step.data, self.bits).reshape(o, -1)[keep] + 2 ** (self.bits - 1)  # row-major, as CSR
        tensors = {"csr_indptr": csr["csr_indptr"], "csr_indices": csr["csr_indices"],
                   "csr_codes": pack_codes(codes.astype(np.int64), self.bits), "alpha": self.steps(w) / np.float32(2)}
        return tensors, {"nnz": int(keep.sum()), "code_bits": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, density={float(self.keep.mean()):.4g}"


PruneUniform.op_specs = ()  # its ops are prune_mask's and uniform_quantize's, specified in their files
