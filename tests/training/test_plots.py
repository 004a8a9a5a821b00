"""The run's figures: curves.png (loss, accuracy, compression per epoch) and band.png (latent-weight
histograms of every layer with a binarization band). Each PNG's Figure is inspected, not only the file."""
import json
import struct

import numpy as np
import pytest

from apb_ref.models import build
from apb_ref.training.plots import (band_figure, band_histogram, band_layers, curves_figure, read_metrics,
                                    run_title, training_curves)

SUMMARY = {"model": "digits_cnn", "dataset": "digits", "method": "apb", "act_bits": 1,
           "bits_per_weight": 1.6, "test_accuracy": 0.9123, "epochs": 3, "seed": 7,
           "budget": {"fp_fraction": 0.02, "bits_per_weight": 1.6, "met": True}}


def _record(epoch, compressed=True):
    r = {"epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch, "train_accuracy": 0.3 * epoch,
         "test_loss": 2.2 / epoch, "test_accuracy": 0.28 * epoch, "images_per_second": 100.0}
    if compressed:
        r.update(fp_fraction=0.01 * epoch, bits_per_weight=1.0 + 0.2 * epoch,
                 layers={"features.3": {"alpha": 0.1, "delta": 0.2, "fp_fraction": 0.01 * epoch}})
    return r


def _metrics(tmp_path, epochs=3, compressed=True):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(_record(e, compressed)) + "\n" for e in range(1, epochs + 1)))
    return path


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _visible_xticks(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


@pytest.fixture(scope="module")
def apb_model():
    return build("digits_cnn", in_channels=1, image_size=8, method="apb")


def test_training_curves_title_names_the_run_and_ticks_whole_epochs(tmp_path):
    fig = curves_figure(read_metrics(_metrics(tmp_path)), summary=SUMMARY)
    title = fig.get_suptitle()
    for part in ("digits_cnn", "digits", "apb", "1.60 bits/weight", "1-bit activations", "seed 7", "91.23%",
                 "3 epochs"):
        assert part in title, (part, title)
    main = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(main) == 3  # loss, accuracy, compression
    for ax in main:
        ticks = _visible_xticks(ax)
        assert ticks == [1, 2, 3], ticks
        assert ax.get_ylabel()
        assert ax.get_legend() is not None


def test_compression_panel_plots_fp_percent_and_bits_per_weight(tmp_path):
    fig = curves_figure(read_metrics(_metrics(tmp_path)), summary=SUMMARY)
    ax_fp = next(ax for ax in fig.axes if ax.get_title() == "compression")
    twin = next(ax for ax in fig.axes if ax is not ax_fp and ax.get_shared_x_axes().joined(ax, ax_fp))
    assert "%" in ax_fp.get_ylabel() and "bits/weight" in twin.get_ylabel()
    np.testing.assert_allclose(ax_fp.get_lines()[0].get_ydata(), [1.0, 2.0, 3.0])  # fp_fraction in percent
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), [1.2, 1.4, 1.6])
    labels = [t.get_text() for t in ax_fp.get_legend().get_texts()]
    assert any("full-precision" in l for l in labels) and "bits/weight" in labels


def test_uncompressed_log_has_two_panels_and_fp_title(tmp_path):
    fp = {**SUMMARY, "method": "fp", "bits_per_weight": 32.0, "act_bits": 32, "budget": None}
    fig = curves_figure(read_metrics(_metrics(tmp_path, compressed=False)), summary=fp)
    assert len(fig.axes) == 2
    assert "32 bits/weight" in fig.get_suptitle() and "float32 activations" in fig.get_suptitle()


def test_single_epoch_still_shows_points_on_an_integer_tick(tmp_path):
    fig = curves_figure(read_metrics(_metrics(tmp_path, epochs=1)))
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            assert _visible_xticks(ax) == [1]
        for line in ax.get_lines():
            if len(line.get_xdata()) == 1:
                assert line.get_marker() not in (None, "", "None")


def test_training_curves_writes_png_with_old_and_new_calls(tmp_path):
    metrics = _metrics(tmp_path)
    old = training_curves(metrics, tmp_path / "old.png", "digits_cnn on digits")
    new = training_curves(metrics, tmp_path / "new.png", "digits_cnn on digits", summary=SUMMARY)
    for png in (old, new):
        w, h = _png_size(png)
        assert 900 <= w <= 2500 and 300 <= h <= 900, (w, h)
    assert "digits_cnn on digits" in run_title(SUMMARY, "digits_cnn on digits").splitlines()[0]
    assert len(run_title(SUMMARY, "sweep 4").splitlines()) == 3  # a caller's own title is kept
    with pytest.raises(ValueError, match="no epochs"):
        (tmp_path / "empty.jsonl").write_text("")
        training_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_band_histogram_default_has_one_panel_per_banded_layer(tmp_path, apb_model):
    names = list(band_layers(apb_model))
    assert len(names) >= 2
    fig = band_figure(apb_model)
    assert len(fig.axes) == len(names)
    for ax, name in zip(fig.axes, names):
        title = ax.get_title()
        assert name in title and "FP" in title and "%" in title and "α=" in title and "δ=" in title
        assert ax.get_yscale() == "log"
    assert len(fig.legends) == 1  # one shared legend
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["binarized to ±α", "full precision", "band α±δ", "±α"]
    w, h = _png_size(band_histogram(apb_model, tmp_path / "band.png"))
    assert 800 <= w <= 2200 and 300 <= h <= 1500, (w, h)


def test_band_figure_grows_with_the_number_of_layers():
    many = build("resnet20", method="apb")
    n = len(band_layers(many))
    fig = band_figure(many)
    assert len(fig.axes) == n
    columns = {round(ax.get_position().x0, 2) for ax in fig.axes}
    assert len(columns) <= 6
    width, height = fig.get_size_inches()
    assert height >= 2.5 * -(-n // 6)


def test_band_histogram_one_layer_or_a_subset(tmp_path, apb_model):
    names = list(band_layers(apb_model))
    one = band_figure(apb_model, layer=names[-1])
    assert len(one.axes) == 1 and one.axes[0].get_title().startswith(names[-1])
    assert one.axes[0].get_legend() is not None
    subset = band_figure(apb_model, layers=names[:1] + names[-1:])
    assert [ax.get_title().split(" ")[0] for ax in subset.axes] == names[:1] + names[-1:]
    assert _png_size(band_histogram(apb_model, tmp_path / "one.png", layer=names[0]))[0] > 500


def test_band_histogram_unknown_layer_names_the_choices(tmp_path, apb_model):
    names = list(band_layers(apb_model))
    with pytest.raises(ValueError, match=names[0]):
        band_histogram(apb_model, tmp_path / "x.png", layer="nope")
    with pytest.raises(ValueError, match="nope"):
        band_histogram(apb_model, tmp_path / "x.png", layers=[names[0], "nope"])
    with pytest.raises(ValueError, match="not both"):
        band_figure(apb_model, layer=names[0], layers=names)
    with pytest.raises(ValueError, match="no layer with a binarization band"):
        band_figure(build("digits_cnn", in_channels=1, image_size=8, method="fp"))
    assert not (tmp_path / "x.png").exists()
