"""Hostile files, made structure-aware: a valid small `.apbz` and checkpoint, and hypothesis
strategies that mutate what they mean (header JSON, tensor table, tensor values, npz members) and
then re-seal them (recompute the CRC, rewrite a valid zip), so that only the readers' structure
checks, never the checksum, can catch the damage.

`contained(fn, name)` is the property every reader must keep: `fn()` works, or raises one
ValueError (or FileNotFoundError) whose one-line message names the file; never another exception,
and never a large allocation (the peak of `tracemalloc`, which sees NumPy's allocations too, stays
under `memory_bound(file size)`).
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
from hypothesis import strategies as st

from apb_ref.models import build
from apb_ref.packed import export_model
from apb_ref.training import checkpoint

# Fast profile in the normal test run; APB_FUZZ_EXAMPLES=5000 (benchmarks/fuzz_files.py) for the long one.
EXAMPLES = int(os.environ.get("APB_FUZZ_EXAMPLES", "60"))
BUILD = {"name": "digits_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8, "act": "relu"}
NORM = {"dataset": "digits", "mean": [0.3], "std": [0.4], "image_shape": [1, 8, 8]}
RAW = "\u0000raw\u0000"  # a JSON string replaced by raw text after dumping (NaN, deep nesting, 1e999)


def memory_bound(file_size: int) -> int:
    """What reading a file may allocate: a small multiple of its size, plus building a small model."""
    return 16 * file_size + (48 << 20)


def contained(fn, name: str):
    """Run a reader on a hostile file; returns (result or None, the error or None, peak bytes)."""
    tracemalloc.start()
    try:
        result, error = fn(), None
    except (ValueError, FileNotFoundError) as e:
        result, error = None, e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if error is not None:
        message = str(error)
        assert name in message, f"the error does not name the file {name}: {message}"
        assert "\n" not in message, f"not one line: {message}"
    return result, error, peak


# --- .apbz ---------------------------------------------------------------------------------------
def valid_apbz(method: str = "apb") -> bytes:
    """A small valid file of a method with a packed form (pruned layers at the end of their schedule)."""
    model = build("digits_cnn", in_channels=1, image_size=8, method=method).eval()
    for m in model.modules():
        if hasattr(getattr(m, "weight_quantizer", None), "keep"):
            m.weight_quantizer.on_step(1.0, m.weight.data)
    return export_model(model, dict(BUILD), dict(NORM)).to_bytes()


def valid_react_apbz() -> bytes:
    """A small valid ResNet-20 file with ReActNet's learned activations ("params" layers) and 1-bit inputs."""
    build_args = {**BUILD, "name": "resnet20", "act": "hardtanh", "react": True}
    model = build("resnet20", in_channels=1, image_size=8, method="bnn", act_bits=1, act="hardtanh", react=True)
    return export_model(model.eval(), build_args, dict(NORM)).to_bytes()


def split_apbz(data: bytes) -> tuple[dict, bytes]:
    """(header with its tensor table, the tensor blob)."""
    _, _, n = struct.unpack_from("<4sII", data)
    head_end = 12 + n
    return json.loads(data[12:head_end]), data[head_end + (-head_end % 8):-4]


def seal_apbz(header_text: str, blob: bytes) -> bytes:
    """A well-formed file around any header text: prefix, padding, blob and a correct CRC."""
    raw = header_text.encode()
    head = struct.pack("<4sII", b"APBZ", 1, len(raw)) + raw
    body = head + b"\0" * (-len(head) % 8) + blob
    return body + struct.pack("<I", zlib.crc32(body))


def dumps_with_raw(value, raw: str) -> str:
    return json.dumps(value).replace(json.dumps(RAW), raw)


