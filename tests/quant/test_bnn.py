"""BNN / XNOR-Net weights (quant/bnn.py, METHODS §4.1)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apb_ref.autograd import Tensor
from apb_ref.models import build
from apb_ref.quant.bnn import BNN, BNNOptions, bnn_quantize
from apb_ref.testing import numerical_gradient
from apb_ref.training import TrainConfig, Trainer
from apb_ref.training.summary import summarize


def test_forward_is_alpha_times_sign_per_channel_or_layer():
    w = np.array([[[[0.5, -1.0], [0.0, 2.5]]], [[[-0.2, -0.2], [0.4, 0.0]]]], np.float32)  # (2, 1, 2, 2)
    signs = np.where(w < 0, -1, 1)  # sign(0) = +1
    per_channel = bnn_quantize(w, per_channel=True).data
    np.testing.assert_array_equal(per_channel[0], 1.0 * signs[0])  # mean|w| of channel 0 = 1.0
    np.testing.assert_allclose(per_channel[1], 0.2 * signs[1], rtol=1e-6)
    np.testing.assert_allclose(bnn_quantize(w, per_channel=False).data, 0.6 * signs, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), per_channel=st.booleans(), clipped=st.booleans())
def test_alpha_path_of_the_gradient_matches_finite_differences(seed, per_channel, clipped):
    """Away from sign's jumps the forward is differentiable through α = mean|w| only: finite
    differences see exactly the α term of the gradient; the rest is the sign's STE term α·ste·g."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, 2, 3, 3)) * 0.8
    w[np.abs(w) < 1e-2] += 0.05
    g = rng.standard_normal(w.shape)
    t = Tensor(w.copy(), requires_grad=True)
    bnn_quantize(t, per_channel, clipped).backward(g)
    axes = (1, 2, 3) if per_channel else (0, 1, 2, 3)
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    ste_term = alpha * g * ((np.abs(w) <= 1) if clipped else 1.0)
    numeric = numerical_gradient(lambda x: bnn_quantize(x, per_channel, clipped), [w.copy()], g, 0, 1e-6)
    np.testing.assert_allclose(t.grad - ste_term, numeric, rtol=1e-5, atol=1e-8)


def test_memory_is_one_bit_per_compressed_weight():
    model = build("digits_cnn", in_channels=1, image_size=8, method="bnn")
    s = summarize(model, (1, 8, 8))
    assert s.bits_per_weight == 1.0 and s.fp_fraction == 0.0
    compressed = [r for r in s.layers if r.compressed]
    assert compressed and all(r.bits == r.weights for r in compressed)


def test_options_are_checked_and_reach_the_layers():
    with pytest.raises(ValueError, match="bnn_scale"):
        BNN(np.ones((2, 2), np.float32), BNNOptions(bnn_scale="row"))
    with pytest.raises(ValueError, match="bnn_ste"):
        TrainConfig(method="bnn", bnn_ste="tanh").validate()
    with pytest.raises(ValueError, match="needs a method that takes one"):
        TrainConfig(method="bnn", bits_per_weight=1.5).validate()
    model = build("digits_cnn", in_channels=1, image_size=8, method="bnn", options=BNNOptions(bnn_scale="layer"))
    qs = [m.weight_quantizer for m in model.modules() if hasattr(m, "weight_quantizer")]
    assert qs and all(isinstance(q, BNN) and not q.per_channel for q in qs)


def test_a_bnn_digits_run_trains_and_reports_one_bit(tmp_path):
    cfg = TrainConfig(model="digits_cnn", dataset="digits", epochs=2, batch_size=32, lr=0.05, method="bnn",
                      limit_train=640, limit_test=200)
    summary = Trainer(cfg, tmp_path, progress=False).run()
    assert summary["bits_per_weight"] == 1.0
    assert summary["test_accuracy"] > 0.5  # ten classes: well above chance after 2 short epochs
