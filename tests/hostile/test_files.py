"""Nothing read from a file is trusted: hostile `.apbz` files, checkpoints, IDX files and CIFAR
pickles either load (and a packed model gives finite logits) or fail with one ValueError naming the
file (and the field); never another exception, never a hang, never an allocation beyond a small
multiple of the file's size (tracemalloc peak, `strategies_files.memory_bound`).

Fuzzing is structure-aware (strategies_files.py): the header JSON, the tensor table, the tensors,
the checkpoint's metadata and members are edited and the file re-sealed (CRC recomputed, zip
rewritten), so the structure checks, not the checksum, must catch the damage. Fast profile here
(`APB_FUZZ_EXAMPLES`, default 60 per target); `benchmarks/fuzz_files.py` runs the long one. Below
the properties, one regression test per finding of the hostile-user test.
"""
import copy
import gzip
import io
import json
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apb_ref.data.cifar import read_cifar10_batch
from apb_ref.data.idx import read_idx
from apb_ref.packed import PackedModel, PackedNetwork, load_packed, parse_packed
from apb_ref.packed.schema import evaluation_normalization, validate_packed
from apb_ref.training import checkpoint
from strategies_files import (EXAMPLES, contained, memory_bound, mutated_apbz, mutated_checkpoint, mutated_tensors,
                              npy_bytes, npz_members, seal_apbz, split_apbz, trainer_like_state, valid_apbz, valid_react_apbz,
                              write_npz)

NAME = "hostile-m.apbz"
X = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
VALID = valid_apbz()
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def run_packed(data: bytes, name: str = NAME) -> np.ndarray:
    packed = parse_packed(data, name)
    validate_packed(packed)  # what network.build_packed runs before building
    logits = PackedNetwork(packed).logits(X)
    assert np.isfinite(logits).all(), "a file that loads must give finite logits"
    return logits


def check_packed(data: bytes) -> None:
    _, _, peak = contained(lambda: run_packed(data), NAME)
    assert peak <= memory_bound(len(data)), f"peak {peak:,} bytes for a {len(data):,}-byte file"


def edit_header(edit, data: bytes = VALID) -> bytes:
    header, blob = split_apbz(data)
    edit(header)
    return seal_apbz(json.dumps(header), blob)


def packed_model(data: bytes = VALID) -> PackedModel:
    return parse_packed(data, NAME)


# --- the properties ------------------------------------------------------------------------------
def test_the_valid_file_runs():
    assert run_packed(VALID).shape == (2, 10)


# every packed layer kind: APB's sign bits + CSR residual, uniform's sign planes, pruning's CSR with
# float32 values and with k-bit codes, SBNN's Golomb-Rice streams, PaBT's sign planes, thresholds and scale rows,
# and the learned per-channel vectors of ReActNet's activations
VALID_BY_METHOD = {"apb": VALID, **{m: valid_apbz(m) for m in ("uniform", "prune", "prune_uniform", "sbnn", "pabt")},
                   "react": valid_react_apbz()}  # ResNet-20 with ReActNet's "params" layers


@pytest.mark.parametrize("method", VALID_BY_METHOD)
def test_each_methods_valid_file_runs(method):
    assert run_packed(VALID_BY_METHOD[method]).shape == (2, 10)


@pytest.mark.parametrize("method", VALID_BY_METHOD)
@FUZZ
@given(st.data())
def test_apbz_header_and_table_edits_are_contained(method, data):
    check_packed(data.draw(mutated_apbz(VALID_BY_METHOD[method])))


@pytest.mark.parametrize("method", VALID_BY_METHOD)
@FUZZ
@given(st.data())
def test_apbz_tensor_edits_are_contained(method, data):
    check_packed(data.draw(mutated_tensors(packed_model(VALID_BY_METHOD[method]))))


CKPT_NAME = "hostile.ckpt"


def check_checkpoint(tmp_path, data: bytes) -> None:
    path = tmp_path / CKPT_NAME
    path.write_bytes(data)
    _, _, peak = contained(lambda: checkpoint.load(path), CKPT_NAME)
    assert peak <= memory_bound(len(data)), f"peak {peak:,} bytes for a {len(data):,}-byte file"


