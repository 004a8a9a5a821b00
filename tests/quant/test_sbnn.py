"""SBNN: binary weights in a learned {α, β} with the expected-connections rule (quant/sbnn.py,
METHODS §3), its Golomb-Rice coded packed form (quant/packing.py) and its memory report."""
import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apb_ref import nn
from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.models import build
from apb_ref.nn.optim import build_optimizer
from apb_ref.packed import export_model, packed_memory, parse_packed
from apb_ref.packed.schema import validate_packed
from apb_ref.quant import quantized_layers
from apb_ref.quant.packing import MAX_RICE_K, binary_entropy, rice_bits, rice_decode, rice_encode, rice_gaps
from apb_ref.quant.sbnn import (DEAD_ZONE, SBNN, SBNNOptions, closed_form, ede_t,
                                quantize_model, sbnn_quantize)
from apb_ref.training import TrainConfig, Trainer
from apb_ref.training.summary import summarize


def _sbnn_layers(model):
    return [(name, m) for name, m in quantized_layers(model) if isinstance(m.weight_quantizer, SBNN)]


def _fraction_at_beta(model) -> float:
    ws = [m.weight.data for _, m in _sbnn_layers(model)]
    return sum(int((w >= 0).sum()) for w in ws) / sum(w.size for w in ws)


# --- the quantizer -----------------------------------------------------------------------------------
def test_forward_is_tau_sign_plus_phi_and_levels_name_the_two_values():
    w = np.array([[-0.7, 0.0, 0.2], [1.4, -0.01, -1.5]], np.float32)
    q = SBNN(w.copy())
    q.tau.data[...], q.phi.data[...] = 0.3, -0.2
    got = q(Tensor(w)).data
    np.testing.assert_allclose(got, np.where(w < 0, -0.5, 0.1), rtol=1e-6)  # α = φ − τ, β = φ + τ; sign(0) = +1
    alpha, beta = q.levels()
    assert set(np.unique(got)) == {alpha, beta} and alpha == np.float32(-0.2) - np.float32(0.3)


def test_ede_schedule_runs_from_a_tenth_to_ten_with_training_progress():
    assert ede_t(0.0) == pytest.approx(0.1) and ede_t(0.5) == pytest.approx(1.0) and ede_t(1.0) == pytest.approx(10.0)
    q = SBNN(np.ones((2, 3), np.float32))
    assert float(q.t) == pytest.approx(0.1)  # the first step uses t = 0.1 (k = 10: k·t = 1)
    q.on_step(0.75, np.ones((2, 3), np.float32))
    assert float(q.t) == pytest.approx(10 ** 0.5)
    w = np.array([[0.05, -0.3]])
    g = np.array([[1.0, 2.0]])
    for t, expected in [(0.1, 10 * 0.1 * (1 - np.tanh(0.1 * w) ** 2)), (10.0, 10.0 * (1 - np.tanh(10.0 * w) ** 2))]:
        wt = Tensor(w.copy(), requires_grad=True)
        sbnn_quantize(wt, np.asarray(0.5), np.asarray(0.0), "ede", t).backward(g)
        np.testing.assert_allclose(wt.grad, 0.5 * g * expected, rtol=1e-12)


