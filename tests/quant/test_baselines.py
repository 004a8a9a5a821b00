"""The baselines of the comparison (METHODS §4.2–4.3): uniform (k-bit LSQ), prune (gradual magnitude
pruning) and prune_uniform (pruned k-bit survivors)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apb_ref.autograd import Tensor
from apb_ref.models import build
from apb_ref.packed import export_model, packed_size
from apb_ref.quant.packing import pack_codes, smallest_uint, unpack_codes
from apb_ref.quant.prune import Prune, PruneOptions, cubic_density, magnitude_mask, prune_mask
from apb_ref.quant.prune_uniform import PruneUniform, PruneUniformOptions
from apb_ref.quant.uniform import Uniform, UniformOptions, best_step, sign_planes, uniform_levels, uniform_quantize
from apb_ref.testing import numerical_gradient
from apb_ref.training import TrainConfig, Trainer
from apb_ref.training.summary import index_bits, summarize


# --- uniform ---------------------------------------------------------------------------------------
def test_two_bit_levels_are_the_odd_multiples_of_half_the_step():
    w = np.array([-9.0, -1.2, -0.7, -0.01, 0.0, 0.3, 0.99, 1.0, 1.7, 40.0])
    q = uniform_levels(w, np.asarray(1.0), 2)
    np.testing.assert_array_equal(q, [-1.5, -1.5, -0.5, -0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 1.5])
    assert set(uniform_levels(np.linspace(-5, 5, 1001), np.asarray(0.5), 3)) == {0.25 * u for u in range(-7, 8, 2)}


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_sign_planes_encode_every_level(bits, seed):
    u = np.random.default_rng(seed).choice(np.arange(-(2**bits - 1), 2**bits, 2), size=(3, 17))
    planes = sign_planes(u, bits)
    assert set(np.unique(planes)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(sum(2**p * planes[p] for p in range(bits)), u)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), per_channel=st.booleans())
def test_step_gradient_is_exact_where_weights_are_clipped(seed, per_channel):
    """Outside the range q = s·(±n ∓ ½) is linear in s: there LSQ's step gradient is the true derivative,
    which finite differences see (inside, the floor jumps, and LSQ's surrogate applies)."""
    rng = np.random.default_rng(seed)
    w = rng.choice([-1, 1], size=(3, 5)) * rng.uniform(3.0, 5.0, size=(3, 5))  # |w/s| > 2 for s <= 1
    s = rng.uniform(0.5, 1.0, size=(3, 1)) if per_channel else np.asarray(rng.uniform(0.5, 1.0))
    g = rng.standard_normal(w.shape)
    wt, st_ = Tensor(w.copy(), requires_grad=True), Tensor(s.copy(), requires_grad=True)
    uniform_quantize(wt, st_, 2).backward(g)
    numeric = numerical_gradient(lambda a, b: uniform_quantize(a, b, 2), [w.copy(), s.copy()], g, 1, 1e-6)
    np.testing.assert_allclose(st_.grad, numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(wt.grad, 0)  # clipped: no gradient to the weights


def test_initial_step_beats_lsq_init_and_neighbours():
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    s = best_step(w, 2, per_channel=False)
    err = lambda step: float(((uniform_levels(w, np.asarray(step, np.float32), 2) - w) ** 2).sum())
    lsq = 2 * np.abs(w).mean() / np.sqrt(2)
    assert err(s) <= err(lsq) and err(s) <= err(s * 1.05) and err(s) <= err(s * 0.95)
    assert best_step(w, 2, per_channel=True).shape == (8, 1)


def test_uniform_memory_is_k_bits_and_the_packed_planes_rebuild_the_weights():
    for bits in (2, 3):
        model = build("digits_cnn", in_channels=1, image_size=8, method="uniform", options=UniformOptions(uniform_bits=bits))
        s = summarize(model, (1, 8, 8))
        assert s.bits_per_weight == bits and s.fp_fraction == 0.0
        layer = next(m for m in model.modules() if isinstance(getattr(m, "weight_quantizer", None), Uniform))
        q = layer.weight_quantizer
        tensors, spec = q.pack(layer.weight.data)
        from apb_ref.kernels import unpack_bits
        k = layer.weight.data[0].size
        rebuilt = sum(tensors["alpha"][:, None] * 2**p * unpack_bits(tensors["planes"][p], k) for p in range(bits))
        np.testing.assert_allclose(rebuilt, q(layer.weight).data.reshape(len(rebuilt), -1), rtol=1e-6)
        assert spec["planes"] == bits


# --- prune -----------------------------------------------------------------------------------------
def test_cubic_schedule_runs_from_dense_to_the_target():
    assert cubic_density(0.0, 0.1, 0.2, 0.6) == 1.0 and cubic_density(0.2, 0.1, 0.2, 0.6) == 1.0
    assert cubic_density(0.6, 0.1, 0.2, 0.6) == pytest.approx(0.1) and cubic_density(1.0, 0.1, 0.2, 0.6) == pytest.approx(0.1)
    mid = cubic_density(0.4, 0.1, 0.2, 0.6)
    assert mid == pytest.approx(0.1 + 0.9 * 0.125)  # (1 − ½)³
    ts = np.linspace(0, 1, 50)
    assert np.all(np.diff([cubic_density(t, 0.1, 0.2, 0.6) for t in ts]) <= 0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), density=st.floats(0.01, 1.0))
def test_magnitude_mask_keeps_the_largest_weights(seed, density):
    w = np.random.default_rng(seed).standard_normal((4, 9))
    mask = magnitude_mask(w, density)
    assert mask.sum() == max(1, int(np.floor(density * w.size + 1e-9)))
    if (~mask).any():
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_pruned_weights_get_no_gradient():
    w = np.arange(1.0, 7.0).reshape(2, 3)
    mask = np.array([[True, False, True], [False, True, False]])
    t = Tensor(w.copy(), requires_grad=True)
    prune_mask(t, mask).backward(np.ones_like(w))
    np.testing.assert_array_equal(t.grad, mask.astype(float))
    with pytest.raises(ValueError, match="bool array"):
        prune_mask(t, mask.astype(int))


def _train(tmp_path, **options):
    cfg = TrainConfig(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.05, seed=0,
                      limit_train=512, limit_test=128, **options)
    trainer = Trainer(cfg, tmp_path, progress=False)
    return trainer, trainer.run()


@pytest.mark.parametrize("method, bits, value_bits", [("prune", 3.0, 32), ("prune_uniform", 1.6, 2)])
def test_a_bits_budget_becomes_the_density_and_is_met(tmp_path, method, bits, value_bits):
    trainer, summary = _train(tmp_path, method=method, bits_per_weight=bits, prune_end=0.5)
    b_idx = index_bits(trainer.model)
    density = bits / (value_bits + b_idx)
    for q in trainer.quantizers:
        assert bool(q.schedule_done)
        assert abs(q.keep.mean() - density) <= 1.0 / q.keep.size + 1e-9
    assert summary["bits_per_weight"] <= bits and summary["bits_per_weight"] == pytest.approx(bits, rel=0.01)
    assert summary["budget"]["met"]
    s = summarize(trainer.model, trainer.data.image_shape)
    for row in s.layers:
        if row.compressed:
            kept = row.full + row.quantized
            assert row.bits == kept * (value_bits + b_idx) and row.pruned == row.weights - kept


def test_the_mask_is_frozen_after_the_schedule_ends(tmp_path):
    cfg = TrainConfig(model="digits_cnn", dataset="digits", epochs=2, batch_size=64, lr=0.05, seed=0,
                      limit_train=512, limit_test=128, method="prune", prune_density=0.2, prune_end=0.5)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.run()
    q = trainer.quantizers[0]
    layer = next(m for m in trainer.model.modules() if getattr(m, "weight_quantizer", None) is q)
    before = q.keep.copy()
    layer.weight.data[...] = np.random.default_rng(0).standard_normal(layer.weight.shape)  # new magnitudes
    q.on_step(1.0, layer.weight.data)
    np.testing.assert_array_equal(q.keep, before)
    assert np.all(layer.weight_quantizer(layer.weight).data[~before] == 0)


def test_budget_and_option_errors_name_the_problem():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="full-precision"):
        PruneUniform(w).set_budget(None, 0.1, 16)
    with pytest.raises(ValueError, match="prune_density"):
        Prune(w, PruneOptions(prune_density=0.0))
    with pytest.raises(ValueError, match="prune_start"):
        Prune(w, PruneOptions(prune_start=0.6, prune_end=0.5))
    with pytest.raises(ValueError, match="uniform_bits"):
        TrainConfig(method="uniform", uniform_bits=5).validate()
    with pytest.raises(ValueError, match="needs a method that takes one"):
        TrainConfig(method="uniform", bits_per_weight=2.0).validate()
    q = Prune(w)
    q.set_budget(1.6, None, 16)
    assert q.target == pytest.approx(1.6 / 48)


