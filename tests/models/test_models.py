"""Modules, state dicts, and the model zoo's shapes and sizes."""
import numpy as np
import pytest

from apb_ref import ops as F
from apb_ref import nn
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import MODELS, build


def _conv_weights(model, compressed_only=False):
    return {name: p for name, p in model.named_parameters() if p.ndim == 4}


def test_resnet20_sizes_match_the_paper_counts():
    model = build("resnet20", in_channels=3, num_classes=10)
    convs = _conv_weights(model)
    assert convs["conv1.weight"].size == 432
    assert model.linear.weight.size + model.linear.bias.size == 650
    binarizable = sum(p.size for n, p in convs.items() if n != "conv1.weight")
    assert binarizable == 267_264  # METHODS §1.5
    assert max(p.size for p in convs.values()) == 36_864


def test_vgg_small_sizes_match_the_paper_counts():
    model = build("vgg_small", in_channels=3, num_classes=10, image_size=32)
    convs = list(_conv_weights(model).values())
    assert convs[0].size == 3_456
    assert sum(p.size for p in convs[1:]) == 4_571_136
    assert model.fc.weight.size + model.fc.bias.size == 81_930


@pytest.mark.parametrize("name,shape", [("resnet20", (2, 1, 32, 32)), ("vgg_small", (2, 3, 16, 16)), ("digits_cnn", (3, 1, 8, 8))])
def test_models_produce_logits_and_gradients(name, shape):
    model = build(name, in_channels=shape[1], image_size=shape[2], num_classes=7)
    x = Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    logits = model(x)
    assert logits.shape == (shape[0], 7) and logits.dtype == np.float32
    F.cross_entropy(logits, np.arange(shape[0]) % 7).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_same_seed_same_weights_different_seed_different():
    a, b, c = (build("digits_cnn", in_channels=1, image_size=8, seed=s) for s in (1, 1, 2))
    for (na, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    assert any(not np.array_equal(pa.data, pc.data) for pa, pc in zip(a.parameters(), c.parameters()) if pa.ndim == 4)


def test_state_dict_round_trip_includes_buffers():
    model = build("digits_cnn", in_channels=1, image_size=8, seed=0)
    x = Tensor(np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32))
    model(x)  # updates BatchNorm running statistics
    state = model.state_dict()
    assert any(k.endswith("running_mean") for k in state)
    other = build("digits_cnn", in_channels=1, image_size=8, seed=5)
    other.load_state_dict(state)
    model.eval(), other.eval()
    with no_grad():
        np.testing.assert_array_equal(model(x).data, other(x).data)


def test_load_state_dict_rejects_wrong_keys_and_shapes():
    model = build("digits_cnn", in_channels=1, image_size=8)
    state = model.state_dict()
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict({k: v for k, v in list(state.items())[1:]})
    key = next(iter(state))
    state[key] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=key):
        model.load_state_dict(state)


def test_batchnorm_train_and_eval_modes_differ_and_track_running_stats():
    bn = nn.BatchNorm2d(3)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 3, 4, 4)).astype(np.float32)
    y = bn(Tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    bn.eval()
    assert not np.allclose(bn(Tensor(x)).data, y)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(Tensor(np.zeros((1, 2, 5, 5), np.float32)), Tensor(np.zeros((3, 4, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="Linear"):
        nn.Linear(4, 2)(Tensor(np.zeros((2, 5), np.float32)))
    with pytest.raises(ValueError, match="unknown model"):
        build("resnet1000")
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
    with pytest.raises(ValueError, match="image_size"):
        build("vgg_small", image_size=20)


def test_every_model_is_buildable_from_the_registry():
    assert set(MODELS) == {"resnet20", "vgg_small", "digits_cnn"}


def test_no_grad_builds_no_graph():
    w = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (w * 2.0).sum()
    assert not y.requires_grad


def test_no_grad_nests_decorates_and_restores_after_an_error():
    w = Tensor(np.ones(3), requires_grad=True)
    outer = no_grad()
    with outer:
        with outer:  # the same instance again, inside
            pass
        assert not (w * 2.0).requires_grad
    assert (w * 2.0).requires_grad

    @no_grad()
    def doubled(t):
        return t * 2.0
    assert not doubled(w).requires_grad and (w * 2.0).requires_grad
    with pytest.raises(ValueError):
        with no_grad():
            raise ValueError
    assert (w * 2.0).requires_grad


def test_gradients_accumulate_across_backward_calls():
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (w * w).sum().backward()
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, [4.0, 8.0])
