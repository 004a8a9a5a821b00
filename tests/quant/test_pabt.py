"""PaBT, a reconstruction (quant/pabt.py, METHODS §2): ABC-Net multi-bit layers whose binary
convolutions are gated, scored by a Taylor importance and pruned down to a binary network."""
import json
from functools import partial

import numpy as np
import pytest

from apb_ref import nn
from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.cli import main
from apb_ref.models import build
from apb_ref.nn.optim import Adam
from apb_ref.packed import export_model
from apb_ref.packed.export import layer_bytes
from apb_ref.quant import QuantConv2d, quantized_layers
from apb_ref.quant.pabt import PaBT, PaBTOptions, act_thresholds, weight_bases
from apb_ref.training import TrainConfig, Trainer, checkpoint
from apb_ref.training.summary import summarize


def _conv(cin=4, cout=6, k=3, padding=1, seed=0, **options):
    return QuantConv2d(cin, cout, k, 1, padding, rng=np.random.default_rng(seed),
                       weight_quantizer=partial(PaBT, options=PaBTOptions(**options)))


def _sign(x):
    return np.where(x < 0, -1.0, 1.0)


def test_weight_bases_are_abc_nets_shifted_signs_with_least_squares_scales():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3))
    for m, shifts in ((1, [0.0]), (2, [-1.0, 1.0]), (3, [-1.0, 0.0, 1.0])):
        bases, alpha = weight_bases(w, m, per_channel=True)
        for o in range(3):
            row = w[o].ravel()
            want = np.stack([_sign(row - row.mean() + u * row.std()) for u in shifts], axis=1)
            np.testing.assert_array_equal(bases[:, o].reshape(m, -1).T, want)
            fit = want @ alpha[:, o]
            for _ in range(5):  # least squares: any other scales fit worse
                other = alpha[:, o] + rng.normal(0, 0.05, m)
                assert np.sum((row - fit) ** 2) < np.sum((row - want @ other) ** 2)
    _, per_layer = weight_bases(w, 2, per_channel=False)
    assert per_layer.shape == (2, 1)


def test_thresholds_make_the_uniform_quantizer_of_hardtanhs_range():
    x = np.linspace(-1, 1, 400)  # no point exactly on a threshold
    assert act_thresholds(1).tolist() == [0.0]
    np.testing.assert_allclose(act_thresholds(2), [-0.5, 0.5])
    np.testing.assert_allclose(act_thresholds(3), [-2 / 3, 0.0, 2 / 3])
    three = sum(_sign(x - t) for t in act_thresholds(3)) / 3
    assert set(np.round(three, 6)) == {-1.0, round(-1 / 3, 6), round(1 / 3, 6), 1.0}
    levels = np.array([-1, -1 / 3, 1 / 3, 1])
    nearest = levels[np.abs(x[:, None] - levels).argmin(axis=1)]  # the 2-bit uniform quantizer of [−1, 1]
    np.testing.assert_allclose(three, nearest, atol=1e-12)
    assert set(sum(_sign(x - t) for t in act_thresholds(2)) / 2) == {-1.0, 0.0, 1.0}


