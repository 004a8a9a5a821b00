"""The figures a finished run leaves in its directory, whichever method it trained."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .bitwidth_plot import bitwidth_plot
from .plots import band_histogram, band_layers, training_curves


def run_figures(out: str | Path, summary: dict[str, Any], model) -> Path:
    """curves.png; band.png for a method with a band (APB); bitwidths.png for a method whose
    bit-widths change in training (PaBT). Returns the curves' path."""
    out = Path(out)
    curves = training_curves(out / "metrics.jsonl", out / "curves.png", summary=summary)
    if band_layers(model):
        band_histogram(model, out / "band.png")
    if summary.get("method") == "pabt":
        bitwidth_plot(out / "metrics.jsonl", out / "bitwidths.png", summary)
    return curves
