"""Matplotlib figures, written as PNG files (Agg rendering: no display needed).

Each PNG has a twin that returns the `matplotlib.figure.Figure` instead of writing it
(`curves_figure`, `band_figure`), so tests and notebooks can look inside. Figures are made with
`matplotlib.figure.Figure` directly, never through pyplot: no global state, no backend switch.

- `training_curves`: loss and accuracy per epoch (train and test) and, for a compressed run, the
  full-precision fraction and bits/weight per epoch; titled with the run (`run_title`).
- `band_histogram`: latent-weight histograms of every layer whose method binarizes a band of
  weights (APB: `band()` and `mask(w)`), one small panel per layer, or one chosen layer.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..quant import METHODS, quantized_layers

DPI = 110
BINARY_COLOR, FP_COLOR = "tab:blue", "tab:red"
TRAIN_STYLE = dict(color="tab:blue", marker="o", ls="-", label="train")
TEST_STYLE = dict(color="tab:orange", marker="s", ls="-", label="test")
VAL_STYLE = dict(color="tab:purple", marker="^", ls="--", label="validation")


def _save(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=DPI)
    return out_png


# --- training curves -----------------------------------------------------------------------------

def read_metrics(metrics_path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl log, one per epoch."""
    records = [json.loads(l) for l in Path(metrics_path).read_text().splitlines() if l.strip()]
    if not records:
        raise ValueError(f"training_curves: {metrics_path} holds no epochs")
    return records


def bits_text(bits_per_weight: float, method: str | None = None) -> str:
    """'1.60 bits/weight'; '32 bits/weight' for full precision."""
    if method == "fp" or abs(bits_per_weight - 32.0) < 5e-3:
        return "32 bits/weight"
    return f"{bits_per_weight:.2f} bits/weight"


def act_text(act_bits: int) -> str:
    """'1-bit activations', or 'float32 activations' for 32."""
    return "float32 activations" if int(act_bits) >= 32 else f"{int(act_bits)}-bit activations"


def run_title(summary: dict[str, Any], title: str = "") -> str:
    """Two lines naming a run from its summary.json: what was trained and how, then how it ended.
    A `title` not already said by the first line is put above it."""
    what = f"{summary['model']} on {summary['dataset']}"
    how = [summary["method"]]
    if summary.get("bits_per_weight") is not None:
        how.append(bits_text(float(summary["bits_per_weight"]), summary["method"]))
    method = METHODS.get(summary.get("method"))
    if method is not None and method.binarizes_inputs:  # its layers make their own activation bases
        how.append("activations in the method's own binary bases")
    elif summary.get("act_bits") is not None:
        how.append(act_text(summary["act_bits"]))
    first = f"{what}: {', '.join(how)}"
    second = [f"seed {summary['seed']}"] if summary.get("seed") is not None else []
    if summary.get("test_accuracy") is not None:
        acc = f"final test accuracy {100 * float(summary['test_accuracy']):.2f}%"
        if summary.get("epochs") is not None:
            acc += f" after {summary['epochs']} epoch{'s' if summary['epochs'] != 1 else ''}"
        second.append(acc)
    lines = ([title] if title and title not in first else []) + [first] + ([" · ".join(second)] if second else [])
    return "\n".join(lines)


