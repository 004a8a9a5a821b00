"""ReActNet's learned activations (RSign shifts, RPReLU) train, export and run packed exactly."""
import numpy as np
import pytest

from apb_ref import kernels, nn
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.packed import PackedNetwork, export_model, parse_packed
from apb_ref.packed.format import PackedModel
from apb_ref.testing import grad_check


def _model(block, method, act_bits, seed=1):
    model = build("resnet20", in_channels=3, image_size=16, num_classes=10, seed=seed, method=method,
                  act_bits=act_bits, act="hardtanh", block=block, react=True)
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():  # non-trivial BatchNorms and learned activations
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
        if isinstance(m, (nn.ChannelShift, nn.RPReLU)):
            for _, p in m.named_parameters():
                p.data[...] += rng.normal(0, 0.1, p.shape).astype(np.float32)
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": "hardtanh",
            "block": block, "react": True}
    return model.eval(), args


def test_rprelu_and_shift_are_what_they_say_and_their_gradients_check():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    act, shift = nn.RPReLU(3), nn.ChannelShift(3)
    act.gamma.data[...] = [0.1, -0.2, 0.0]
    act.zeta.data[...] = [0.5, 0.0, -0.5]
    act.slope.data[...] = [0.25, 0.0, 1.0]
    z = x - act.gamma.data.reshape(1, 3, 1, 1)
    want = np.where(z > 0, z, act.slope.data.reshape(1, 3, 1, 1) * z) + act.zeta.data.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(act(Tensor(x)).data, want, rtol=1e-6)
    np.testing.assert_allclose(shift(Tensor(x)).data, x)  # starts as the identity
    grad_check(lambda a, g, s, zt: ((a - g.reshape(1, 3, 1, 1)).relu() - s.reshape(1, 3, 1, 1) * (
        -(a - g.reshape(1, 3, 1, 1))).relu() + zt.reshape(1, 3, 1, 1)).sum(),
        x + 0.05, np.array([0.1, -0.2, 0.3]), np.array([0.25, 0.1, 0.5]), np.array([0.0, 1.0, -1.0]))


@pytest.mark.parametrize("backend", kernels.available_backends())
@pytest.mark.parametrize("block, method, act_bits", [("basic", "apb", 1), ("bireal", "bnn", 1), ("basic", "bnn", 2)])
def test_react_packed_inference_equals_the_float_forward(block, method, act_bits, backend):
    model, args = _model(block, method, act_bits)
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
    packed = parse_packed(export_model(model, args).to_bytes())
    kinds = {spec["kind"] for spec in packed.header["layers"].values()}
    assert "params" in kinds and packed.header["build"]["react"] is True
    with kernels.use_backend(backend):
        got = PackedNetwork(packed).logits(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_a_params_layer_that_does_not_fit_the_architecture_is_refused():
    model, args = _model("basic", "bnn", 1)
    packed = export_model(model, args)
    name = "blocks.0.act1"
    header = {**packed.header, "layers": {**packed.header["layers"], name: {"kind": "params", "params": ["gamma"]}}}
    tensors = {k: v for k, v in packed.tensors.items() if k not in (f"{name}.slope", f"{name}.zeta")}
    with pytest.raises(ValueError, match="params"):
        PackedNetwork(PackedModel(header, tensors))
    bad = dict(packed.tensors)
    bad[f"{name}.zeta"] = np.full(3, np.nan, np.float32)
    with pytest.raises(ValueError, match="zeta"):
        PackedNetwork(PackedModel(packed.header, bad))


def test_react_parameters_train_with_the_weights_and_the_run_exports(tmp_path):
    from apb_ref.training import TrainConfig, Trainer, export_args
    config = TrainConfig(model="resnet20", dataset="digits", pad_to=16, epochs=1, batch_size=32, limit_train=64,
                         limit_test=32, method="bnn", act_bits=1, react=True, optimizer="adam", lr=0.01)
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.run()
    learned = [m for m in trainer.model.modules() if isinstance(m, (nn.ChannelShift, nn.RPReLU))]
    assert len(learned) == 36  # two shifts and two RPReLUs in each of the nine blocks
    assert any(np.abs(m.slope.data - 0.25).max() > 0 for m in learned if isinstance(m, nn.RPReLU))
    assert any(np.abs(m.bias.data).max() > 0 for m in learned if isinstance(m, nn.ChannelShift))
    model = trainer.model.eval()
    x = trainer.data.x_test[:8]
    with no_grad():
        expected = model(Tensor((x - trainer.data.mean.reshape(1, -1, 1, 1)) / trainer.data.std.reshape(1, -1, 1, 1))).data
    net = PackedNetwork(parse_packed(export_model(model, *export_args(config, trainer.data)).to_bytes()))
    got = net.logits(((x - trainer.data.mean.reshape(1, -1, 1, 1)) / trainer.data.std.reshape(1, -1, 1, 1)).astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
