"""Bit-widths over training (PaBT, a reconstruction: METHODS §2): from a run's metrics.jsonl, each
compressed layer's weight bit-width (live weight bases) and activation bit-width (live activation
bases) per epoch, and the model's bits/weight with the number of binary convolutions per layer.

`has_bitwidths(records)` says whether a log has them (the layers log `weight_bits` and `act_bits`);
`bitwidth_figure` returns the `matplotlib.figure.Figure`, `bitwidth_plot` writes it as a PNG. With
the run's summary.json the figure starts at epoch 0 from the configured M and N and is titled with
the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .plots import _epoch_axis, _save, read_metrics, run_title

KEYS = ("weight_bits", "act_bits")


def has_bitwidths(records: list[dict[str, Any]]) -> bool:
    """True when every epoch logs every compressed layer's weight and activation bit-widths."""
    return bool(records) and all(r.get("layers") and all(all(k in v for k in KEYS) for v in r["layers"].values())
                                 for r in records)


def bitwidth_series(records: list[dict[str, Any]], start: tuple[int, int] | None = None) -> dict[str, Any]:
    """{"epochs": [...], "layers": {name: {"weight_bits": [...], "act_bits": [...]}}, "bits_per_weight": [...],
    "binary_convs": [...] (mean per layer)}; with `start` = (M, N), an epoch-0 point first (bits/weight M,
    M·N binary convolutions per layer)."""
    if not has_bitwidths(records):
        raise ValueError("bitwidth_plot: the metrics log holds no per-layer weight_bits and act_bits (a PaBT run's)")
    names = list(records[0]["layers"])
    epochs = [int(r["epoch"]) for r in records]
    layers = {n: {k: [int(r["layers"][n][k]) for r in records] for k in KEYS} for n in names}
    bits = [float(r["bits_per_weight"]) for r in records]
    convs = [sum(r["layers"][n].get("binary_convs", 0) for n in names) / len(names) for r in records]
    if start is not None:
        m, n = start
        epochs = [0] + epochs
        for series in layers.values():
            series["weight_bits"].insert(0, m)
            series["act_bits"].insert(0, n)
        bits, convs = [float(m)] + bits, [float(m * n)] + convs
    return {"epochs": epochs, "layers": layers, "bits_per_weight": bits, "binary_convs": convs}


def bitwidth_figure(records: list[dict[str, Any]], summary: dict[str, Any] | None = None, title: str = ""):
    """The Figure of `bitwidth_plot` for already-read metrics records."""
    from matplotlib.figure import Figure

    config = (summary or {}).get("config") or {}
    start = ((int(config["pabt_weight_bases"]), int(config["pabt_act_bases"]))
             if {"pabt_weight_bases", "pabt_act_bases"} <= config.keys() else None)
    s = bitwidth_series(records, start)
    epochs = s["epochs"]
    fig = Figure(figsize=(13.0, 4.0), layout="constrained")
    ax_w, ax_a, ax_bits = fig.subplots(1, 3)
    count = len(s["layers"])
    for k, (name, series) in enumerate(s["layers"].items()):
        offset = 0.12 * (k / max(count - 1, 1) - 0.5)  # layers side by side instead of on one line
        for ax, key in ((ax_w, "weight_bits"), (ax_a, "act_bits")):
            ax.step(epochs, [v + offset for v in series[key]], where="post", lw=1.2, alpha=0.8,
                    label=name if count <= 8 else None)
    top = max(max(max(v[k]) for v in s["layers"].values()) for k in KEYS)
    for ax, what in ((ax_w, "weight"), (ax_a, "activation")):
        ax.set(ylabel=f"{what} bit-width (live {what} bases)", title=f"{what} bit-width per layer",
               ylim=(0.5, top + 0.5), yticks=range(1, top + 1))
        _epoch_axis(ax, epochs)
        if count <= 8:
            ax.legend(loc="upper right", fontsize=7)
    ax_bits.plot(epochs, s["bits_per_weight"], color="tab:green", marker="D", ms=5, label="bits/weight (model)")
    ax_bits.plot(epochs, s["binary_convs"], color="tab:purple", marker="o", ms=5, ls="--",
                 label="binary convolutions per layer (mean)")
    ax_bits.set(title="memory and work", ylim=(0, max(s["binary_convs"] + s["bits_per_weight"]) + 0.5))
    _epoch_axis(ax_bits, epochs)
    ax_bits.legend(loc="upper right", fontsize=8)
    full = run_title(summary, title) if summary else title
    fig.suptitle((full + "\n" if full else "") + "PaBT (reconstruction): bit-widths over training")
    return fig


def bitwidth_plot(metrics_path: str | Path, out_png: str | Path, summary: dict[str, Any] | None = None,
                  title: str = "") -> Path:
    """Write the bit-width figure of a run's metrics.jsonl (a PaBT run's) as a PNG; returns its path."""
    return _save(bitwidth_figure(read_metrics(metrics_path), summary, title), out_png)
