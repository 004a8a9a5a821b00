"""Bits between layers (packed/fused.py): ResNet-20's 1- and 2-bit blocks, with the stem and head, as
one BinaryNet call on the Rust backend give the float model's logits; blocks that compute anything
else are left unfused, and the NumPy backend always runs the unfused modules."""
import functools

import numpy as np
import pytest
from kernel_helpers import needs_rust

from apb_ref import kernels
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.models.resnet import shortcut_option_a
from apb_ref.packed import PackedNetwork, export_model, parse_packed
from apb_ref.packed import fused
from apb_ref.packed.fused import FusedBlocks, shortcut_nhwc


def _model(block="bireal", method="apb", act_bits=1, seed=1, **options):
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build("resnet20", in_channels=3, image_size=16, num_classes=10, seed=seed, method=method,
                  act_bits=act_bits, act=act, block=block, **options)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():  # non-trivial BatchNorms, so the folded epilogue is tested
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": act, "block": block,
            **options}
    return model.eval(), parse_packed(export_model(model.eval(), args).to_bytes())


def _images(n=6, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


@needs_rust
@pytest.mark.parametrize("block", ["basic", "bireal"])
@pytest.mark.parametrize("method", ["apb", "bnn"])
@pytest.mark.parametrize("act_bits", [1, 2])
def test_fused_blocks_give_the_float_models_logits(block, method, act_bits):
    model, packed = _model(block, method, act_bits)
    if method == "apb":  # the sparse term runs too
        assert sum(len(m.values) for _, m in PackedNetwork(packed).model.named_modules() if getattr(m, "sparse", 0))
    x = _images()
    with no_grad():
        expected = model(Tensor(x)).data
    net = PackedNetwork(packed)
    assert isinstance(net.model.blocks, FusedBlocks)
    assert isinstance(net.model.forward, functools.partial)  # the whole network in one call
    with kernels.use_backend("rust"):
        got = net.logits(x)
    with kernels.use_backend("numpy"):
        unfused = net.logits(x)
    tol = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    np.testing.assert_allclose(got, unfused, rtol=0, atol=tol)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@needs_rust
def test_a_batch_of_one_and_a_batch_of_many_agree():
    _, packed = _model()
    net, x = PackedNetwork(packed), _images(9)
    with kernels.use_backend("rust"):
        many = net.logits(x, batch_size=9)
        ones = net.logits(x, batch_size=1)
    np.testing.assert_allclose(ones, many, rtol=0, atol=1e-5 * np.abs(many).max())


@pytest.mark.parametrize("options, reason", [
    ({"react": True}, "ReAct shifts"),
    ({"act_scale": True}, "activation scale (BatchNorm not folded)"),
    ({"method": "uniform"}, "two weight planes"),
])
def test_blocks_that_compute_something_else_stay_unfused(options, reason):
    _, packed = _model(**options)
    assert not isinstance(PackedNetwork(packed).model.blocks, FusedBlocks), reason


def test_without_folding_nothing_is_fused():
    _, packed = _model()
    assert not isinstance(PackedNetwork(packed, fold_batchnorm=False).model.blocks, FusedBlocks)


def test_the_numpy_backend_runs_the_unfused_modules(monkeypatch):
    _, packed = _model()
    net = PackedNetwork(packed)

    def refuse(*args, **kwargs):
        raise AssertionError("the NumPy backend must not run the fused path")

    monkeypatch.setattr(fused, "_bconv", refuse)
    with kernels.use_backend("numpy"):
        net.logits(_images(2))


@pytest.mark.parametrize("cin, cout, stride", [(16, 16, 1), (16, 32, 2), (32, 64, 2), (3, 8, 2)])
def test_the_channels_last_shortcut_is_option_a(cin, cout, stride):
    x = np.random.default_rng(0).standard_normal((2, cin, 7, 6)).astype(np.float32)
    want = shortcut_option_a(Tensor(x), cout, stride).data.transpose(0, 2, 3, 1)
    got = shortcut_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), cout, stride)
    assert np.array_equal(got, want)


@needs_rust
def test_blocks_with_larger_kernels_fall_back_to_the_per_conv_path():
    _, packed = _model()
    net = PackedNetwork(packed)
    assert net.model.blocks.prepare(16, 16, 16) is not None
    conv = net.model.blocks.unfused[0].conv1
    conv.kh = conv.kw = 5  # outside BinaryNet's 3×3 windows (the operands are not rebuilt: prepare stops first)
    assert net.model.blocks.prepare(16, 16, 16) is None