def json_paths(value, path=()):
    """Every place in a JSON tree (the root excluded), as key/index tuples."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield path + (k,)
        yield from json_paths(v, path + (k,))


HOSTILE_VALUES = st.sampled_from([None, True, False, 0, -1, 1, 3, 2**31, 2**32, 2**63, 2**64, 10**6, 10**30, -10**6,
                                  0.5, -0.0, 1e308, "", "abc", "digits_cnn", "apb", "float", "affine", [], {},
                                  [0], [1, 2], [[1]], {"kind": "apb"}, [1, 1, 3, 3], [64, 32, 3, 3], [10**6] * 4,
                                  RAW])
RAW_TEXTS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "[" * 50_000 + "]" * 50_000,
                             "{\"a\":" * 20_000 + "1" + "}" * 20_000, "9" * 5000])


@st.composite
def mutated_json(draw, tree: dict):
    """(the tree's JSON text after 1-3 structure-aware edits)."""
    tree = copy.deepcopy(tree)
    raw = draw(RAW_TEXTS)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(json_paths(tree))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = tree
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "scale"]))
        leaf = path[-1]
        if action == "delete":
            del parent[leaf]
        elif action == "wrap":  # the right value inside the wrong container
            parent[leaf] = draw(st.sampled_from([[parent[leaf]], {"x": parent[leaf]}]))
        elif action == "scale" and isinstance(parent[leaf], (int, float)) and not isinstance(parent[leaf], bool):
            parent[leaf] = parent[leaf] * draw(st.sampled_from([-1, 0, 2, 64, 10**6, 2**32]))
        else:  # a copy: the sampled lists and dicts are shared between examples
            parent[leaf] = copy.deepcopy(draw(HOSTILE_VALUES))
    if draw(st.booleans()):  # sometimes retype the whole root
        tree = draw(st.sampled_from([tree, tree, [tree], "header", 7]))
    return dumps_with_raw(tree, raw)


@st.composite
def mutated_apbz(draw, data: bytes) -> bytes:
    """A valid file with its header or tensor table edited (CRC recomputed)."""
    header, blob = split_apbz(data)
    if draw(st.booleans()):  # aim at the tensor table: dtypes, shapes, offsets, nbytes, names
        entry = draw(st.sampled_from(header["tensors"]))
        key = draw(st.sampled_from(["dtype", "shape", "offset", "nbytes", "name"]))
        entry[key] = copy.deepcopy(draw(st.one_of(HOSTILE_VALUES, st.sampled_from(
            ["float32", "uint64", "uint8", "int64", "float64", [0], [1 << 40, 1 << 40], entry.get("nbytes", 0) + 8]))))
        return seal_apbz(dumps_with_raw(header, draw(RAW_TEXTS)), blob)
    return seal_apbz(draw(mutated_json(header)), blob)


def nan_weights(header, tensors, draw):
    name = draw(st.sampled_from(sorted(k for k, v in tensors.items() if v.dtype == np.float32)))
    a = tensors[name].copy()
    a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    tensors[name] = a


def drop_tensor(header, tensors, draw):
    del tensors[draw(st.sampled_from(sorted(tensors)))]


def wide_csr_index(header, tensors, draw):
    names = sorted(k for k in tensors if k.endswith("csr_indices"))
    if not names:  # a file without CSR (uniform weights)
        return
    name = draw(st.sampled_from(names))
    a = tensors[name].astype(np.uint64)
    with np.errstate(over="ignore"):  # 2**63 + 2**63 wraps: any huge index will do
        a[draw(st.integers(0, len(a) - 1))] += np.uint64(draw(st.sampled_from([2**32, 2**63, 288, 1])))
    tensors[name] = a


def retype_tensor(header, tensors, draw):
    name = draw(st.sampled_from(sorted(tensors)))
    dtype = draw(st.sampled_from(["float32", "uint8", "uint16", "uint32", "uint64", "int64"]))
    a = tensors[name]
    tensors[name] = a.astype(dtype) if draw(st.booleans()) else np.zeros(max(0, a.size + draw(st.integers(-1, 1))), dtype)


def reshape_tensor(header, tensors, draw):
    name = draw(st.sampled_from(sorted(tensors)))
    a = tensors[name]
    shapes = [(a.size,), (1, a.size), a.shape[::-1], (a.size, 1, 1)]
    tensors[name] = a.reshape(draw(st.sampled_from(shapes)))


