"""APB: the quantizer's defining properties, schedules, memory budget, summary and checkpoints."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apb_ref import nn
from apb_ref.training import checkpoint
from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.models import build
from apb_ref.quant import QuantConv2d
from apb_ref.quant.apb import APB, APBOptions, apb_quantize, band_mask
from apb_ref.quant.budget import MemoryBudget, budgeted_layers, fp_fraction_for_bits
from apb_ref.training.summary import index_bits, summarize
from apb_ref.training import TrainConfig, Trainer

weights = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
                     elements=st.floats(-3, 3, width=32))


@settings(max_examples=60, deadline=None)
@given(w=weights, alpha=st.floats(0.01, 2.0), delta=st.floats(0.01, 2.0))
def test_binarized_entries_are_exactly_plus_minus_alpha_and_the_rest_exactly_w(w, alpha, delta):
    a, d = np.float32(alpha), np.float32(delta)
    q = apb_quantize(Tensor(w), Tensor(np.asarray(a)), Tensor(np.asarray(d))).data
    mask = band_mask(w, a, d, 1.0)
    assert np.array_equal(q[mask], np.where(w[mask] < 0, -a, a))  # exact, sign(0) = +1
    assert np.array_equal(q[~mask], w[~mask])
    assert q.dtype == np.float32


@settings(max_examples=30, deadline=None)
@given(w=weights)
def test_fp_count_is_the_mask_complement(w):
    if w.size < 2:
        return
    q = APB(w)
    count = q.count(w)
    mask = band_mask(w, q.alpha.data, q.delta.data, 1.0)
    assert count.quantized == mask.sum() and count.full == (~mask).sum() and count.total == w.size


def test_init_follows_the_released_code():
    w = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    q = APB(w)
    np.testing.assert_allclose(q.alpha.data, np.abs(w).mean(), rtol=1e-6)
    np.testing.assert_allclose(q.delta.data, 3 * w.std(ddof=1), rtol=1e-5)
    assert q.count(w).full / w.size < 0.001  # almost everything starts binarized (METHODS §1.4)


def test_identity_ste_passes_the_gradient_to_every_latent_weight():
    w = Tensor(np.array([-2.0, -0.5, 0.0, 0.4, 3.0]), requires_grad=True)
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    apb_quantize(w, Tensor(np.asarray(0.5)), Tensor(np.asarray(0.3))).backward(g)
    np.testing.assert_array_equal(w.grad, g)


def _tiny_run(tmp_path, **overrides):
    cfg = dict(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.05, limit_train=192,
               limit_test=64, method="apb")
    cfg.update(overrides)
    return Trainer(TrainConfig(**cfg), tmp_path, progress=False)


def _quantizers(model):
    return [m.weight_quantizer for _, m in budgeted_layers(model)]


def test_fixed_alpha_delta_never_move_and_learned_ones_do(tmp_path):
    fixed = _tiny_run(tmp_path / "fixed", alpha_delta="fixed")
    before = [(q.alpha.data.copy(), q.delta.data.copy()) for q in _quantizers(fixed.model)]
    fixed.run()
    for (a, d), q in zip(before, _quantizers(fixed.model)):
        assert a == q.alpha.data and d == q.delta.data
    assert fixed.method_optimizer is None
    learned = _tiny_run(tmp_path / "learned", lr_ab=0.05)
    before = [q.alpha.data.copy() for q in _quantizers(learned.model)]
    learned.run()
    assert any(a != q.alpha.data for a, q in zip(before, _quantizers(learned.model)))


def test_alpha_delta_have_their_own_adam_group_without_weight_decay(tmp_path):
    t = _tiny_run(tmp_path)
    ab = {id(q.alpha) for q in _quantizers(t.model)} | {id(q.delta) for q in _quantizers(t.model)}
    main = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    method = {id(p) for g in t.method_optimizer.param_groups for p in g["params"]}
    assert method == ab and not (main & ab)
    assert type(t.method_optimizer).__name__ == "Adam"
    assert all(g["weight_decay"] == 0 for g in t.method_optimizer.param_groups)


def test_freezing_freezes(tmp_path):
    t = _tiny_run(tmp_path, epochs=3, lr_ab=0.05, freeze_alpha_delta_epoch=1, freeze_mask_epoch=1)
    t.train_epoch(0)
    t.start_epoch_hooks(1)
    qs = _quantizers(t.model)
    frozen = [(q.alpha.data.copy(), q.delta.data.copy(), q.frozen_mask.copy()) for q in qs]
    t.train_epoch(1)  # the epoch's own hooks run again: idempotent
    for (a, d, mask), (_, layer) in zip(frozen, budgeted_layers(t.model)):
        q = layer.weight_quantizer
        assert a == q.alpha.data and d == q.delta.data
        assert np.array_equal(mask, q.mask(layer.weight.data))  # the latent weights moved, the mask did not
        assert bool(q.mask_is_frozen)


def test_budget_penalty_gradient_widens_the_band_when_over_budget():
    rng = np.random.default_rng(0)
    layer = QuantConv2d(8, 8, 3, weight_quantizer=APB, rng=rng)
    q = layer.weight_quantizer
    q.delta.data[...] = q.delta.data * 0.2  # a narrow band: many full-precision weights
    over = MemoryBudget(fp_fraction=0.01)
    model = nn.Sequential(layer)
    penalty = over.penalty(model)
    assert float(penalty.data) > 0
    penalty.backward()
    assert q.delta.grad < 0  # gradient descent raises δ: the band widens
    under = MemoryBudget(fp_fraction=0.99).penalty(model)
    assert float(under.data) == 0


def test_projection_meets_the_budget_exactly(tmp_path):
    model = build("resnet20", in_channels=1, method="apb")
    for q in _quantizers(model):
        q.delta.data[...] = q.delta.data * 0.3
    before = summarize(model, (1, 32, 32)).fp_fraction
    target = fp_fraction_for_bits(1.6, index_bits(model))
    assert before > target
    MemoryBudget(target).project(model)
    after = summarize(model, (1, 32, 32)).fp_fraction
    assert target - 0.001 <= after <= target
    # under budget the bands narrow until the budget is used
    for q in _quantizers(model):
        q.mask_is_frozen[...] = False
        q.delta.data[...] = q.delta.data * 10
    assert summarize(model, (1, 32, 32)).fp_fraction < target / 10
    MemoryBudget(target).project(model)
    assert target - 0.001 <= summarize(model, (1, 32, 32)).fp_fraction <= target
    # a budget that holds everything keeps every weight in full precision, δ untouched
    deltas = [float(q.delta.data) for q in _quantizers(model)]
    for q in _quantizers(model):
        q.mask_is_frozen[...] = False
    assert MemoryBudget(1.0).project(model) == 0.0
    assert summarize(model, (1, 32, 32)).fp_fraction == 1.0
    assert [float(q.delta.data) for q in _quantizers(model)] == deltas


def test_budget_run_reports_and_meets_its_budget(tmp_path):
    t = _tiny_run(tmp_path, bits_per_weight=1.3, epochs=2)
    s = t.run()
    assert s["budget"]["met"] and s["fp_fraction"] <= s["budget"]["fp_fraction"] + 1e-3
    assert s["bits_per_weight"] <= 1.3 + 1e-6
    for key in ("bits_per_weight", "fp_fraction", "model_bits"):
        assert key in s


def test_summary_equals_hand_counts_on_a_tiny_model():
    rng = np.random.default_rng(0)
    conv = QuantConv2d(2, 3, 3, padding=1, weight_quantizer=APB, rng=rng)
    head = nn.Linear(3 * 4 * 4, 5, rng=rng)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(2), conv, nn.Flatten(), head)
    w = conv.weight.data
    q = conv.weight_quantizer
    q.delta.data[...] = 0.2 * q.delta.data  # some weights full precision
    n_bin = int(band_mask(w, q.alpha.data, q.delta.data, 1.0).sum())
    n_fp = w.size - n_bin
    s = summarize(model, (1, 4, 4))
    b_idx = int(np.floor(np.log2(head.weight.size))) + 1  # the largest tensor is the head's 48x5 weight
    assert s.b_idx == b_idx
    row = {r.name: r for r in s.layers}["2"]
    assert (row.quantized, row.full, row.pruned) == (n_bin, n_fp, 0)
    assert row.bits == n_bin + n_fp * (32 + b_idx)
    assert row.macs == w.size * 16 and row.quantized_macs == n_bin * 16
    other = 4 * 2 + 5  # BN weight, bias, running mean, running var (2 channels each); head bias
    assert s.other_fp_values == other
    assert s.model_bits == row.bits + 32 * (18 + head.weight.size) + 32 * other
    assert "compression ratio" in s.table()


def test_checkpoint_round_trips_alpha_delta_and_frozen_masks(tmp_path):
    model = build("digits_cnn", in_channels=1, image_size=8, method="apb", seed=3)
    for _, m in budgeted_layers(model):
        m.weight_quantizer.alpha.data[...] = 0.123
        m.weight_quantizer.freeze_mask(m.weight.data)
    checkpoint.save(tmp_path / "m.ckpt", {"model": dict(model.state_dict())})
    other = build("digits_cnn", in_channels=1, image_size=8, method="apb", seed=4)
    other.load_state_dict(checkpoint.load(tmp_path / "m.ckpt")["model"])
    for (_, a), (_, b) in zip(budgeted_layers(model), budgeted_layers(other)):
        qa, qb = a.weight_quantizer, b.weight_quantizer
        assert qb.alpha.data == np.float32(0.123) and qb.delta.data == qa.delta.data
        assert bool(qb.mask_is_frozen) and np.array_equal(qa.frozen_mask, qb.frozen_mask)


def test_metrics_log_records_alpha_delta_and_fp_fraction_per_layer(tmp_path):
    import json
    _tiny_run(tmp_path, epochs=1).run()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "fp_fraction" in record and "bits_per_weight" in record
    layers = record["layers"]
    assert layers and all({"alpha", "delta", "fp_fraction"} <= set(v) for v in layers.values())


def test_bad_apb_options_raise(tmp_path):
    with pytest.raises(ValueError, match="alpha_delta"):
        APB(np.ones(4, np.float32), APBOptions(alpha_delta="sometimes"))
    with pytest.raises(ValueError, match="bits_per_weight"):
        fp_fraction_for_bits(0.5, 16)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(method="apb", bits_per_weight=1.5, fp_fraction=0.01).validate()
    with pytest.raises(ValueError, match="needs a method that takes one"):
        TrainConfig(bits_per_weight=1.5).validate()