def _epoch_axis(ax, epochs: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1, steps=[1, 2, 5, 10]))
    lo, hi = min(epochs), max(epochs)
    pad = max(0.5, 0.03 * (hi - lo))  # a lone epoch sits mid-axis with one tick under it
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def curves_figure(records: list[dict[str, Any]], title: str = "", summary: dict[str, Any] | None = None):
    """The Figure of `training_curves` for already-read metrics records."""
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in records]
    compressed = all("fp_fraction" in r and "bits_per_weight" in r for r in records)
    n = 3 if compressed else 2
    fig = Figure(figsize=(4.3 * n, 4.0), layout="constrained")
    axes = fig.subplots(1, n)
    ms = 6 if len(epochs) <= 30 else 0  # markers show a lone epoch; long runs read better as plain lines
    ax_loss, ax_acc = axes[0], axes[1]

    train_loss = [r["train_loss"] for r in records]
    test_loss = [r["test_loss"] for r in records]
    ax_loss.plot(epochs, train_loss, **TRAIN_STYLE, ms=ms)
    ax_loss.plot(epochs, test_loss, **TEST_STYLE, ms=ms)
    validated = all("val_loss" in r for r in records)
    val_loss = [r["val_loss"] for r in records] if validated else []
    if validated:
        ax_loss.plot(epochs, val_loss, **VAL_STYLE, ms=ms)
    finite = [v for v in train_loss + test_loss + val_loss if math.isfinite(v) and v > 0]
    log_loss = bool(finite) and max(finite) / min(finite) > 20  # a first-epoch spike would flatten the rest
    if log_loss:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ...
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 20, not 2×10¹
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set(ylabel="cross-entropy (nats" + (", log scale)" if log_loss else ")"), title="loss")

    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], **TRAIN_STYLE, ms=ms)
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in records], **TEST_STYLE, ms=ms)
    if validated:
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in records], **VAL_STYLE, ms=ms)
    best = (summary or {}).get("best_epoch")
    if best is not None and best in epochs:  # where best.ckpt was taken
        ax_acc.axvline(best, color="0.5", lw=0.9, ls=":", label=f"best.ckpt (epoch {best})")
    ax_acc.set(ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, epochs)
        ax.legend(loc="best")

    if compressed:
        ax_fp = axes[2]
        ax_bits = ax_fp.twinx()
        fp_line, = ax_fp.plot(epochs, [100 * r["fp_fraction"] for r in records], color=FP_COLOR, marker="o", ms=ms,
                              label="full-precision weights (%)")
        bits_line, = ax_bits.plot(epochs, [r["bits_per_weight"] for r in records], color="tab:green", marker="D", ms=ms,
                                  ls="--", label="bits/weight")
        handles = [fp_line, bits_line]
        budget = (summary or {}).get("budget") or {}
        if budget.get("bits_per_weight") is not None:
            handles.append(ax_bits.axhline(budget["bits_per_weight"], color="tab:green", lw=0.9, ls=":",
                                           label=f"budget {budget['bits_per_weight']:.2f} bits/weight"))
        ax_fp.set_ylabel("full-precision weights (%)", color=FP_COLOR)
        ax_fp.tick_params(axis="y", colors=FP_COLOR)
        ax_bits.set_ylabel("bits/weight (compressed layers)", color="tab:green")
        ax_bits.tick_params(axis="y", colors="tab:green")
        # headroom: the top third of the panel is kept free for the legend
        fp_top = max(100 * r["fp_fraction"] for r in records)
        ax_fp.set_ylim(0, 1.5 * fp_top if fp_top > 0 else 1.0)
        bits = [r["bits_per_weight"] for r in records] + [budget.get("bits_per_weight") or 0.0]
        b_lo, b_hi = min(1.0, *bits[:-1]) - 0.05, max(bits)
        ax_bits.set_ylim(b_lo, b_lo + 1.5 * max(b_hi - b_lo, 0.1))
        ax_fp.set_title("compression")
        _epoch_axis(ax_fp, epochs)
        ax_fp.legend(handles=handles, loc="upper left", fontsize=8)

    full_title = run_title(summary, title) if summary else title
    if full_title:
        fig.suptitle(full_title)
    return fig


def training_curves(metrics_path: str | Path, out_png: str | Path, title: str = "",
                    summary: dict[str, Any] | None = None) -> Path:
    """Loss and accuracy per epoch, train and test, from a metrics.jsonl log; a third panel with the
    full-precision fraction and bits/weight when the log has them (compressed runs). With `summary`
    (the run's summary.json) the title names the model, data, method, bits/weight, activation bits,
    seed and final test accuracy. Returns the PNG's path."""
    return _save(curves_figure(read_metrics(metrics_path), title, summary), out_png)


# --- band histograms -----------------------------------------------------------------------------

def band_layers(model) -> dict:
    """name -> layer for every compressed layer whose method binarizes a band of weights (APB)."""
    return {n: m for n, m in quantized_layers(model) if m.weight_quantizer.band() is not None}


def _chosen(model, layer: str | None, layers: Iterable[str] | None) -> dict:
    banded = band_layers(model)
    if not banded:
        raise ValueError("band_histogram: the model has no layer with a binarization band")
    if layer is not None and layers is not None:
        raise ValueError("band_histogram: give `layer` or `layers`, not both")
    names = list(banded) if layer is None and layers is None else [layer] if layer is not None else list(layers)
    if not names:
        raise ValueError(f"band_histogram: `layers` is empty; choose from {list(banded)}")
    unknown = [n for n in names if n not in banded]
    if unknown:
        raise ValueError(f"band_histogram: no banded layer named {', '.join(map(repr, unknown))}; "
                         f"choose from {list(banded)}")
    return {n: banded[n] for n in dict.fromkeys(names)}


