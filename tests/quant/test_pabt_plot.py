"""The bit-width figure of a PaBT run (training/bitwidth_plot.py): per-layer weight and activation
bit-widths per epoch from metrics.jsonl, and the model's bits/weight."""
import json

import numpy as np
import pytest

from apb_ref.training.bitwidth_plot import bitwidth_figure, bitwidth_plot, bitwidth_series, has_bitwidths


def _record(epoch, widths):
    layers = {name: {"weight_bits": m, "act_bits": n, "bits_per_weight": float(m), "binary_convs": c}
              for name, (m, n, c) in widths.items()}
    bits = sum(m * size for (m, _, _), size in zip(widths.values(), (2, 6))) / 8
    return {"epoch": epoch, "train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5,
            "bits_per_weight": bits, "fp_fraction": 0.0, "layers": layers}


LOG = [_record(1, {"a": (2, 2, 3), "b": (2, 2, 4)}), _record(2, {"a": (2, 1, 2), "b": (1, 2, 2)}),
       _record(3, {"a": (1, 1, 1), "b": (1, 1, 1)})]


def test_series_follow_the_log_and_start_from_the_configured_bases():
    s = bitwidth_series(LOG, start=(2, 2))
    assert s["epochs"] == [0, 1, 2, 3]
    assert s["layers"]["a"] == {"weight_bits": [2, 2, 2, 1], "act_bits": [2, 2, 1, 1]}
    assert s["layers"]["b"] == {"weight_bits": [2, 2, 1, 1], "act_bits": [2, 2, 2, 1]}
    assert s["bits_per_weight"] == [2.0, 2.0, 1.25, 1.0] and s["binary_convs"] == [4.0, 3.5, 2.0, 1.0]
    assert bitwidth_series(LOG)["epochs"] == [1, 2, 3]


def test_the_figure_draws_each_layers_bit_widths_and_refuses_a_log_without_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LOG))
    summary = {"model": "digits_cnn", "dataset": "digits", "method": "pabt", "seed": 0,
               "config": {"pabt_weight_bases": 2, "pabt_act_bases": 2}}
    fig = bitwidth_figure(LOG, summary)
    ax_w, ax_a, _ = fig.axes
    for ax, key in ((ax_w, "weight_bits"), (ax_a, "act_bits")):
        lines = {l.get_label(): l for l in ax.get_lines()}
        for name in ("a", "b"):
            drawn = np.round(lines[name].get_ydata())  # the layers are drawn slightly apart
            assert drawn.tolist() == bitwidth_series(LOG, (2, 2))["layers"][name][key]
    assert "reconstruction" in fig._suptitle.get_text()
    png = bitwidth_plot(path, tmp_path / "bitwidths.png", summary)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = [{k: v for k, v in r.items() if k != "layers"} for r in LOG]
    assert not has_bitwidths(plain)
    with pytest.raises(ValueError, match="weight_bits"):
        bitwidth_series(plain)