def test_latent_weights_are_clamped_and_options_checked():
    q = SBNN(np.zeros((2, 2), np.float32))
    w = np.array([[-3.0, 1.6], [0.25, 1.5]], np.float32)
    q.project_weights(w)
    np.testing.assert_array_equal(w, [[-1.5, 1.5], [0.25, 1.5]])
    for bad, match in [({"ec": 0.0}, "ec"), ({"ec": 1.0}, "ec"), ({"gamma": 1.0}, "gamma"), ({"gamma": -0.1}, "gamma"),
                       ({"sbnn_ste": "tanh"}, "sbnn_ste"), ({"sbnn_init": "zeros"}, "sbnn_init")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(method="sbnn", **bad).validate()
    assert [p.shape for p in q.quantizer_parameters()] == [(), ()]  # one τ and one φ per layer


# --- the EC rule ---------------------------------------------------------------------------------------
def test_penalty_value_and_gradient_are_the_released_rule():
    rng = np.random.default_rng(0)
    ws = [rng.uniform(-1, 1, (4, 25)), rng.uniform(-1, 1, (3, 50))]
    n = sum(w.size for w in ws)
    p = sum(int((w >= 0).sum()) for w in ws) / n
    ec, gamma, loss = 0.1, 0.3, 2.0
    quantizers = [SBNN(w.astype(np.float32), SBNNOptions(ec=ec, gamma=gamma)) for w in ws]
    tensors = [Tensor(w.copy(), requires_grad=True) for w in ws]
    term = SBNN.loss_term(quantizers, tensors, loss)
    assert float(term.data) == pytest.approx(gamma / (1 - gamma) * loss)  # λ·h = γ·L/(1 − γ)
    term.backward()
    lam = gamma * loss / ((p - ec) * (1 - gamma))
    for t in tensors:
        np.testing.assert_allclose(t.grad, lam / (2 * n), rtol=1e-12)  # every weight pushed towards α alike
    # no term at all: within the dead zone, at EC = 0.5 (the released code's switch), with γ = 0
    for options, ws_ in [(SBNNOptions(ec=p - DEAD_ZONE / 2, gamma=gamma), ws), (SBNNOptions(ec=0.5, gamma=0.5), ws),
                         (SBNNOptions(ec=ec, gamma=0.0), ws)]:
        assert SBNN.loss_term([SBNN(ws_[0].astype(np.float32), options)], [Tensor(w) for w in ws_], loss) is None


def _toy_run(gamma: float, steps: int = 150) -> list[float]:
    """A 2×100 SBNN layer fitting a noisy random ±1 regression (its own optimum has p ≈ 0.5 and a loss
    that stays well above 0) with the EC rule at EC = 0.1 added to the loss, Adam on the latent
    weights, τ and φ: p after each step."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 100)).astype(np.float32)
    target = x @ np.where(rng.random((2, 100)) < 0.5, -1.0, 1.0).astype(np.float32).T
    target += 10 * rng.standard_normal(target.shape).astype(np.float32)
    w = nn.Parameter(rng.uniform(-0.2, 0.2, (2, 100)).astype(np.float32))
    q = SBNN(w.data, SBNNOptions(ec=0.1, gamma=gamma, sbnn_ste="identity"))
    opt = build_optimizer("adam", [w, q.tau, q.phi], 0.01, 0.0)
    history = []
    for _ in range(steps):
        err = F.matmul(Tensor(x), F.transpose(q(w))) - Tensor(target)
        loss = F.mean(err * err)
        term = SBNN.loss_term([q], [w], float(loss.data))
        opt.zero_grad()
        (loss + term if term is not None else loss).backward()
        opt.step()
        q.project_weights(w.data)
        history.append(float((w.data >= 0).mean()))
    return history


def test_the_ec_rule_pushes_the_fraction_under_ec_on_a_toy_layer():
    with_rule, without = _toy_run(gamma=0.5), _toy_run(gamma=0.0)
    assert with_rule[0] > 0.4 and without[0] > 0.4
    reached = next(i for i, p in enumerate(with_rule) if p <= 0.1)  # StopIteration: never reached
    assert reached < 50
    # then it stays there: above EC + 10⁻⁴ the push returns, at most a few of the 200 weights over
    assert max(with_rule[reached:]) <= 0.1 + 0.02
    assert min(without) > 0.4  # the data loss alone keeps about half the weights at β


def test_a_short_digits_run_reaches_the_expected_connections(tmp_path):
    """The released rule's push scales with the loss, so a short run on 512 digits needs a loss that
    does not vanish (label smoothing) and a large γ; EC = 0.2 from p ≈ 0.5 in 6 epochs."""
    cfg = TrainConfig(model="digits_cnn", dataset="digits", epochs=6, batch_size=32, lr=0.01, optimizer="adam",
                      weight_decay=0.0, label_smoothing=0.2, seed=0, limit_train=512, limit_test=256,
                      method="sbnn", ec=0.2, gamma=0.5)
    trainer = Trainer(cfg, tmp_path, progress=False)
    assert 0.45 < _fraction_at_beta(trainer.model) < 0.55
    summary = trainer.run()
    p = _fraction_at_beta(trainer.model)
    assert p <= cfg.ec
    assert summary["test_accuracy"] > 0.7
    assert summary["bits_per_weight"] == 1.0  # the paper's formula: 1 bit per weight, whatever p
    layers = [(m.weight.data, m.weight_quantizer) for _, m in _sbnn_layers(trainer.model)]
    n = sum(w.size for w, _ in layers)
    entropy = sum(w.size * binary_entropy(float((w >= 0).mean())) for w, _ in layers) / n
    assert summary["entropy_bits_per_weight"] == pytest.approx(entropy) and entropy < binary_entropy(0.25)
    assert all(np.abs(w).max() <= 1.5 for w, _ in layers)


def test_resume_continues_an_sbnn_run_exactly(tmp_path):
    """t, τ, φ, the clamp and the EC term are all replayed by a resumed run, bit for bit."""
    from apb_ref.training import checkpoint
    cfg = TrainConfig(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.01, optimizer="adam",
                      weight_decay=0.0, label_smoothing=0.2, seed=1, limit_train=192, limit_test=64,
                      method="sbnn", ec=0.3, gamma=0.5)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.run()
    first = Trainer(cfg, tmp_path / "b", progress=False)
    first.train_epoch(0)  # a run killed after epoch 1 was checkpointed
    first.end_epoch_schedules()
    first.epoch = 1
    checkpoint.save(tmp_path / "b" / "last.ckpt", first.state())
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    resumed.run(resume=True)
    a, b = dict(straight.model.state_dict()), dict(resumed.model.state_dict())
    assert any(k.endswith("weight_quantizer.t") for k in a) and float(straight.quantizers[0].t) == pytest.approx(10.0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- the closed form -------------------------------------------------------------------------------------
def _cost(w, z, alpha, beta):
    return float(((w - np.where(z, beta, alpha)) ** 2).sum())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 9), data=st.data())
def test_closed_form_is_optimal_against_brute_force(n, data):
    """Over every split with k weights at β and every α ≤ β, none is closer to w than the closed form
    (for a split whose β-mean is below its α-mean, the best α ≤ β is α = β = mean(w))."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    w = rng.standard_normal(n) * data.draw(st.sampled_from([0.1, 1.0, 5.0]))
    k = data.draw(st.integers(1, n - 1))
    z, alpha, beta = closed_form(w, k / n)
    assert z.sum() == k and alpha <= beta
    best = _cost(w, z, alpha, beta)
    for chosen in itertools.combinations(range(n), k):
        zz = np.zeros(n, bool)
        zz[list(chosen)] = True
        a, b = w[~zz].mean(), w[zz].mean()
        cost = _cost(w, zz, a, b) if b >= a else float(((w - w.mean()) ** 2).sum())
        assert best <= cost + 1e-9


def test_closed_form_initialisation_and_post_training_quantization():
    # initialisation: each layer starts at the closed form of its initial weights, a fraction EC at β
    fp = build("digits_cnn", in_channels=1, image_size=8, seed=3)
    model = build("digits_cnn", in_channels=1, image_size=8, seed=3, method="sbnn",
                  options=SBNNOptions(sbnn_init="closed_form", ec=0.05))
    fp_weights = {name: m.weight.data.copy() for name, m in fp.named_modules() if isinstance(m, nn.Conv2d)}
    for name, layer in _sbnn_layers(model):
        w0 = fp_weights[name]
        z, alpha, beta = closed_form(w0, 0.05)
        assert layer.weight.data.dtype == np.float32
        np.testing.assert_array_equal(layer.weight.data >= 0, z)  # the latent signs are the split
        np.testing.assert_allclose(layer.weight_quantizer(layer.weight).data, np.where(z, beta, alpha), rtol=1e-5)
        assert z.sum() == math.floor(0.05 * w0.size)
    # post-training: a float model's weights loaded into the SBNN architecture, then quantized in one shot
    target = build("digits_cnn", in_channels=1, image_size=8, seed=4, method="sbnn", options=SBNNOptions(ec=0.1))
    target.load_state_dict(fp.state_dict(), strict=False)
    quantize_model(target, 0.02)
    for name, layer in _sbnn_layers(target):
        z, alpha, beta = closed_form(fp_weights[name], 0.02)
        np.testing.assert_allclose(layer.weight_quantizer(layer.weight).data, np.where(z, beta, alpha), rtol=1e-5)


# --- the coder -------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), density=st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 1.0]),
       seed=st.integers(0, 2**31))
