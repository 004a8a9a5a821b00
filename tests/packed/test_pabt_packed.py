"""PaBT's packed forms (METHODS §2.6): a multi-bit layer runs as one bgemm_1x1 per live binary
convolution, a layer with one left as `bnn`'s packed form; predictions equal the float model's."""
import json
from functools import partial

import numpy as np
import pytest

from apb_ref import kernels
from apb_ref.autograd import Tensor, no_grad
from apb_ref.models import build
from apb_ref.packed import PackedNetwork, export_model, parse_packed
from apb_ref.packed.format import PackedModel
from apb_ref.packed.layers import PackedConv2d, PackedPaBT
from apb_ref.packed.schema import validate_packed
from apb_ref.quant import QuantLinear, quantized_layers
from apb_ref.quant.pabt import PaBT, PaBTOptions

LOGIT_RTOL = 1e-4  # as tests/packed/test_export_infer.py
ARGS = {"name": "resnet20", "num_classes": 10, "in_channels": 3, "image_size": 16, "act": "hardtanh"}


def _model(stage: str, bases: int = 2, seed: int = 0):
    """A ResNet-20 under PaBT with M = N = `bases`, its binary convolutions pruned as at a stage of
    training: "start" (none), "mid" (layers with one term gone, with a whole base dropped, with both
    sides reduced), "final" (one term per layer), plus learned β and non-trivial BatchNorms."""
    model = build(**{k: v for k, v in ARGS.items()}, seed=seed, method="pabt",
                  options=PaBTOptions(pabt_weight_bases=bases, pabt_act_bases=bases))
    rng = np.random.default_rng(seed)
    for n, (_, m) in enumerate(quantized_layers(model)):
        q = m.weight_quantizer
        q.beta.data[...] = rng.uniform(0.2, 1.0, q.beta.shape)
        q.importance[...] = rng.uniform(0, 1, q.importance.shape)
        removals = {"start": 0, "mid": n % q.alive.size, "final": q.alive.size - 1}[stage]
        for _ in range(removals):
            q.remove_least_important()
    for _, m in model.named_modules():
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape) * rng.choice([-1, 1], m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    return model.eval()


@pytest.mark.parametrize("backend", kernels.available_backends())
@pytest.mark.parametrize("stage, bases", [("start", 2), ("mid", 2), ("final", 2), ("mid", 3)])
def test_packed_inference_equals_the_float_forward(stage, bases, backend):
    model = _model(stage, bases)
    packed = export_model(model, ARGS)
    kinds = [s["kind"] for name, s in packed.header["layers"].items() if s["kind"] not in ("float", "affine")]
    widths = [(m.weight_quantizer.weight_bits, m.weight_quantizer.act_bits) for _, m in quantized_layers(model)]
    if stage == "final":  # a BNN: every compressed layer in bnn's packed form, on 1-bit activations
        assert set(kinds) == {"bnn"} and set(widths) == {(1, 1)}
        assert all(s["act_bits"] == 1 for s in packed.header["layers"].values() if s["kind"] == "bnn")
    elif stage == "start":
        assert set(kinds) == {"pabt"} and set(widths) == {(bases, bases)}
    else:  # layers with one term gone, with a base dropped, with one term left (bnn's form)
        assert "pabt" in kinds and len(set(widths)) > 2 and (bases, bases) in widths
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
    with kernels.use_backend(backend):
        network = PackedNetwork(parse_packed(packed.to_bytes()))
        got = network.logits(x)
    runs = {"bnn": PackedConv2d, "pabt": PackedPaBT}
    assert [type(m) for m in network.model.modules() if isinstance(m, (PackedConv2d, PackedPaBT))] == [runs[k] for k in kinds]
    assert sum("folded" in getattr(m, "name", "") for m in network.model.modules()) == 18
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGIT_RTOL * np.abs(expected).max())
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_each_term_is_one_bgemm_1x1_and_the_linear_path_matches(monkeypatch):
    """A linear PaBT layer with three live terms: packed output equals the float one, from exactly
    three bgemm_1x1 calls (one per live binary convolution)."""
    rng = np.random.default_rng(0)
    layer = QuantLinear(70, 6, bias=True, rng=rng, weight_quantizer=partial(PaBT, options=PaBTOptions()))
    q = layer.weight_quantizer
    q.alive[0, 1], q.gates.data[0, 1] = False, 0
    q.beta.data[...] = [0.4, 0.9]
    x = rng.uniform(-1.3, 1.3, (7, 70)).astype(np.float32)
    with no_grad():
        expected = layer(Tensor(x)).data
    tensors, spec = q.pack(layer.weight.data)
    tensors = {f"l.{k}": v for k, v in tensors.items()} | {"l.bias": layer.bias.data}
    spec = {"kind": "pabt", "weight_shape": [6, 70], "k": 70, **spec}
    assert spec["terms"] == [[0, 0], [1, 0], [1, 1]]
    calls = []
    real = kernels.bgemm_1x1
    monkeypatch.setattr(kernels, "bgemm_1x1", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = PackedPaBT("l", spec, tensors)(Tensor(x)).data
    assert len(calls) == 3
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _pabt_file():
    packed = export_model(_model("mid"), ARGS)
    name = next(n for n, s in packed.header["layers"].items() if s["kind"] == "pabt" and len(s["terms"]) == 3)
    return packed, name


@pytest.mark.parametrize("edit, field", [
    (lambda s, t, n: s["terms"].append(list(s["terms"][0])), "terms"),  # a term twice
    (lambda s, t, n: s.update(terms=[p for p in s["terms"] if p[0] != 1]), "planes"),  # plane 1 stored, unused
    (lambda s, t, n: s.update(terms=s["terms"] + [[2, 0]]), "planes"),  # a plane that is not stored
    (lambda s, t, n: s.update(terms=[[0, 0], [2, 1]]), "terms"),  # plane 1 skipped
    (lambda s, t, n: t.update({f"{n}.thresholds": np.zeros(3, np.float32)}), "thresholds"),
    (lambda s, t, n: t.update({f"{n}.scales": t[f"{n}.scales"][:2]}), "scales"),
    (lambda s, t, n: t[f"{n}.scales"].__setitem__((0, 0), np.nan), "scales"),
    (lambda s, t, n: s.update(act_bits=2), "act_bits"),
])
def test_the_schema_refuses_inconsistent_pabt_layers(edit, field):
    packed, name = _pabt_file()
    validate_packed(packed)
    header = json.loads(json.dumps(packed.header))
    tensors = {k: v.copy() for k, v in packed.tensors.items()}
    edit(header["layers"][name], tensors, name)
    with pytest.raises(ValueError, match=field):
        validate_packed(PackedModel(header, tensors))