def bad_values(header, tensors, draw):
    """Negative α, sign padding bits set (sign bits or planes), CSR row pointers out of order, a bit of
    a Golomb-Rice stream flipped or its last byte dropped (SBNN)."""
    name = draw(st.sampled_from(sorted(k for k in tensors if k.endswith(
        ("alpha", "sign_bits", "planes", "csr_indptr", "rice_quotients", "rice_remainders")))))
    a = tensors[name].copy()
    if name.endswith(("rice_quotients", "rice_remainders")):
        flat = a.reshape(-1)  # (an earlier edit may have retyped or reshaped it)
        if flat.size and a.dtype == np.uint8 and draw(st.booleans()):
            flat[draw(st.integers(0, flat.size - 1))] ^= np.uint8(1 << draw(st.integers(0, 7)))
        else:
            a = flat[:-1]
    elif a.size == 0 or a.dtype.kind != ("f" if name.endswith("alpha") else "u"):
        return  # an earlier edit emptied or retyped it: nothing of this kind left to break
    elif name.endswith("alpha"):
        a[...] = draw(st.sampled_from([-1.0, 0.0, 1e-30]))
    elif name.endswith(("sign_bits", "planes")):
        if a.dtype != np.uint64 or a.ndim < 2 or 0 in a.shape:  # an earlier edit retyped or reshaped it
            return
        a[..., draw(st.integers(0, a.shape[-2] - 1)), -1] |= np.uint64(1) << np.uint64(63)
    else:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([0, 1, 200, 255]))
    tensors[name] = a


TENSOR_EDITS = [nan_weights, drop_tensor, wide_csr_index, retype_tensor, reshape_tensor, bad_values]


@st.composite
def mutated_tensors(draw, packed) -> bytes:
    """A valid model with 1-2 of its tensors damaged, written by the real writer (table and CRC right)."""
    tensors = dict(packed.tensors)
    for _ in range(draw(st.integers(1, 2))):
        draw(st.sampled_from(TENSOR_EDITS))(packed.header, tensors, draw)
    return type(packed)(copy.deepcopy(packed.header), tensors).to_bytes()


# --- checkpoints ---------------------------------------------------------------------------------
def trainer_like_state() -> dict:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    return {"config": {"model": "digits_cnn", "lr": 0.1, "epochs": 3}, "epoch": 2, "best_accuracy": 0.5,
            "train_seconds": 1.5, "images_seen": 640, "model": {"fc.weight": w, "fc.bias": np.zeros(8, np.float32)},
            "optimizers": [{"param_groups": [{"lr": 0.1, "num_params": 2}],
                            "state": {(0, 0): {"step": 3, "exp_avg": np.ones_like(w)}}}],
            "schedulers": [{"last_epoch": 2}]}


def npz_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_npz(members: dict[str, bytes], compress: dict[str, bool] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, raw in members.items():
            method = zipfile.ZIP_DEFLATED if (compress or {}).get(name) else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(name), raw, compress_type=method)
    return buffer.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(shape, descr: str, payload: bytes) -> bytes:
    """An npy member whose header says anything."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


@st.composite
def mutated_checkpoint(draw, data: bytes) -> bytes:
    members = npz_members(data)
    meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
    target = draw(st.sampled_from(["meta", "meta", "member", "drop", "bomb"]))
    compress = {}
    if target == "meta":
        members["__meta__.npy"] = npy_bytes(np.frombuffer(draw(mutated_json(meta)).encode(), np.uint8))
    elif target == "drop":
        del members[draw(st.sampled_from(sorted(members)))]
    elif target == "member":
        name = draw(st.sampled_from(sorted(members)))
        shape = draw(st.sampled_from([(), (0,), (3,), (10**6,), (2**40,), (2**62, 4), (-1,)]))
        descr = draw(st.sampled_from(["<f4", "|u1", "|O", "<U10", "|V8", "[('a', '<f4')]", "<f8", "|b1", "bogus"]))
        payload = draw(st.sampled_from([b"", b"\0" * 12, members[name][-64:]]))
        members[name] = npy_with_header(shape, descr, payload)
    else:  # a real zip bomb: a member of zeros that deflates ~1000:1
        members[draw(st.sampled_from(sorted(members)))] = npy_bytes(np.zeros(draw(st.sampled_from([1, 8])) << 20, np.uint8))
        compress = {name: True for name in members}
    return write_npz(members, compress)