def test_rice_coder_round_trips_random_masks(n, density, seed):
    mask = np.random.default_rng(seed).random(n) < density
    positions = np.flatnonzero(mask)
    k, quotients, remainders = rice_encode(positions)
    back = rice_decode(quotients, remainders, len(positions), k, n)
    assert back.dtype == np.int64 and np.array_equal(back, positions)
    gaps = rice_gaps(positions)
    bits = rice_bits(gaps, k)
    assert bits == min(rice_bits(gaps, j) for j in range(MAX_RICE_K + 1))  # the best parameter
    assert len(quotients) + len(remainders) <= -(-bits // 8) + 1  # the code's bits, padded to bytes


@pytest.mark.parametrize("p", [0.1, 0.05, 0.02, 0.01, 0.002])
def test_rice_code_is_within_ten_percent_of_the_entropy(p):
    n = 200_000
    mask = np.random.default_rng(int(p * 1e4)).random(n) < p
    _, quotients, remainders = rice_encode(np.flatnonzero(mask))
    bound = n * binary_entropy(float(mask.mean()))
    assert 8 * (len(quotients) + len(remainders)) <= 1.1 * bound


def _stream(n=500, p=0.1, seed=0):
    positions = np.flatnonzero(np.random.default_rng(seed).random(n) < p)
    return positions, *rice_encode(positions)


@pytest.mark.parametrize("damage", ["truncated", "extra byte", "count", "length", "padding", "huge count", "k",
                                    "dtype", "no ones", "remainder bytes"])
def test_rice_decode_refuses_inconsistent_streams(damage):
    positions, k, q, r = _stream()
    count, length = len(positions), 500
    if damage == "truncated":
        q = q[:-3]
    elif damage == "extra byte":
        q = np.concatenate([q, np.zeros(1, np.uint8)])
    elif damage == "count":
        count += 1
    elif damage == "length":
        length = int(positions[-1])  # the last position must be < length
    elif damage == "padding":
        r = r.copy()
        r[-1] |= 1 if (count * k) % 8 else 0
        if not (count * k) % 8:
            pytest.skip("no padding bits in this stream")
    elif damage == "huge count":
        count = 10**15
    elif damage == "k":
        k = MAX_RICE_K + 1
    elif damage == "dtype":
        q = q.astype(np.int64)
    elif damage == "no ones":
        q = np.zeros_like(q)
    elif damage == "remainder bytes":
        r = r[:-1]
    with pytest.raises(ValueError, match="rice_decode"):
        rice_decode(q, r, count, k, length)


@settings(max_examples=150, deadline=None)
@given(q=st.binary(max_size=64), r=st.binary(max_size=64), count=st.integers(0, 2**62),
       k=st.integers(0, MAX_RICE_K), length=st.integers(0, 2**62))
def test_rice_decode_of_arbitrary_bytes_is_an_error_or_valid_positions(q, r, count, k, length):
    """Hostile streams: a ValueError or strictly increasing positions in [0, length), always fast."""
    start = time.perf_counter()
    try:
        positions = rice_decode(np.frombuffer(q, np.uint8), np.frombuffer(r, np.uint8), count, k, length)
    except ValueError:
        pass
    else:
        assert len(positions) == count and (np.diff(positions) > 0).all()
        assert count == 0 or 0 <= positions[0] and positions[-1] < length
    assert time.perf_counter() - start < 1.0


# --- memory: the summary and the file --------------------------------------------------------------------
def test_memory_reports_one_bit_the_entropy_bound_and_the_coded_file():
    """Layers at p = 0.05 (the closed form): the formula counts 1 bit per weight, the entropy bound is
    H(p), and the file stores each layer's Golomb-Rice streams (within 10 % of N·H(p)) plus α, β."""
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "image_size": 16}
    model = build(**args, method="sbnn", options=SBNNOptions(sbnn_init="closed_form", ec=0.05)).eval()
    memory = packed_memory(model, args)
    s = summarize(model, (1, 16, 16), **memory)
    packed = export_model(model, args)
    assert s.packed_bytes == len(packed.to_bytes())
    assert s.bits_per_weight == 1.0
    layers = dict(_sbnn_layers(model))
    for row in s.layers:
        if not row.compressed:
            assert row.entropy_bits is None
            continue
        w = layers[row.name].weight.data
        p = float((w >= 0).mean())
        assert p == pytest.approx(0.05, abs=1e-3)
        assert row.entropy_bits == pytest.approx(w.size * binary_entropy(p))
        stream = sum(packed.tensors[f"{row.name}.{t}"].nbytes for t in ("rice_quotients", "rice_remainders"))
        assert row.stored_bytes == stream + 8  # the two streams and α, β (float32); no bias in ResNet-20
        coded = layers[row.name].weight_quantizer.coded_bits(w)
        assert stream == pytest.approx(coded / 8, abs=2)  # the code's bits, each stream padded to a byte
        assert coded <= 1.1 * row.entropy_bits
        spec = packed.header["layers"][row.name]
        assert spec["minority"] == "beta" and spec["positions"] == int((w >= 0).sum())
    assert s.entropy_bits_per_weight == pytest.approx(binary_entropy(0.05), rel=0.02)
    assert s.packed_bits_per_weight < 0.33  # H(0.05) = 0.286 plus the code's few percent and α, β
    assert "entropy bound" in s.table()