@pytest.fixture(scope="module")
def valid_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "valid.ckpt"
    checkpoint.save(path, trainer_like_state())
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_checkpoint_edits_are_contained(tmp_path_factory, valid_checkpoint, data):
    check_checkpoint(tmp_path_factory.mktemp("fuzz"), data.draw(mutated_checkpoint(valid_checkpoint)))


def test_valid_checkpoint_round_trips(tmp_path, valid_checkpoint):
    path = tmp_path / "v.ckpt"
    path.write_bytes(valid_checkpoint)
    back = checkpoint.load(path)
    assert back["epoch"] == 2 and back["optimizers"][0]["state"][(0, 0)]["step"] == 3
    back["model"]["fc.weight"] += 1  # writeable, like np.load's arrays


# --- one regression test per finding -------------------------------------------------------------
def refused(fn, *fields) -> str:
    with pytest.raises(ValueError) as e:
        fn()
    message = str(e.value)
    assert NAME in message or CKPT_NAME in message or "hostile" in message, message
    for f in fields:
        assert f in message, message
    assert "\n" not in message
    return message


def test_empty_layer_table_is_refused():
    refused(lambda: run_packed(edit_header(lambda h: h.update(layers={}))), "header.layers", "empty")


def test_missing_tensor_is_refused():
    header, blob = split_apbz(VALID)
    header["tensors"] = [t for t in header["tensors"] if t["name"] != "features.3.alpha"]
    refused(lambda: run_packed(seal_apbz(json.dumps(header), blob)), 'tensors["features.3.alpha"]', "missing")


def test_csr_index_of_2_to_the_32_is_refused_not_wrapped():
    packed = packed_model()
    indices = packed.tensors["features.3.csr_indices"].astype(np.uint64)
    indices[0] += np.uint64(2**32)  # an int32 cast would wrap it back to a valid column
    data = PackedModel(packed.header, {**packed.tensors, "features.3.csr_indices": indices}).to_bytes()
    refused(lambda: run_packed(data), 'tensors["features.3.csr_indices"]', "column indices")


def test_nan_weights_are_refused_not_reported_as_ten_percent():
    packed = packed_model()
    w = packed.tensors["fc.weight"].copy()
    w[0, 0] = np.nan
    data = PackedModel(packed.header, {**packed.tensors, "fc.weight": w}).to_bytes()
    refused(lambda: run_packed(data), 'tensors["fc.weight"]', "finite")


def test_header_without_normalization_is_refused_for_evaluation():
    header = packed_model(edit_header(lambda h: h.pop("normalization"))).header
    refused(lambda: evaluation_normalization(header, NAME), "header.normalization")
    mean, std = evaluation_normalization(packed_model().header, NAME)
    assert mean.shape == std.shape == (1, 1, 1, 1)


@pytest.mark.parametrize("edit", [lambda h: h.update(layers=[]), lambda h: h.update(build="digits_cnn"),
                                  lambda h: h["layers"].update({"fc": ["float"]}),
                                  lambda h: h.update(normalization=[0.3, 0.4]),
                                  lambda h: h["tensors"].append("x")])
def test_header_of_the_wrong_json_type_is_one_value_error(edit):
    refused(lambda: run_packed(edit_header(edit)), "header")
    header, blob = split_apbz(VALID)
    refused(lambda: parse_packed(seal_apbz(json.dumps([header]), blob), NAME), "header")


def test_deeply_nested_header_is_refused_without_recursion_error():
    header, blob = split_apbz(VALID)
    text = json.dumps(header)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(lambda: parse_packed(seal_apbz(text, blob), NAME), "unreadable header")
    refused(lambda: parse_packed(seal_apbz(json.dumps(header).replace('"act": "relu"', '"act": NaN'), blob), NAME))


def test_api_raises_value_error_where_it_raised_type_or_attribute_error():
    bad = edit_header(lambda h: h["layers"]["features.3"].update(weight_shape="abc"))
    message = refused(lambda: run_packed(bad), 'header.layers["features.3"].weight_shape')
    assert 'got "abc"' in message
    refused(lambda: validate_packed(PackedModel({"build": 3, "layers": {}}, {}), NAME), "header.build")