def _band_panel(ax, name: str, m, bins: int, verbose: bool) -> None:
    import numpy as np

    q, w = m.weight_quantizer, m.weight.data.ravel()
    mask = q.mask(m.weight.data).ravel()
    alpha, delta = q.band()
    edges = np.linspace(float(w.min()), float(w.max()), bins + 1)
    for sign in (-1, 1):
        lo, hi = sorted((sign * max(alpha - delta, 0.0), sign * (alpha + delta)))
        ax.axvspan(lo, hi, color=BINARY_COLOR, alpha=0.15, lw=0, label="band α±δ" if sign > 0 else None)
        ax.axvline(sign * alpha, color="k", lw=0.8, ls="--", label="±α" if sign > 0 else None)
    ax.hist(w[mask], bins=edges, color=BINARY_COLOR, alpha=0.8, label="binarized to ±α")
    ax.hist(w[~mask], bins=edges, color=FP_COLOR, alpha=0.9, label="full precision")
    ax.set_yscale("log")
    fp = 100 * (~mask).mean()
    if verbose:
        ax.set_title(f"{name}: {w.size:,} weights, {fp:.2f}% full precision ({(~mask).sum():,})\n"
                     f"α = {alpha:.3g}, band α±δ with δ = {delta:.3g}", fontsize=10)
    else:
        ax.set_title(f"{name} ({w.size:,} w)\nFP {fp:.2f}% · α={alpha:.3g} · δ={delta:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25, axis="y")


def band_figure(model, layer: str | None = None, layers: Iterable[str] | None = None):
    """The Figure of `band_histogram`."""
    from matplotlib.figure import Figure

    chosen = _chosen(model, layer, layers)
    n = len(chosen)
    if n == 1:
        fig = Figure(figsize=(7.5, 4.0), layout="constrained")
        axes = [fig.subplots()]
    else:
        ncols = min(6, n)
        nrows = math.ceil(n / ncols)
        fig = Figure(figsize=(max(2.9 * ncols, 8.0), 2.5 * nrows + 1.2), layout="constrained")
        grid = fig.subplots(nrows, ncols, squeeze=False)
        axes = list(grid.ravel())
        for ax in axes[n:]:
            fig.delaxes(ax)
        axes = axes[:n]
    for ax, (name, m) in zip(axes, chosen.items()):
        _band_panel(ax, name, m, bins=120 if n == 1 else 60, verbose=n == 1)
    handles, labels = axes[0].get_legend_handles_labels()
    order = ["binarized to ±α", "full precision", "band α±δ", "±α"]
    pairs = sorted(zip(labels, handles), key=lambda p: order.index(p[0]) if p[0] in order else len(order))
    if n == 1:
        axes[0].set(xlabel="latent weight", ylabel="count (log scale)")
        axes[0].legend([h for _, h in pairs], [l for l, _ in pairs], fontsize=8, loc="upper right")
    else:
        for i, ax in enumerate(axes):
            if i + ncols >= n:  # the lowest panel of its column
                ax.set_xlabel("latent weight", fontsize=9)
        fig.supylabel("count (log scale)")
        fig.legend([h for _, h in pairs], [l for l, _ in pairs], loc="outside lower center", ncols=len(pairs))
        fig.suptitle(f"latent weights of {n} layers with a binarization band "
                     f"(FP: the layer's full-precision share; w: weights)", fontsize=11)
    return fig


def band_histogram(model, out_png: str | Path, layer: str | None = None,
                   layers: Iterable[str] | None = None) -> Path:
    """Latent-weight histograms for a method with a binarization band (APB: quantizer `band()` and
    `mask(w)`): the band [α−δ, α+δ] and its mirror shaded, binarized and full-precision weights in
    two colours, log-scale counts. Default: one small panel per banded layer, each titled with its
    FP share, α and δ, one legend for all; `layer="name"` draws that layer alone, larger;
    `layers=[...]` a chosen subset. Returns the PNG's path."""
    return _save(band_figure(model, layer, layers), out_png)

