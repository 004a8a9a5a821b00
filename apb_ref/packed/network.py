"""A packed file made runnable: the model's architecture rebuilt from the header's build arguments
and every layer replaced by its packed module (`layers.PACKED_LAYERS`, chosen through the method
registry by the spec's "kind"); BatchNorms after 1- and 2-bit packed convs are folded into them.
Everything else (pooling, shortcuts, activations) is the same functional code as training, without
a graph."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import nn
from ..autograd import Tensor, no_grad
from ..models import build
from ..quant import METHODS
from ..training.progress import Progress
from .format import PackedModel, load_packed
from .fused import fuse_blocks
from .layers import FOLDED, PACKED_LAYERS, Affine, PackedConv2d, PackedPaBT, PackedSBNN
from .schema import evaluation_normalization, validate_packed


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    module = model
    for part in path:
        module = module._modules[part]
    return module, leaf


def _conv_bn_pairs(model: nn.Module):
    """(parent, conv name, BatchNorm name) for each BatchNorm that reads only a conv's output: the two
    are neighbours in a Sequential, or the parent module lists them in `conv_bn_pairs`."""
    for _, module in model.named_modules():
        names = list(module._modules)
        pairs = zip(names, names[1:]) if isinstance(module, nn.Sequential) else getattr(module, "conv_bn_pairs", ())
        for conv, bn in pairs:
            yield module, conv, bn


def fold_batchnorms(model: nn.Module) -> None:
    """Fold each BatchNorm (an `Affine`) that follows a 1- or 2-bit packed conv into it and put an
    identity in its place: one pass over the map less per layer."""
    for parent, conv_name, bn_name in list(_conv_bn_pairs(model)):
        conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
        if isinstance(conv, (PackedConv2d, PackedSBNN, PackedPaBT)) and conv.packed_input and isinstance(bn, Affine):
            conv.fold(bn.scale, bn.shift)
            setattr(parent, bn_name, nn.Lambda(lambda x: x, FOLDED))


def _layer_name(layer: str, kind: str) -> str:
    """The packed module that runs a layer of this kind: the export's own kinds, or the method's."""
    if kind in PACKED_LAYERS:
        return kind
    if kind in METHODS and METHODS[kind].packed_layer is not None:
        return METHODS[kind].packed_layer
    raise ValueError(f"packed model: layer {layer} has kind {kind!r}, which this apb-ref does not run "
                     f"(known: {sorted(PACKED_LAYERS)} and the methods {sorted(k for k, m in METHODS.items() if m.packed_layer)})")


def build_packed(packed: PackedModel, fold_batchnorm: bool = True) -> nn.Module:
    """The model's architecture with every layer replaced by its packed counterpart (and, with
    `fold_batchnorm`, the BatchNorms after 1- and 2-bit packed convs folded into them, and then a
    ResNet-20's 1-bit blocks fused: `fused.py`)."""
    args = validate_packed(packed)  # refuses an inconsistent file before anything is built
    model = build(**args)
    t = packed.tensors
    for name, spec in packed.header["layers"].items():
        parent, leaf = _parent(model, name)
        old = parent._modules.get(leaf)
        if old is None:
            raise ValueError(f"packed model: layer {name} does not exist in a {args.get('name')} model")
        setattr(parent, leaf, PACKED_LAYERS[_layer_name(name, spec["kind"])](name, spec, t, old))
    if fold_batchnorm:
        fold_batchnorms(model)
        fuse_blocks(model)
    return model.eval()


class PackedNetwork:
    """A packed file made runnable: `predict_logits(images)` for normalized NCHW float32 images."""

    def __init__(self, packed: PackedModel, fold_batchnorm: bool = True):
        self.header = packed.header
        self.source = getattr(packed, "source", "<memory>")
        self.model = build_packed(packed, fold_batchnorm)

    @classmethod
    def load(cls, path: str | Path) -> "PackedNetwork":
        return cls(load_packed(path))

    def logits(self, x: np.ndarray, batch_size: int = 256, progress: str | None = None) -> np.ndarray:
        """Logits of normalized NCHW float32 images; with a `progress` label, a progress bar on stderr."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"logits: batch_size must be an integer >= 1, got {batch_size!r}")
        if len(x) == 0:
            raise ValueError("logits: x holds no images")
        def forward(xb):
            with no_grad():
                return self.model(Tensor(np.ascontiguousarray(xb, dtype=np.float32))).data
        if len(x) <= batch_size and progress is None:  # one batch, no bar: a deployed model's request, the short way
            return forward(x)
        outs = []
        bar = Progress(-(-len(x) // batch_size), progress or "", enabled=progress is not None)
        for i in range(0, len(x), batch_size):
            outs.append(forward(x[i:i + batch_size]))
            bar.update(len(outs[-1]))
        bar.close()
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256, progress: str | None = None) -> dict[str, float]:
        """Accuracy and images/s on images in [0, 1] (normalized here with the stored statistics)."""
        mean, std = evaluation_normalization(self.header, self.source)
        x = (x - mean) / std
        start = time.perf_counter()
        logits = self.logits(x, batch_size, progress)
        seconds = time.perf_counter() - start
        return {"accuracy": float((logits.argmax(axis=1) == y).mean()), "images_per_second": len(y) / seconds,
                "seconds": seconds, "images": int(len(y))}
