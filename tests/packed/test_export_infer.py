"""Packed export and compressed inference: the file format, and packed inference equal to the float
forward pass with quantized weights (integer popcounts exactly, logits to float32 rounding)."""
import json

import numpy as np
import pytest

from apb_ref import kernels
from apb_ref.autograd import Tensor, no_grad
from apb_ref.cli import main
from apb_ref.packed import export_model, load_packed, packed_size, parse_packed
from apb_ref.packed import PackedNetwork
from apb_ref.packed.layers import PackedLinearCore, PackedSBNN
from apb_ref.models import build
from apb_ref.quant.bnn import BNNOptions
from apb_ref.quant.prune import PruneOptions
from apb_ref.quant.prune_uniform import PruneUniformOptions
from apb_ref.quant.sbnn import SBNNOptions
from apb_ref.quant import quantized_layers
from apb_ref.quant.uniform import UniformOptions
from apb_ref.quant.budget import budgeted_layers

# Logits of the packed path and of the float path differ only by float32 rounding of sums of a few
# thousand products: relative 1e-4 of the logit scale bounds it with a wide margin.
LOGIT_RTOL = 1e-4


def _random_apb_model(act_bits, seed=0, name="resnet20", in_channels=3, image_size=16, method="apb", options=None):
    act = "hardtanh" if act_bits == 1 else "relu"
    model = build(name, in_channels=in_channels, image_size=image_size, num_classes=10, seed=seed,
                  method=method, act_bits=act_bits, act=act, options=options)
    rng = np.random.default_rng(seed)
    for _, m in budgeted_layers(model):
        if method == "apb":  # narrow bands: a few percent of weights stay full precision
            m.weight_quantizer.delta.data[...] = m.weight_quantizer.delta.data * 0.15
        else:  # pruning: the end of its schedule (the options' density)
            m.weight_quantizer.on_step(1.0, m.weight.data)
    if method == "sbnn":  # filters all at α (z ≡ 0) and all at β, layers whose minority is α, τ and φ off ±1
        for i, (_, m) in enumerate(quantized_layers(model)):
            w, q = m.weight.data, m.weight_quantizer
            w[0] = -np.abs(w[0]) - 0.01
            w[1] = np.abs(w[1]) + 0.01
            if i % 3 == 1:
                w *= -1
            q.tau.data[...] = q.tau.data * rng.uniform(0.5, 1.5)
            q.phi.data[...] = q.phi.data + rng.normal(0, 0.5) * q.tau.data
    for _, m in model.named_modules():  # non-trivial folded BatchNorm
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    return model.eval(), {"name": name, "num_classes": 10, "in_channels": in_channels, "image_size": image_size, "act": act}


def _backends():
    return kernels.available_backends()


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("act_bits", [1, 2, 32])
@pytest.mark.parametrize("method, options", [
    ("apb", None), ("bnn", None), ("bnn", BNNOptions(bnn_scale="layer")),
    ("uniform", None), ("uniform", UniformOptions(uniform_bits=3, uniform_scale="channel")),
    ("prune", PruneOptions(prune_density=0.3)),
    ("prune_uniform", PruneUniformOptions(prune_density=0.3)),
    ("prune_uniform", PruneUniformOptions(prune_density=0.5, uniform_bits=4, uniform_scale="channel")),
    ("sbnn", None), ("sbnn", SBNNOptions(sbnn_init="closed_form", ec=0.1))])
def test_packed_inference_equals_the_float_forward(act_bits, backend, method, options):
    model, args = _random_apb_model(act_bits, method=method, options=options)
    if method == "sbnn":  # both minorities coded, and filters at one value, in the file
        specs = [spec for spec in export_model(model, args).header["layers"].values() if spec["kind"] == "sbnn"]
        assert {spec["minority"] for spec in specs} == {"alpha", "beta"}
    if method == "apb":
        assert 0 < sum(m.weight_quantizer.count(m.weight.data).full for _, m in budgeted_layers(model))
    if method.startswith("prune"):
        density = options.prune_density
        assert all(abs(m.weight_quantizer.keep.mean() - density) < 0.01 for _, m in budgeted_layers(model))
    x = np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).data
    with kernels.use_backend(backend):
        network = PackedNetwork(parse_packed(export_model(model, args).to_bytes()))
        got = network.logits(x)
    if method == "sbnn" and act_bits < 32:  # the filters at one value run without a sign row
        assert all(len(m.rows) <= m.out_features - 2 for m in network.model.modules() if isinstance(m, PackedSBNN))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGIT_RTOL * scale)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("backend", _backends())
