"""Trained model → packed model (`format.PackedModel`): each compressed layer asks its weight
quantizer for its packed form (`WeightQuantizer.pack`: for APB W_q = α·B + S as sign bits, α and a CSR
residual, METHODS §1.8; for BNN sign bits and α per channel; for k-bit uniform k sign planes and s/2;
for pruning CSR with float32 values or k-bit codes; for SBNN α, β and the Golomb-Rice coded positions of
the minority value, §3.6), BatchNorm is folded into a per-channel scale and
shift, and every other conv/linear is stored as float32. The spec's "kind" names the method, whose
`packed_layer` runs it (apb_ref.packed.layers). `packed_memory` gives the file's size and each layer's
bytes in it, for the summary."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn
from ..quant import QuantConv2d, QuantLinear
from .format import PackedModel


def _pack_compressed(prefix: str, layer, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The layer's packed form from its quantizer, plus what every packed layer needs."""
    q = layer.weight_quantizer
    w = layer.weight.data
    packed, spec = q.pack(w)
    tensors.update({f"{prefix}.{name}": a for name, a in packed.items()})
    if layer.bias is not None:
        tensors[f"{prefix}.bias"] = layer.bias.data.astype(np.float32)
    spec = {"kind": q.name, "weight_shape": list(w.shape), "k": int(w[0].size),
            "act_bits": int(layer.act_quantizer.bits), **spec}
    if isinstance(layer, nn.Conv2d):
        spec.update(stride=int(layer.stride), padding=int(layer.padding))
    return spec


def export_model(model: nn.Module, build_args: dict[str, Any], normalization: dict[str, Any] | None = None) -> PackedModel:
    """Pack every layer of a trained model (in eval form) for `infer.PackedNetwork`."""
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer.packed_layer is not None:
            layers[name] = _pack_compressed(name, m, tensors)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            # Plain layers, and quantized layers of a method without a packed form: their effective weights.
            w = m.weight_quantizer(m.weight).data if hasattr(m, "weight_quantizer") else m.weight.data
            tensors[f"{name}.weight"] = np.asarray(w, np.float32)
            if m.bias is not None:
                tensors[f"{name}.bias"] = m.bias.data.astype(np.float32)
            act = getattr(m, "act_quantizer", None)
            layers[name] = {"kind": "float", "act_bits": int(getattr(act, "bits", 32))}
        elif isinstance(m, (nn.ChannelShift, nn.RPReLU)):  # learned per-channel vectors, stored as they are
            names = [n for n, _ in m.named_parameters()]
            for n, p in m.named_parameters():
                tensors[f"{name}.{n}"] = np.asarray(p.data, np.float32)
            layers[name] = {"kind": "params", "params": names}
        elif isinstance(m, nn.BatchNorm):
            scale = (m.weight.data if m.weight is not None else 1.0) / np.sqrt(m.running_var + m.eps)
            shift = (m.bias.data if m.bias is not None else 0.0) - m.running_mean * scale
            tensors[f"{name}.scale"] = scale.astype(np.float32)
            tensors[f"{name}.shift"] = shift.astype(np.float32)
            layers[name] = {"kind": "affine"}
    for name, a in tensors.items():  # a diverged model must not become a file that "works"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"export: {name} holds NaN or infinite values; the model diverged "
                             "(export a checkpoint from before, e.g. best.ckpt)")
    header = {"format": "apb-ref packed model", "build": build_args, "layers": layers,
              "normalization": normalization or {}}
    return PackedModel(header, tensors)


def packed_size(model: nn.Module, build_args: dict[str, Any], normalization: dict[str, Any] | None = None) -> int:
    """Bytes the packed file of `model` takes on disk (serialised in memory: exact)."""
    return len(export_model(model, build_args, normalization).to_bytes())


def layer_bytes(packed: PackedModel) -> dict[str, int]:
    """Bytes of each layer's tensors in the file (weights or sign planes, indices, codes, scales, bias):
    what the summary reports as each layer's stored size."""
    out: dict[str, int] = {}
    for name, a in packed.tensors.items():
        layer = name.rsplit(".", 1)[0]
        out[layer] = out.get(layer, 0) + int(a.nbytes)
    return out


def packed_memory(model: nn.Module, build_args: dict[str, Any],
                  normalization: dict[str, Any] | None = None) -> dict[str, Any]:
    """The packed file's size and each layer's share of it: `summarize(model, ..., **packed_memory(...))`."""
    packed = export_model(model, build_args, normalization)
    return {"packed_bytes": len(packed.to_bytes()), "layer_bytes": layer_bytes(packed)}
