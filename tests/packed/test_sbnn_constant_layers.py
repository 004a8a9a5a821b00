"""SBNN layers whose every filter sits at one value (a trained network at a small EC has them) run
packed as the float model does: no sign rows at all, only the shared box-sum."""
import numpy as np
import pytest

from apb_ref import kernels
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.packed import PackedNetwork, export_model, parse_packed
from apb_ref.packed.layers import PackedSBNN
from apb_ref.quant import quantized_layers


@pytest.mark.parametrize("backend", kernels.available_backends())
@pytest.mark.parametrize("act_bits", [1, 2, 32])
def test_a_layer_without_any_sign_row_runs_packed_as_in_float(act_bits, backend):
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build("resnet20", in_channels=3, image_size=16, num_classes=10, seed=2, method="sbnn",
                  act_bits=act_bits, act=act)
    layers = [m for _, m in quantized_layers(model)]
    layers[0].weight.data[...] = -np.abs(layers[0].weight.data) - 0.01  # every weight at α
    w = layers[1].weight.data
    w[...] = -np.abs(w) - 0.01
    w[::2] = np.abs(w[::2]) + 0.01  # every filter at one value, half of them at β
    model.eval()
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": act}
    with kernels.use_backend(backend):
        network = PackedNetwork(parse_packed(export_model(model, args).to_bytes()))
        got = network.logits(x)
    if act_bits < 32:
        packed = [m for m in network.model.modules() if isinstance(m, PackedSBNN)]
        assert len(packed[0].rows) == 0 and len(packed[1].rows) == 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