def test_million_input_channels_claim_is_refused_before_building():
    data = edit_header(lambda h: h["build"].update(in_channels=10**6))
    assert len(data) < 50_000
    _, error, peak = contained(lambda: run_packed(data), NAME)
    assert error is not None and "header.build" in str(error), error
    assert peak < 8 << 20, f"{peak:,} bytes allocated before refusing"


def test_tensor_table_types_are_checked_before_use():
    for key, value in [("shape", "abc"), ("shape", [2**40, 2**40]), ("dtype", "object"), ("offset", -8),
                       ("nbytes", 1.5), ("name", 5)]:
        header, blob = split_apbz(VALID)
        header["tensors"][0][key] = value
        refused(lambda: parse_packed(seal_apbz(json.dumps(header), blob), NAME), "header.tensors[0]")


def _save(tmp_path, tree=None, members=None) -> str:
    path = tmp_path / CKPT_NAME
    if members is None:
        checkpoint.save(path, tree)
    else:
        path.write_bytes(write_npz(members, {n: True for n in members}))
    return path


def test_checkpoint_zip_bomb_is_refused_before_inflating(tmp_path):
    good = _save(tmp_path, trainer_like_state())
    members = npz_members(good.read_bytes())
    members["a0.npy"] = npy_bytes(np.zeros(64 << 20, np.uint8))  # 64 MB of zeros: ~65 KB deflated
    path = _save(tmp_path, members=members)
    assert path.stat().st_size < 200_000
    _, error, peak = contained(lambda: checkpoint.load(path), CKPT_NAME)
    assert error is not None and "zip bomb" in str(error), error
    assert peak < 8 << 20, f"{peak:,} bytes allocated before refusing"


def test_checkpoint_members_are_read_lazily(tmp_path):
    members = npz_members(_save(tmp_path, trainer_like_state()).read_bytes())
    members["unused.npy"] = npy_bytes(np.ones(1 << 20, np.uint8))  # in the file, referenced by nothing
    path = _save(tmp_path, members=members)
    _, error, peak = contained(lambda: checkpoint.load(path), CKPT_NAME)
    assert error is None and peak < 512 << 10, (error, peak)


def _with_meta(tmp_path, edit) -> str:
    members = npz_members(_save(tmp_path, trainer_like_state()).read_bytes())
    meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
    text = edit(meta)
    members["__meta__.npy"] = npy_bytes(np.frombuffer((text if isinstance(text, str) else json.dumps(meta)).encode(), np.uint8))
    path = tmp_path / CKPT_NAME
    path.write_bytes(write_npz(members))
    return path


def _tree_field(meta, key):
    return next(kv for kv in meta["tree"]["__items__"] if kv[0] == key)


def test_checkpoint_metadata_is_range_checked(tmp_path):
    for key, value, field in [("epoch", 1e30, "tree.epoch"), ("epoch", -1, "tree.epoch"),
                              ("best_accuracy", 7.0, "tree.best_accuracy"), ("train_seconds", -1, "tree.train_seconds"),
                              ("images_seen", "many", "tree.images_seen"), ("config", [], "tree.config"),
                              ("optimizers", {"x": 1}, "tree.optimizers")]:
        path = _with_meta(tmp_path, lambda m: _tree_field(m, key).__setitem__(1, value))
        refused(lambda: checkpoint.load(path), field)