def test_a_file_with_a_damaged_stream_is_refused_before_it_is_built():
    args = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8}
    model = build(**args, method="sbnn", options=SBNNOptions(sbnn_init="closed_form", ec=0.1)).eval()
    good = export_model(model, args)
    validate_packed(parse_packed(good.to_bytes()))
    name = next(n for n, spec in good.header["layers"].items() if spec["kind"] == "sbnn")

    def damaged(change):
        packed = parse_packed(good.to_bytes())
        change(packed.header["layers"][name], packed.tensors)
        return parse_packed(packed.to_bytes())

    cases = [
        (lambda s, t: t.__setitem__(f"{name}.rice_quotients", t[f"{name}.rice_quotients"][:-1]), "rice_quotients"),
        (lambda s, t: s.__setitem__("positions", s["positions"] + 1), "rice_quotients"),
        (lambda s, t: s.__setitem__("positions", 10**9), "positions"),
        (lambda s, t: s.__setitem__("rice_k", 99), "rice_k"),
        (lambda s, t: s.__setitem__("minority", "gamma"), "minority"),
        (lambda s, t: t.__setitem__(f"{name}.levels", np.array([np.nan, 1], np.float32)), "levels"),
        (lambda s, t: t.__setitem__(f"{name}.rice_remainders", t[f"{name}.rice_remainders"].astype(np.uint16)),
         "rice_remainders"),
    ]
    for change, field in cases:
        with pytest.raises(ValueError, match=field):
            validate_packed(damaged(change))
