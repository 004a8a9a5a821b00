"""XNOR-Net's activation scale K (ResNet-20 `act_scale`) computes what it says, trains, and runs packed exactly;
the approx-sign straight-through estimator trains."""
import numpy as np
import pytest

from apb_ref import kernels, nn
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.packed import PackedNetwork, export_model, parse_packed
from apb_ref.testing import grad_check


def _box_mean_abs(x, k, stride, padding):
    """The obvious loops: mean over channels of |x|, then the mean of each zero-padded k×k window."""
    a = np.pad(np.abs(x).mean(axis=1), ((0, 0), (padding, padding), (padding, padding)))
    ho, wo = (a.shape[1] - k) // stride + 1, (a.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], 1, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, 0, i, j] = a[:, i * stride:i * stride + k, j * stride:j * stride + k].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_activation_scale_is_the_window_mean_of_the_channel_mean_magnitude(stride):
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 6))
    got = nn.ActivationScale(3, stride, 1)(Tensor(x)).data
    np.testing.assert_allclose(got, _box_mean_abs(x, 3, stride, 1), rtol=1e-12)
    x = x + np.sign(x) * 0.05  # keep away from |x|'s kink at 0 for the finite differences
    grad_check(lambda a: (nn.ActivationScale(3, stride, 1)(a) * Tensor(np.arange(1.0, 1 + got.size).reshape(got.shape))).sum(), x)


def _model(block, method, act_bits, react=False, seed=2):
    model = build("resnet20", in_channels=3, image_size=16, num_classes=10, seed=seed, method=method,
                  act_bits=act_bits, act="hardtanh", block=block, react=react, act_scale=True)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():  # non-trivial BatchNorms
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": "hardtanh",
            "block": block, "act_scale": True, **({"react": True} if react else {})}
    return model.eval(), args


@pytest.mark.parametrize("backend", kernels.available_backends())
@pytest.mark.parametrize("block, method, act_bits, react",
                         [("basic", "apb", 1, False), ("bireal", "bnn", 1, True), ("basic", "bnn", 2, False)])
def test_act_scale_packed_inference_equals_the_float_forward(block, method, act_bits, react, backend):
    model, args = _model(block, method, act_bits, react)
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
    packed = parse_packed(export_model(model, args).to_bytes())
    assert packed.header["build"]["act_scale"] is True
    with kernels.use_backend(backend):
        net = PackedNetwork(packed)
        got = net.logits(x)
    # the blocks' BatchNorms read conv·K: none of them may have been folded into its conv
    assert all(not isinstance(m, nn.Lambda) or "folded" not in repr(m) for m in net.model.blocks.modules())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_act_scale_is_a_resnet20_option():
    with pytest.raises(ValueError, match="act_scale"):
        build("digits_cnn", in_channels=1, image_size=8, act_scale=True)
    from apb_ref.training import TrainConfig
    with pytest.raises(ValueError, match="act_scale"):
        TrainConfig(model="digits_cnn", dataset="digits", act_scale=True).validate()


def test_act_scale_and_approx_ste_train_and_export_exactly(tmp_path):
    from apb_ref.training import TrainConfig, Trainer, export_args
    config = TrainConfig(model="resnet20", dataset="digits", pad_to=16, epochs=1, batch_size=32, limit_train=64,
                         limit_test=32, method="apb", act_bits=1, act_scale=True, act_ste="approx", optimizer="adam",
                         lr=0.01, val_fraction=0.0)
    trainer = Trainer(config, tmp_path, progress=False)
    summary = trainer.run()
    assert np.isfinite(summary["test_accuracy"])
    model = trainer.model.eval()
    x = ((trainer.data.x_test[:8] - trainer.data.mean.reshape(1, -1, 1, 1)) / trainer.data.std.reshape(1, -1, 1, 1))
    with no_grad():
        expected = model(Tensor(x)).data
    net = PackedNetwork(parse_packed(export_model(model, *export_args(config, trainer.data)).to_bytes()))
    got = net.logits(x.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
