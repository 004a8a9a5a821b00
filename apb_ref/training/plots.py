"""Matplotlib figures, written as PNG files (Agg backend: no display needed)."""
from __future__ import annotations

import json
from pathlib import Path

from ..quant import quantized_layers


def training_curves(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train and test, from a metrics.jsonl log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    if not records:
        raise ValueError(f"training_curves: {metrics_path} holds no epochs")
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in records], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in records], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def band_layers(model) -> dict:
    """name -> layer for every compressed layer whose method binarizes a band of weights (APB)."""
    return {n: m for n, m in quantized_layers(model) if m.weight_quantizer.band() is not None}


def band_histogram(model, out_png: str | Path, layer: str | None = None) -> Path:
    """One layer's latent-weight histogram for a method with a binarization band (APB): the band
    [α−δ, α+δ] (and its mirror) shaded, the full-precision weights in a separate colour. Default
    layer: the largest."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = band_layers(model)
    if not layers:
        raise ValueError("band_histogram: the model has no layer with a binarization band")
    if layer is None:
        layer = max(layers, key=lambda n: layers[n].weight.size)
    if layer not in layers:
        raise ValueError(f"band_histogram: no banded layer named {layer!r}; choose from {sorted(layers)}")
    m = layers[layer]
    q, w = m.weight_quantizer, m.weight.data.ravel()
    mask = q.mask(m.weight.data).ravel()
    alpha, delta = q.band()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bins = np.linspace(w.min(), w.max(), 121)
    ax.hist(w[mask], bins=bins, color="tab:blue", alpha=0.8, label=f"binarized to ±α ({mask.sum():,})")
    ax.hist(w[~mask], bins=bins, color="tab:red", alpha=0.9, label=f"full precision ({(~mask).sum():,})")
    for sign in (-1, 1):
        lo, hi = sorted((sign * max(alpha - delta, 0.0), sign * (alpha + delta)))
        ax.axvspan(lo, hi, color="tab:blue", alpha=0.08)
        ax.axvline(sign * alpha, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set(xlabel="latent weight", ylabel="count",
           title=f"{layer}: α={alpha:.3g}, band α±δ (δ={delta:.3g}), {100 * (~mask).mean():.2f}% full precision")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