def test_the_layer_is_the_sum_of_its_gated_binary_convolutions_and_each_gate_gets_its_term():
    """y = Σ_ij c_ij·α_i·β_j·(B_i ⊛ H_j(x)), each term a separate conv of ±1 maps here, and
    ∂L/∂c_ij = ⟨g, α_i·β_j·(B_i ⊛ H_j(x))⟩."""
    layer = _conv(pabt_weight_bases=3, pabt_act_bases=2)
    q = layer.weight_quantizer
    rng = np.random.default_rng(1)
    q.alive[2, 0] = False
    q.gates.data[...] = rng.uniform(0.5, 1.5, q.gates.shape) * q.alive
    q.beta.data[...] = [0.3, 0.8]
    x = rng.uniform(-1.2, 1.2, (2, 4, 5, 5)).astype(np.float32)
    y = layer(Tensor(x))
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    w = layer.weight.data.astype(np.float64)
    bases, alpha = weight_bases(w, 3, per_channel=True)
    total = np.zeros(y.shape)
    for i in range(3):
        for j, t in enumerate(act_thresholds(2)):
            h = _sign(x.astype(np.float64) - t)
            term = F.conv2d(Tensor(h), Tensor(bases[i]), None, 1, 1).data * alpha[i][None, :, None, None] * q.beta.data[j]
            total += q.gates.data[i, j] * q.alive[i, j] * term
            want = (g * term).sum() if q.alive[i, j] else 0.0
            assert q.gates.grad[i, j] == pytest.approx(want, rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(y.data, total, rtol=1e-4, atol=1e-4)


def test_the_schedule_removes_one_term_at_evenly_spaced_fractions_until_one_is_left():
    q = _conv(pabt_prune_start=0.2, pabt_prune_end=0.6).weight_quantizer  # M = N = 2: three removals
    assert [q.removals_due(p) for p in (0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 1.0)] == [0, 0, 1, 1, 2, 2, 3, 3]
    q.importance[...] = [[4.0, 1.0], [3.0, 2.0]]
    w = np.zeros((6, 4, 3, 3), np.float32)
    q.on_step(0.45, w)  # two due at once: the two least important, in order
    assert q.alive.tolist() == [[True, False], [True, False]] and q.gates.data.tolist() == [[1, 0], [1, 0]]
    assert (q.weight_bits, q.act_bits) == (2, 1)
    q.on_step(1.0, w)
    assert q.alive.tolist() == [[True, False], [False, False]] and (q.weight_bits, q.act_bits) == (1, 1)
    q.on_step(1.0, w)
    assert q.alive.sum() == 1
    assert _conv(pabt_weight_bases=1, pabt_act_bases=1).weight_quantizer.removals_due(1.0) == 0


def test_pruning_follows_the_importance_when_one_activation_base_is_useless_by_construction():
    """Inputs below 0.5 make H for the threshold +0.5 constant (−1), and a training-mode BatchNorm
    removes anything constant over the batch: the terms of that base have no effect on the loss, so
    they are pruned first, although they are not first in index order, and the activation bit-width
    falls to 1. Every removal takes the live term of least importance."""
    rng = np.random.default_rng(0)
    layer = _conv(cin=4, cout=5, k=1, padding=0, pabt_importance_decay=0.5)
    q = layer.weight_quantizer
    assert q.thresholds() == {0: -0.5, 1: 0.5}
    bn = nn.BatchNorm2d(5)
    params = [layer.weight, bn.weight, bn.bias]
    opt = Adam(params, lr=0.01)
    order, steps = [], 40
    for step in range(steps):
        x = rng.uniform(-1.0, 0.45, (16, 4, 3, 3)).astype(np.float32)
        labels = (x[:, 0, 1, 1] > -0.3).astype(np.int64) + (x[:, 1, 1, 1] > 0.0)
        loss = F.cross_entropy(F.global_avg_pool2d(bn(layer(Tensor(x)))), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        alive_before = q.alive.copy()
        q.on_step((step + 1) / steps, layer.weight.data)
        for i, j in np.argwhere(alive_before & ~q.alive):
            order.append((int(i), int(j)))
            assert q.importance[i, j] <= q.importance[q.alive].min()  # the least important live term
        if len(order) == 2:
            assert q.act_bits == 1 and q.thresholds() == {0: 0.0}  # the survivor becomes the plain sign
    assert set(order[:2]) == {(0, 1), (1, 1)}  # the useless base's terms, whatever their index
    assert len(order) == 3 and q.alive.sum() == 1 and q.act_bits == q.weight_bits == 1


def test_importance_is_the_running_mean_of_gate_times_gate_gradient():
    q = _conv(pabt_importance_decay=0.75).weight_quantizer
    w = np.zeros((6, 4, 3, 3), np.float32)
    g1, g2 = np.array([[1.0, -2.0], [0.5, 0.0]]), np.array([[-3.0, 1.0], [0.0, 4.0]])
    q.gates.grad = g1.astype(np.float32)
    q.on_step(0.01, w)
    assert q.gates.grad is None  # read once: the gates are in no optimizer
    q.gates.grad = g2.astype(np.float32)
    q.on_step(0.02, w)
    np.testing.assert_allclose(q.importance, 0.75 * 0.25 * np.abs(g1) + 0.25 * np.abs(g2))


def test_bit_width_accounting_on_a_tiny_model_by_hand():
    model = build("digits_cnn", in_channels=1, image_size=8, method="pabt", act="hardtanh")
    (name_a, a), (name_b, b) = quantized_layers(model)
    assert a.weight.shape == (64, 32, 3, 3) and b.weight.shape == (128, 64, 3, 3)
    qa, qb = a.weight_quantizer, b.weight_quantizer
    for i, j in ((0, 1), (1, 0), (1, 1)):  # layer a: one term left, a BNN layer
        qa.alive[i, j], qa.gates.data[i, j] = False, 0
    qb.alive[1, 0], qb.gates.data[1, 0] = False, 0  # layer b: three terms, both bases still in use
    na, nb = 64 * 32 * 9, 128 * 64 * 9
    assert qa.layer_log(a.weight.data) == {**qa.layer_log(a.weight.data), "weight_bits": 1, "act_bits": 1,
                                           "bits_per_weight": 1.0, "binary_convs": 1}
    assert qb.layer_log(b.weight.data) == {**qb.layer_log(b.weight.data), "weight_bits": 2, "act_bits": 2,
                                           "bits_per_weight": 2.0, "binary_convs": 3}
    s = summarize(model, (1, 8, 8))
    rows = {r.name: r for r in s.layers}
    assert (rows[name_a].bits, rows[name_a].quantized_bits, rows[name_a].act_bits) == (na, 1, 1)
    assert (rows[name_b].bits, rows[name_b].quantized_bits, rows[name_b].act_bits) == (2 * nb, 2, 2)
    assert s.bits_per_weight == pytest.approx((na + 2 * nb) / (na + nb))
    stored = layer_bytes(export_model(model, {"name": "digits_cnn", "num_classes": 10, "in_channels": 1,
                                              "image_size": 8, "act": "hardtanh"}))
    # a: bnn's form, 64 rows of ⌈288/64⌉ = 5 words + α per row; b: 2 planes of 128 rows of
    # ⌈576/64⌉ = 9 words, 2 thresholds and 3 scale rows of 128
    assert stored[name_a] == 64 * 5 * 8 + 64 * 4
    assert stored[name_b] == 2 * 128 * 9 * 8 + 2 * 4 + 3 * 128 * 4


def test_options_are_checked_labelled_a_reconstruction_and_activation_bits_refused(capsys):
    assert "reconstruction" in PaBT.description
    with pytest.raises(ValueError, match="pabt_prune_start"):
        PaBTOptions(pabt_prune_start=0.7, pabt_prune_end=0.5).validate()
    with pytest.raises(ValueError, match="pabt_weight_bases"):
        TrainConfig(method="pabt", pabt_weight_bases=4).validate()
    with pytest.raises(ValueError, match="binarizes its layers' inputs itself"):
        build("digits_cnn", in_channels=1, image_size=8, method="pabt", act_bits=1)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "PaBT (reconstruction; no code or full text was published)" in help_text


QUICK = dict(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, optimizer="adam", lr=0.005,
             weight_decay=0.0, limit_train=320, limit_test=128, method="pabt", act="hardtanh",
             pabt_prune_start=0.1, pabt_prune_end=0.5)


def test_digits_training_lowers_the_bit_widths_to_a_binary_network(tmp_path):
    summary = Trainer(TrainConfig(**QUICK), tmp_path, progress=False).run()
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["layers"], records[-1]["layers"]
    assert all(v["binary_convs"] < 4 for v in first.values())  # pruning began in epoch 1
    assert all((v["weight_bits"], v["act_bits"], v["binary_convs"]) == (1, 1, 1) for v in last.values())
    assert records[-1]["bits_per_weight"] == summary["bits_per_weight"] == 1.0
    model = Trainer(TrainConfig(**QUICK), tmp_path / "again", progress=False).model
    model.load_state_dict(checkpoint.load(tmp_path / "last.ckpt")["model"])
    kinds = {s["kind"] for s in export_model(model, {"name": "digits_cnn", "num_classes": 10, "in_channels": 1,
                                                     "image_size": 8, "act": "hardtanh"}).header["layers"].values()}
    assert kinds == {"bnn", "float", "affine"}


def test_resume_continues_a_pruning_run_exactly(tmp_path):
    straight = Trainer(TrainConfig(**QUICK), tmp_path / "a", progress=False)
    straight.run()
    first = Trainer(TrainConfig(**QUICK), tmp_path / "b", progress=False)
    first.train_epoch(0)
    first.end_epoch_schedules()
    first.epoch = 1
    checkpoint.save(tmp_path / "b" / "last.ckpt", first.state())
    resumed = Trainer(TrainConfig(**QUICK), tmp_path / "b", progress=False)
    resumed.run(resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert any("alive" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