def test_logits_are_the_same_in_one_batch_in_several_and_with_a_bar(backend):
    """The one-batch path (no progress bar) and the batched one give the same logits, in float32."""
    model, args = _random_apb_model(1)
    x = np.random.default_rng(2).standard_normal((5, 3, 16, 16))  # float64: converted on the way in
    with kernels.use_backend(backend):
        network = PackedNetwork(parse_packed(export_model(model, args).to_bytes()))
        whole = network.logits(x)
        rows = [network.logits(x, batch_size=2), network.logits(x, batch_size=5, progress="eval")]
    assert whole.dtype == np.float32 and whole.shape == (5, 10)
    for got in rows:
        np.testing.assert_allclose(got, whole, rtol=0, atol=LOGIT_RTOL * np.abs(whole).max())
    with pytest.raises(ValueError, match="logits: x holds no images"):
        network.logits(x[:0])


@pytest.mark.parametrize("name, in_channels, image_size, folds", [("resnet20", 3, 16, 18), ("digits_cnn", 1, 8, 2)])
@pytest.mark.parametrize("act_bits", [1, 2, 32])
def test_batchnorms_after_packed_convs_fold_into_them(act_bits, name, in_channels, image_size, folds):
    """Each BatchNorm reading only a 1- or 2-bit packed conv's output (declared pairs in ResNet-20,
    neighbours in a Sequential) is folded into the conv; the logits stay those of the unfolded model."""
    model, args = _random_apb_model(act_bits, name=name, in_channels=in_channels, image_size=image_size)
    for _, m in model.named_modules():  # negative BatchNorm scales too: they flip a channel's sign
        if hasattr(m, "running_var"):
            m.weight.data[::2] *= -1
    packed = parse_packed(export_model(model, args).to_bytes())
    folded, plain = PackedNetwork(packed), PackedNetwork(packed, fold_batchnorm=False)
    identities = [m for _, m in folded.model.named_modules() if "folded" in getattr(m, "name", "")]
    assert len(identities) == (folds if act_bits < 32 else 0)
    x = np.random.default_rng(3).standard_normal((4, in_channels, image_size, image_size)).astype(np.float32)
    want = plain.logits(x)
    np.testing.assert_allclose(folded.logits(x), want, rtol=0, atol=LOGIT_RTOL * np.abs(want).max())


@pytest.mark.parametrize("act_bits", [1, 2])
def test_binary_part_is_an_exact_integer(act_bits):
    """B·X from the popcount kernel equals the ±1 matrix product computed in float64, exactly."""
    model, args = _random_apb_model(act_bits, name="digits_cnn", in_channels=1, image_size=8)
    packed = export_model(model, args)
    name, spec = next((n, s) for n, s in packed.header["layers"].items() if s["kind"] == "apb")
    core = PackedLinearCore(name, spec, packed.tensors)
    rng = np.random.default_rng(2)
    rows = rng.uniform(-1.5, 1.5, size=(37, core.k)).astype(np.float32)
    (sign_bits, _), = core.planes  # APB: one plane of signs
    signs = kernels.unpack_bits(sign_bits, core.k).astype(np.float64)
    if act_bits == 1:
        x = np.where(rows < 0, -1.0, 1.0)
        got = kernels.bgemm_1x1(sign_bits, kernels.pack_bits(x.astype(np.float32)), core.k)
        expected = signs @ x.T
    else:
        v = rng.choice([-3, -1, 1, 3], size=rows.shape).astype(np.int8)
        hi, lo = kernels.pack_2bit(v)
        got = kernels.bgemm_1x2(sign_bits, hi, lo, core.k)
        expected = signs @ v.T.astype(np.float64)
    assert got.dtype.kind == "i" and np.array_equal(got, expected.astype(np.int64))


