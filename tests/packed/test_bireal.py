"""Bi-Real blocks (a real-valued shortcut around every conv) run packed exactly as in float."""
import numpy as np
import pytest

from apb_ref import kernels
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.packed import PackedNetwork, export_model, parse_packed


def _model(block, method, act_bits, seed=0):
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build("resnet20", in_channels=3, image_size=16, num_classes=10, seed=seed, method=method,
                  act_bits=act_bits, act=act, block=block)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():  # non-trivial BatchNorms, so folding them is tested
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": act, "block": block}
    return model.eval(), args


@pytest.mark.parametrize("backend", kernels.available_backends())
@pytest.mark.parametrize("act_bits", [1, 2, 32])
@pytest.mark.parametrize("method", ["apb", "bnn"])
def test_bireal_packed_inference_equals_the_float_forward(method, act_bits, backend):
    # seed 1: with seed 0 one 2-bit activation lies 1e-7 from a rounding boundary, where the folded
    # BatchNorm of the packed path and the float one legitimately round to different levels
    model, args = _model("bireal", method, act_bits, seed=1)
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
        basic = _model("basic", method, act_bits, seed=1)[0](Tensor(x)).data
    assert not np.allclose(expected, basic)  # the same weights through other shortcuts: another function
    packed = parse_packed(export_model(model, args).to_bytes())
    assert packed.header["build"]["block"] == "bireal"
    with kernels.use_backend(backend):
        got = PackedNetwork(packed).logits(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_block_is_a_resnet20_option_only():
    with pytest.raises(ValueError, match="ResNet-20 option"):
        build("digits_cnn", in_channels=1, image_size=8, block="bireal")
    with pytest.raises(ValueError, match="block must be one of"):
        build("resnet20", block="dense")