def test_checkpoint_metadata_of_the_wrong_type_or_deeply_nested_is_one_value_error(tmp_path):
    edits = [lambda m: json.dumps([m]), lambda m: m.update(tree=[1, 2]), lambda m: m.update(tree={"__items__": 5}),
                 lambda m: m["tree"]["__items__"].append([[1], 2]), lambda m: m.update(tree={"__array__": "nope"}),
                 lambda m: '{"format": "apb-ref-checkpoint", "version": 1, "tree": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 lambda m: json.dumps(m).replace('"best_accuracy", 0.5', '"best_accuracy", NaN')]
    for edit in edits:
        path = _with_meta(tmp_path, edit)
        assert "NaN" in path.read_bytes().decode("latin1") or edit is not edits[-1]
        refused(lambda: checkpoint.load(path))


def test_cifar_zero_stride_pickle_is_refused(tmp_path):
    class ZeroStride:  # what a hostile pickle can say: ndarray(shape, dtype, buffer, offset, strides)
        def __reduce__(self):
            return (np.ndarray, ((60_000, 3072), np.dtype(np.uint8), b"x", 0, (0, 0)))

    path = tmp_path / "hostile_batch"
    path.write_bytes(pickle.dumps({b"data": ZeroStride(), b"labels": [0] * 3}, protocol=2))
    assert path.stat().st_size < 400
    _, error, peak = contained(lambda: read_cifar10_batch(path), "hostile_batch")
    assert error is not None and peak < 1 << 20, (error, peak)


def test_cifar_large_empty_array_is_refused(tmp_path):
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own _reconstruct: normally given shape (0,)

    class BigEmpty:
        def __reduce__(self):
            return (reconstruct, (np.ndarray, (10**9,), b"b"))

    path = tmp_path / "hostile_batch"
    path.write_bytes(pickle.dumps({b"data": BigEmpty(), b"labels": [0]}, protocol=2))
    _, error, peak = contained(lambda: read_cifar10_batch(path), "hostile_batch")
    assert error is not None and "_reconstruct" in str(error) and peak < 1 << 20, (error, peak)


def test_gzipped_idx_claiming_gigabytes_is_refused_before_reading(tmp_path):
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 60_000, 28_000, 28)  # 47 GB claimed
    path = tmp_path / "hostile-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(head + b"\0" * (3 << 20)))  # 3 MB of zeros: ~3 KB gzipped
    _, error, peak = contained(lambda: read_idx(path), "hostile-images")
    assert error is not None and "implausible size" in str(error), error
    assert peak < 1 << 20, f"{peak:,} bytes allocated before refusing"
    plausible = tmp_path / "hostile-labels-idx1-ubyte.gz"  # within the ratio, but more than the stream holds
    plausible.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2000) + b"\1" * 1000))
    _, error, _ = contained(lambda: read_idx(plausible), "hostile-labels")
    assert error is not None and "truncated" in str(error), error


def test_plain_idx_claim_is_checked_against_the_file_size(tmp_path):
    path = tmp_path / "hostile-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1 << 30) + b"\0" * 10)
    _, error, peak = contained(lambda: read_idx(path), "hostile-idx1")
    assert error is not None and "truncated" in str(error) and peak < 1 << 20, (error, peak)


def test_load_packed_names_the_file(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(edit_header(lambda h: h.update(layers={})))
    refused(lambda: validate_packed(load_packed(path)), str(path))
    with pytest.raises(FileNotFoundError, match="nope.apbz"):
        load_packed(tmp_path / "nope.apbz")


def test_unknown_extra_keys_are_allowed_but_not_passed_on():
    data = edit_header(lambda h: (h.update(future={"x": 1}), h["layers"]["fc"].update(future=2)))
    assert run_packed(data).shape == (2, 10)
    data = edit_header(lambda h: h["build"].update(layers="evil", seed=3))
    assert validate_packed(packed_model(data)) == split_apbz(VALID)[0]["build"]  # build(**these) is safe


def test_a_tensor_no_spec_describes_is_refused():
    """A `planes` tensor beside an APB layer's sign bits used to be read unchecked (the layer looked for
    it in the file, the checks went by the spec): any tensor a spec does not use is now refused."""
    packed = packed_model()
    layer = next(n for n, s in packed.header["layers"].items() if s["kind"] == "apb")
    tensors = dict(packed.tensors)
    tensors[f"{layer}.planes"] = np.full((3, 4, 1), np.uint64(2**64 - 1))
    data = PackedModel(copy.deepcopy(packed.header), tensors).to_bytes()
    _, error, _ = contained(lambda: run_packed(data), NAME)
    assert error is not None and f"{layer}.planes" in str(error) and "none of them uses" in str(error)