def test_file_round_trip_and_size_on_disk(tmp_path):
    model, args = _random_apb_model(1, name="digits_cnn", in_channels=1, image_size=8)
    packed = export_model(model, args, {"dataset": "digits", "mean": [0.3], "std": [0.4], "image_shape": [1, 8, 8]})
    nbytes = packed.save(tmp_path / "m.apbz")
    assert (tmp_path / "m.apbz").stat().st_size == nbytes == packed_size(model, args, packed.header["normalization"])
    back = load_packed(tmp_path / "m.apbz")
    assert back.tensors.keys() == packed.tensors.keys()
    for k, v in packed.tensors.items():
        assert back.tensors[k].dtype == v.dtype and np.array_equal(back.tensors[k], v), k
    # indices use the smallest sufficient unsigned type
    idx = [v for k, v in packed.tensors.items() if k.endswith("csr_indices")]
    assert idx and all(v.dtype in (np.uint8, np.uint16) for v in idx)


def test_damaged_files_are_rejected_with_clear_errors(tmp_path):
    model, args = _random_apb_model(1, name="digits_cnn", in_channels=1, image_size=8)
    data = export_model(model, args).to_bytes()
    with pytest.raises(ValueError, match="truncated or corrupted"):
        parse_packed(data[: len(data) // 2], "half.apbz")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        parse_packed(bytes(flipped), "flipped.apbz")
    newer = bytearray(data)
    newer[4] = 99
    with pytest.raises(ValueError, match="version 99"):
        parse_packed(bytes(newer), "newer.apbz")
    with pytest.raises(ValueError, match="not an apb-ref packed model"):
        parse_packed(b"PK\x03\x04" + data[4:], "zip.apbz")
    with pytest.raises(ValueError, match="truncated"):
        parse_packed(b"APBZ", "tiny.apbz")
    with pytest.raises(FileNotFoundError, match="nope.apbz"):
        load_packed(tmp_path / "nope.apbz")


@pytest.mark.parametrize("act_bits", [1, 2, 32])
def test_trained_model_export_reproduces_accuracy_exactly(tmp_path, capsys, act_bits):
    out = tmp_path / "run"
    assert main(["train", "--method", "apb", "--act-bits", str(act_bits), "--epochs", "2", "--limit-train", "400",
                 "--bits-per-weight", "1.4", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("test accuracy")  # --quiet still prints the result line
    assert main(["eval", "--checkpoint", str(out / "last.ckpt"), "--json"]) == 0
    float_report = json.loads(capsys.readouterr().out)
    assert main(["export", str(out / "last.ckpt"), "-o", str(tmp_path / "m.apbz")]) == 0
    exported = capsys.readouterr().out
    assert f"{(tmp_path / 'm.apbz').stat().st_size:,} bytes" in exported
    for backend in _backends():
        assert main(["eval", "--packed", str(tmp_path / "m.apbz"), "--backend", backend, "--json"]) == 0
        packed_report = json.loads(capsys.readouterr().out)
        assert packed_report["test_accuracy"] == float_report["test_accuracy"], backend
    assert main(["summary", str(out / "last.ckpt")]) == 0
    table = capsys.readouterr().out
    assert f"{(tmp_path / 'm.apbz').stat().st_size:,} bytes" in table


def test_two_bit_levels_map_exactly_to_plane_values():
    """The 2-bit path packs cols·6 − 3 in float32: exact for every level, at every rounding edge."""
    from apb_ref.quant.activations import activation_quantizer
    edges = np.array([-1, -0.0, 0, 1 / 6, np.nextafter(1 / 6, 1), 0.5, np.nextafter(0.5, 0), 5 / 6, 1, 2,
                      np.float32(1 / 3), np.float32(2 / 3)], np.float32)
    x = np.concatenate([edges, np.random.default_rng(0).uniform(-0.5, 1.5, 10000).astype(np.float32)])
    v = activation_quantizer(2)(Tensor(x)).data * np.float32(6) - np.float32(3)
    assert v.dtype == np.float32 and set(np.unique(v)) == {-3.0, -1.0, 1.0, 3.0}