# --- prune_uniform -----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 70), seed=st.integers(0, 2**31))
def test_codes_round_trip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=n)
    packed = pack_codes(codes, bits)
    assert packed.shape == (bits, -(-n // 8)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, n), codes)


@pytest.mark.parametrize("method, options", [
    ("uniform", UniformOptions()), ("prune", PruneOptions(prune_density=0.25)),
    ("prune_uniform", PruneUniformOptions(prune_density=0.25, uniform_bits=3))])
def test_packed_file_stores_what_the_summary_counts(method, options):
    """The compressed layers' tensors in the packed file hold the counted bits, to whole bytes and
    row pointers; the summary's packed size is the serialised file's."""
    model = build("resnet20", in_channels=1, image_size=16, num_classes=10, method=method, options=options).eval()
    for m in model.modules():
        if hasattr(getattr(m, "weight_quantizer", None), "keep"):
            m.weight_quantizer.on_step(1.0, m.weight.data)
    args = {"name": "resnet20", "num_classes": 10, "in_channels": 1, "image_size": 16}
    packed = export_model(model, args)
    s = summarize(model, (1, 16, 16), packed_bytes=packed_size(model, args))
    assert s.packed_bytes == len(packed.to_bytes())
    for row in s.layers:
        if not row.compressed:
            continue
        stored = sum(a.nbytes for name, a in packed.tensors.items()
                     if name.startswith(row.name + ".") and not name.endswith(("csr_indptr", "alpha", "bias")))
        # what the file stores: low-bit weights at their bits (sign planes padded to whole 64-bit words
        # per row), float32 values, and an index per sparse weight at the smallest width holding K − 1
        k = int(np.prod(row.shape[1:]))
        width = smallest_uint(k - 1).itemsize
        if method == "uniform":
            expected = row.quantized_bits * row.shape[0] * -(-k // 64) * 8
        elif method == "prune":
            expected = row.full * (4 + width)
        else:
            expected = row.quantized_bits * -(-row.quantized // 8) + row.quantized * width
        assert stored == expected, row.name
        # the paper's formula charges b_idx >= the stored index width: never less than the file
        assert row.bits >= 8 * (stored - (row.quantized_bits * row.shape[0] * 8 if method == "uniform" else 8))


def test_prune_uniform_refits_its_step_to_the_survivors():
    """The step follows the survivors while the schedule prunes (every 5 % fewer kept) and at the freeze;
    without that it stays fitted to the dense layer and clips most survivors."""
    w = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)
    q = PruneUniform(w, PruneUniformOptions(prune_density=0.1, prune_start=0.0, prune_end=0.5))
    dense_step = float(q.step.data)
    q.on_step(0.1, w)
    assert q.keep.mean() < 0.95 and float(q.step.data) == pytest.approx(float(best_step(w, 2, False, q.keep)))
    q.on_step(0.5, w)
    assert bool(q.schedule_done) and abs(q.keep.mean() - 0.1) < 0.01
    fitted = best_step(w, 2, False, q.keep)
    assert float(q.step.data) == pytest.approx(float(fitted)) and float(fitted) > 2 * dense_step
    q.step.data[...] = 1.0  # after the freeze the step is LSQ's to train: no more refits
    q.on_step(0.9, w)
    assert float(q.step.data) == 1.0


@pytest.mark.parametrize("options, message", [
    ({"method": "prune", "uniform_bits": 4}, "uniform_bits is an option of prune_uniform, uniform"),
    ({"method": "uniform", "prune_density": 0.05}, "prune_density is an option of prune, prune_uniform"),
    ({"method": "bnn", "lr_ab": 0.1}, "lr_ab is an option of apb"),
    ({"method": "prune", "bits_per_weight": 2.0, "prune_density": 0.2}, "not both"),
    ({"method": "prune", "bits_per_weight": 2.0, "budget_weight": 2.0}, "budget_weight tunes a model-wide"),
    ({"method": "apb", "budget_epoch": 0}, "budget_epoch tunes a model-wide"),
    ({"method": "prune_uniform", "fp_fraction": 0.1}, "keeps no full-precision weights"),
])
def test_options_that_would_be_ignored_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()
    TrainConfig(method="prune_uniform", uniform_bits=3, prune_density=0.2).validate()  # its own options
    TrainConfig(method="apb", bits_per_weight=1.5, budget_epoch=0).validate()
