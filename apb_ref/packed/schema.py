"""What a packed model's header and tensors must satisfy before anything is built from them.

`format.parse_packed` checks the file (magic, CRC, the tensor table's extents); `validate_packed`
checks what it means, so that a file with a valid CRC but inconsistent contents is refused with one
ValueError naming the file and the field instead of running half a network, wrapping an index or
allocating what a header claims:

1. the header's types and ranges (the schema below; unknown extra keys are allowed, for newer
   writers, but never passed on);
2. every layer's tensors: present, of the right dtype, shapes consistent with its spec, zero sign
   padding bits, CSR rows monotone with indices < K (compared in their stored type, before any
   cast), finite values of magnitude at most `MAX_ABS`, α > 0, SBNN's Golomb-Rice streams decoded
   (work and memory bounded by the streams' bytes, not by what the header claims), PaBT's terms
   distinct and in range with every stored plane and threshold used;
3. the build arguments against the tensors: the architecture is first built with shape-only
   placeholders (no weights allocated) and every conv, linear and BatchNorm it has must be in the
   layer table with the same shape, and nothing else may be. The first conv's weights thus fix
   in_channels, the last linear's fix num_classes (and, through the flattened features,
   image_size), so a 43 KB file claiming 10⁶ input channels is refused before any model exists.

Normalization: `{}` (or an old file without the key) means the caller feeds normalized inputs,
which is what `PackedNetwork.logits` takes; `evaluation_normalization` (for `evaluate`, which
takes images in [0, 1]) refuses such a file. When present, mean and std are `in_channels` finite
numbers, std > 0.

The schema checker itself (`integer`, `record`, ...) is shared with checkpoint metadata
(apb_ref.training.checkpoint).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import nn
from ..models import MODELS, build
from ..models.resnet import BLOCKS
from ..nn.modules import ACTIVATIONS
from ..quant import METHODS, LayerFactory
from ..quant.packing import MAX_RICE_K, rice_decode
from ..schema import Invalid, integer, key_path, list_of, mapping, number, or_none, record, string, validate
from .layers import PACKED_LAYERS

MAX_DIM = 1 << 24  # any one dimension (channels, classes, K); the tensors bound the rest
# Float tensors are finite and at most this in magnitude: trained weights, α and folded BatchNorms
# are orders of magnitude smaller, and a table pointing a tensor at other bytes reads as values up
# to 3e38 that would overflow the logits to inf.
MAX_ABS = 1e6
ACT_BITS = (1, 2, 32)
MAX_BASES = 8  # PaBT: weight planes and activation bases per layer


def one_of(values) -> Any:
    def check(v, path):
        if isinstance(v, bool) or v not in values:
            raise Invalid(path, f"one of {list(values)}", v)
        return v
    return check


def boolean(v, path):
    if not isinstance(v, bool):
        raise Invalid(path, "true or false", v)
    return v


def positive_ints(n_choices: tuple[int, ...]) -> Any:
    what = f"a list of {' or '.join(map(str, n_choices))} positive integers"
    item = integer(1, MAX_DIM)

    def check(v, path):
        if not isinstance(v, list) or len(v) not in n_choices:
            raise Invalid(path, what, v)
        return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return check


PARAM_NAMES = ("bias", "gamma", "slope", "zeta")  # what the "params" modules (ChannelShift, RPReLU) learn
PARAM_MODULES = (nn.ChannelShift, nn.RPReLU)

BUILD = record(required={"name": string(MODELS), "num_classes": integer(2, MAX_DIM),
                         "in_channels": integer(1, MAX_DIM), "image_size": integer(1, 4096)},
               optional={"act": string(ACTIVATIONS), "block": string(BLOCKS),
                        "react": boolean, "act_scale": boolean})
NORMALIZATION = record(optional={"dataset": string(), "mean": list_of(number(-1e6, 1e6), 1, MAX_DIM),
                                 "std": list_of(number(0, 1e6, above=0), 1, MAX_DIM),
                                 "image_shape": positive_ints((3,)), "pad_to": or_none(integer(1, 1024)),
                                 "data_dir": or_none(string(max_len=4096)),
                                 "class_names": list_of(string(), 1, MAX_DIM)})
# per packed layer (what a kind resolves to): its spec's fields
SPECS = {
    "binary": record(required={"kind": string(), "weight_shape": positive_ints((2, 4)), "k": integer(1, 1 << 40),
                               "act_bits": one_of(ACT_BITS), "nnz": integer(0, 1 << 40)},
                     optional={"stride": integer(1, 4096), "padding": integer(0, 4096), "planes": integer(1, 8)}),
    "sparse": record(required={"kind": string(), "weight_shape": positive_ints((2, 4)), "k": integer(1, 1 << 40),
                               "act_bits": one_of(ACT_BITS), "nnz": integer(0, 1 << 40), "code_bits": integer(0, 8)},
                     optional={"stride": integer(1, 4096), "padding": integer(0, 4096)}),
    "sbnn": record(required={"kind": string(), "weight_shape": positive_ints((2, 4)), "k": integer(1, 1 << 40),
                             "act_bits": one_of(ACT_BITS), "minority": one_of(("alpha", "beta")),
                             "positions": integer(0, 1 << 40), "rice_k": integer(0, MAX_RICE_K)},
                   optional={"stride": integer(1, 4096), "padding": integer(0, 4096)}),
    "pabt": record(required={"kind": string(), "weight_shape": positive_ints((2, 4)), "k": integer(1, 1 << 40),
                             "act_bits": one_of((1,)),
                             "terms": list_of(list_of(integer(0, MAX_BASES - 1), 2, 2, "a pair [weight base, "
                                                      "activation base]"), 1, MAX_BASES ** 2)},
                   optional={"stride": integer(1, 4096), "padding": integer(0, 4096)}),
    "float": record(required={"kind": string(), "act_bits": one_of(ACT_BITS)}),
    "affine": record(required={"kind": string()}),
    "params": record(required={"kind": string(), "params": list_of(string(PARAM_NAMES), 1, len(PARAM_NAMES))}),
}


def _packed_layer(kind: str) -> str | None:
    """The packed module that runs a kind (as network._layer_name), or None if none does."""
    if kind in PACKED_LAYERS:
        return kind
    method = METHODS.get(kind)
    return method.packed_layer if method is not None else None


def _known_kinds() -> list[str]:
    return sorted(set(PACKED_LAYERS) | {k for k, m in METHODS.items() if m.packed_layer})


def _spec(v, path):
    kind = v.get("kind") if isinstance(v, dict) else None
    layer = _packed_layer(kind) if isinstance(kind, str) else None
    if layer not in SPECS:
        raise Invalid(f"{path}.kind" if isinstance(v, dict) else path, f"a layer kind this apb-ref runs "
                      f"({', '.join(_known_kinds())})", kind if isinstance(v, dict) else v)
    return {**SPECS[layer](v, path), "packed_layer": layer}


HEADER = record(required={"build": BUILD, "layers": mapping(_spec, max_len=100_000, what="an object of layer specs")},
                optional={"normalization": NORMALIZATION})


# --- tensors -------------------------------------------------------------------------------------
def _tensor(t: dict[str, np.ndarray], name: str, dtypes: tuple[str, ...], shape: tuple[int, ...] | None = None,
            finite: bool = False, optional: bool = False) -> np.ndarray | None:
    path = key_path("tensors", name)
    if name not in t:
        if optional:
            return None
        raise Invalid(path, f"a {'/'.join(dtypes)} tensor (the layer needs it)", missing=True)
    a = t[name]
    if a.dtype.name not in dtypes:
        raise Invalid(path, f"dtype {' or '.join(dtypes)}", a)
    if shape is not None and a.shape != shape:
        raise Invalid(path, f"shape {list(shape)}", a)
    if finite and not (np.abs(a) <= MAX_ABS).all():  # False for NaN too
        raise Invalid(path, f"finite values (no NaN or infinity) of magnitude at most {MAX_ABS:g}", a)
    return a


INDEX_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int64")


def _geometry(spec: dict, path: str) -> tuple[int, int]:
    """(O, K) of a compressed layer's spec, after checking k = prod(weight_shape[1:]) and that a conv
    has its stride and padding."""
    shape = spec["weight_shape"]
    o, k = shape[0], math.prod(shape[1:])
    if spec["k"] != k:
        raise Invalid(f"{path}.k", f"{k} (the product of weight_shape[1:])", spec["k"])
    if len(shape) == 4 and ("stride" not in spec or "padding" not in spec):
        raise Invalid(path, "stride and padding (a conv layer)", {key: spec.get(key) for key in ("stride", "padding")})
    return o, k


def _check_binary(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    """W_q = α·B + S (METHODS §1.8): sign bits, α per row or per layer, an optional CSR residual."""
    shape = spec["weight_shape"]
    o, k = _geometry(spec, path)
    planes = spec.get("planes")
    if planes is None:  # one plane of signs (APB, BNN)
        _sign_bits(t, f"{prefix}.sign_bits", (o, -(-k // 64)), k)
    else:  # k-bit uniform: `planes` sign planes
        _sign_bits(t, f"{prefix}.planes", (planes, o, -(-k // 64)), k)
    _scales(t, f"{prefix}.alpha", o)
    _tensor(t, f"{prefix}.bias", ("float32",), (o,), finite=True, optional=True)
    csr = [f"{prefix}.csr_{part}" for part in ("indptr", "indices", "values")]
    if not any(name in t for name in csr):
        if spec["nnz"]:
            raise Invalid(f"{path}.nnz", "0 (the file holds no CSR residual for this layer)", spec["nnz"])
        return tuple(shape)
    _csr(t, prefix, o, k, spec["nnz"])
    _tensor(t, csr[2], ("float32",), (spec["nnz"],), finite=True)
    return tuple(shape)


def _sign_bits(t: dict[str, np.ndarray], name: str, shape: tuple[int, ...], k: int) -> None:
    bits = _tensor(t, name, ("uint64",), shape)
    if k % 64 and (bits[..., -1] >> np.uint64(k % 64)).any():
        raise Invalid(key_path("tensors", name), f"zero padding bits past K = {k}", bits)


def _scales(t: dict[str, np.ndarray], name: str, o: int) -> None:
    alpha = _tensor(t, name, ("float32",), finite=True)
    if alpha.shape not in ((1,), (o,)) or not (alpha > 0).all():
        raise Invalid(key_path("tensors", name), f"shape [1] or [{o}] of values > 0", alpha)


def _csr(t: dict[str, np.ndarray], prefix: str, o: int, k: int, nnz: int) -> None:
    """Row pointers and column indices of a CSR matrix (O, K) with nnz entries."""
    indptr = _tensor(t, f"{prefix}.csr_indptr", INDEX_DTYPES, (o + 1,))
    indices = _tensor(t, f"{prefix}.csr_indices", INDEX_DTYPES, (nnz,))
    # compared in the stored types: a uint64 index of 2³² must not wrap to 0 in a later int32 cast
    if indptr[0] != 0 or indptr[-1] != nnz or (indptr[1:] < indptr[:-1]).any():
        raise Invalid(key_path("tensors", f"{prefix}.csr_indptr"), f"row pointers rising from 0 to nnz = {nnz}", indptr)
    if nnz and (indices.max() >= k or (indices.dtype.kind == "i" and indices.min() < 0)):
        raise Invalid(key_path("tensors", f"{prefix}.csr_indices"), f"column indices in [0, {k})", indices)


def _check_sparse(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    """S in CSR (pruning): float32 values, or k-bit codes with s/2 per row or per layer."""
    shape = spec["weight_shape"]
    (o, k), nnz = _geometry(spec, path), spec["nnz"]
    if nnz > o * k:
        raise Invalid(f"{path}.nnz", f"at most {o * k} (the weights of the layer)", nnz)
    _csr(t, prefix, o, k, nnz)
    if spec["code_bits"]:
        _tensor(t, f"{prefix}.csr_codes", ("uint8",), (spec["code_bits"], -(-nnz // 8)))
        _scales(t, f"{prefix}.alpha", o)
    else:
        _tensor(t, f"{prefix}.csr_values", ("float32",), (nnz,), finite=True)
    _tensor(t, f"{prefix}.bias", ("float32",), (o,), finite=True, optional=True)
    return tuple(shape)


def _check_sbnn(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    """SBNN (METHODS §3.6): α, β and the Golomb-Rice streams of the minority value's positions. The
    streams are decoded here (work and memory bounded by their own bytes, never by the header's
    claims), so a layer that is built decodes a stream already known to be sound."""
    shape = spec["weight_shape"]
    (o, k), count = _geometry(spec, path), spec["positions"]
    if 2 * count > o * k:
        raise Invalid(f"{path}.positions", f"at most {o * k // 2} (the minority of the layer's {o * k} weights)", count)
    _tensor(t, f"{prefix}.levels", ("float32",), (2,), finite=True)
    quotients = _tensor(t, f"{prefix}.rice_quotients", ("uint8",))
    remainders = _tensor(t, f"{prefix}.rice_remainders", ("uint8",))
    for name, a in ((f"{prefix}.rice_quotients", quotients), (f"{prefix}.rice_remainders", remainders)):
        if a.ndim != 1:
            raise Invalid(key_path("tensors", name), "a 1-D byte stream", a)
    try:
        rice_decode(quotients, remainders, count, spec["rice_k"], o * k)
    except ValueError as e:
        raise Invalid(key_path("tensors", f"{prefix}.rice_quotients"),
                      f"a Golomb-Rice stream of {count} positions in [0, {o * k}) ({e})", quotients) from None
    _tensor(t, f"{prefix}.bias", ("float32",), (o,), finite=True, optional=True)
    return tuple(shape)


def _check_pabt(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    """PaBT (METHODS §2.6): m sign planes, n thresholds and a scale row per live term (i, j); the
    terms are distinct, and every plane and every threshold is used by one (a dropped base is not
    stored)."""
    shape = spec["weight_shape"]
    o, k = _geometry(spec, path)
    terms = [tuple(pair) for pair in spec["terms"]]
    if len(set(terms)) != len(terms):
        raise Invalid(f"{path}.terms", "distinct [weight base, activation base] pairs", spec["terms"])
    m, n = 1 + max(i for i, _ in terms), 1 + max(j for _, j in terms)
    if {i for i, _ in terms} != set(range(m)) or {j for _, j in terms} != set(range(n)):
        raise Invalid(f"{path}.terms", "pairs that use every weight base 0..m-1 and activation base 0..n-1",
                      spec["terms"])
    _sign_bits(t, f"{prefix}.planes", (m, o, -(-k // 64)), k)
    _tensor(t, f"{prefix}.thresholds", ("float32",), (n,), finite=True)
    _tensor(t, f"{prefix}.scales", ("float32",), (len(terms), o), finite=True)
    _tensor(t, f"{prefix}.bias", ("float32",), (o,), finite=True, optional=True)
    return tuple(shape)


def _check_float(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    w = _tensor(t, f"{prefix}.weight", ("float32",), finite=True)
    if w.ndim not in (2, 4) or 0 in w.shape:
        raise Invalid(key_path("tensors", f"{prefix}.weight"), "a non-empty 2-D or 4-D weight", w)
    _tensor(t, f"{prefix}.bias", ("float32",), w.shape[:1], finite=True, optional=True)
    return w.shape


def _check_affine(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    scale = _tensor(t, f"{prefix}.scale", ("float32",), finite=True)
    if scale.ndim != 1:
        raise Invalid(key_path("tensors", f"{prefix}.scale"), "a 1-D array (one per channel)", scale)
    _tensor(t, f"{prefix}.shift", ("float32",), scale.shape, finite=True)
    return scale.shape


def _check_params(prefix: str, spec: dict, t: dict[str, np.ndarray], path: str) -> tuple[int, ...]:
    if len(set(spec["params"])) != len(spec["params"]):
        raise Invalid(f"{path}.params", "distinct parameter names", spec["params"])
    first = _tensor(t, f"{prefix}.{spec['params'][0]}", ("float32",), finite=True)
    if first.ndim != 1 or first.size == 0:
        raise Invalid(key_path("tensors", f"{prefix}.{spec['params'][0]}"), "a non-empty 1-D array (one per channel)",
                      first)
    for name in spec["params"][1:]:
        _tensor(t, f"{prefix}.{name}", ("float32",), first.shape, finite=True)
    return first.shape


TENSOR_CHECKS = {"binary": _check_binary, "sparse": _check_sparse, "sbnn": _check_sbnn, "pabt": _check_pabt,
                 "float": _check_float, "affine": _check_affine, "params": _check_params}


# --- the build arguments against the tensors -----------------------------------------------------
class _Placeholder(nn.Module):
    """A conv or linear layer's shape, without its weights."""

    def __init__(self, shape: tuple[int, ...], stride: int = 1, padding: int = 0):
        super().__init__()
        self.shape, self.stride, self.padding = shape, stride, padding


class _ShapeOnly(LayerFactory):
    """Makes placeholders: the architecture's layer shapes at the cost of its BatchNorms only."""

    def __init__(self):
        super().__init__(np.random.default_rng(0))

    def conv(self, cin, cout, k, stride=1, padding=0, bias=False, compress=True):
        return _Placeholder((cout, cin, k, k), stride, padding)

    def linear(self, fin, fout, bias=True, compress=True):
        return _Placeholder((fout, fin))


def _expected_layers(args: dict[str, Any], where: str) -> dict[str, tuple[str, Any]]:
    """name -> ("weights", placeholder), ("affine", channels) or ("params", (channels, names)) for the
    model `args` builds."""
    try:
        model = build(**args, layers=_ShapeOnly())
    except ValueError as e:  # e.g. an image size the architecture cannot pool
        raise Invalid("header.build", f"arguments {args['name']} accepts ({e})", args) from None
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _Placeholder):
            out[name] = ("weights", m)
        elif isinstance(m, nn.BatchNorm):
            out[name] = ("affine", (m.num_features,))
        elif isinstance(m, PARAM_MODULES):
            params = dict(m.named_parameters())
            out[name] = ("params", (next(iter(params.values())).shape, list(params)))
    return out


def _check_architecture(args: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...], dict]], where: str) -> None:
    expected = _expected_layers(args, where)
    built = f"a {args['name']} with header.build = {args}"
    for name in expected.keys() - shapes.keys():
        raise Invalid(key_path("header.layers", name), f"an entry (every layer of {built} needs its weights)", missing=True)
    for name, (kind, shape, spec) in shapes.items():
        path = key_path("header.layers", name)
        if name not in expected:
            raise Invalid(path, f"no such layer in {built}", spec)
        want_kind, want = expected[name]
        group = {"affine": "affine", "params": "params"}
        if group.get(kind, "weights") != want_kind:
            raise Invalid(f"{path}.kind", f"{want_kind if want_kind != 'weights' else 'a conv/linear kind'} "
                          f"(what {name} is in {built})", spec["kind"])
        if want_kind == "params" and spec["params"] != want[1]:
            raise Invalid(f"{path}.params", f"{want[1]} (what {name} learns in {built})", spec["params"])
        want_shape = {"weights": lambda: want.shape, "affine": lambda: want, "params": lambda: want[0]}[want_kind]()
        if tuple(shape) != tuple(want_shape):
            raise Invalid("header.build", f"arguments that fit the tensors (layer {name} holds {list(shape)}; "
                          f"these arguments give {list(want_shape)})", args)
        if kind in ("binary", "sparse", "sbnn", "pabt") and len(want_shape) == 4 and (spec["stride"], spec["padding"]) != (want.stride, want.padding):
            raise Invalid(f"{path}.stride", f"stride {want.stride}, padding {want.padding} (as in {built})",
                          [spec["stride"], spec["padding"]])


def _check_normalization(norm: dict[str, Any], args: dict[str, Any]) -> None:
    c, s = args["in_channels"], args["image_size"]
    if norm and not {"mean", "std"} <= norm.keys():
        raise Invalid("header.normalization", "{} or an object with mean and std", norm)
    for key in ("mean", "std"):
        if key in norm and len(norm[key]) != c:
            raise Invalid(f"header.normalization.{key}", f"{c} numbers (one per input channel)", norm[key])
    if "image_shape" in norm and norm["image_shape"] != [c, s, s]:
        raise Invalid("header.normalization.image_shape", f"{[c, s, s]} (header.build's in_channels and image_size)",
                      norm["image_shape"])


class _Recording(dict):
    """The tensors, remembering every name a check looked up (present or not)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        super().__init__(tensors)
        self.asked: set[str] = set()

    def __contains__(self, name):
        self.asked.add(name)
        return super().__contains__(name)

    def __getitem__(self, name):
        self.asked.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)


def validate_packed(packed, path=None) -> dict[str, Any]:
    """Check a PackedModel (from `parse_packed` or `export_model`) before anything is built from it;
    returns the build arguments to use (checked, known keys only). One ValueError naming the file
    and the field on any failure."""
    where = f"packed file {path if path is not None else getattr(packed, 'source', '<memory>')}"
    header = validate(packed.header, HEADER, where, "header")
    layers = header["layers"]
    if not layers:
        raise ValueError(f"{where}: header.layers: expected at least one layer, got an empty table")
    shapes = {}
    tensors = _Recording(packed.tensors)
    for name, spec in layers.items():
        shape = validate(spec, lambda s, p: TENSOR_CHECKS[s["packed_layer"]](name, s, tensors, p), where,
                         key_path("header.layers", name))
        shapes[name] = (spec["packed_layer"], shape, spec)
    # a tensor no spec asked for would be trusted unchecked by whatever reads it later
    for extra in sorted(set(packed.tensors) - tensors.asked):
        raise ValueError(f"{where}: {key_path('tensors', extra)}: expected only the tensors the layer specs "
                         f"describe, got one none of them uses")
    validate(header["build"], lambda a, p: _check_architecture(a, shapes, where), where, "header.build")
    validate(header.get("normalization", {}), lambda n, p: _check_normalization(n, header["build"]), where,
             "header.normalization")
    return header["build"]


def data_settings(header: dict[str, Any], path) -> dict[str, Any]:
    """The checked `normalization` record of a header: how the training data was seen (dataset, mean,
    std, image shape, padding, directory, class names; older files hold fewer keys), or {}."""
    norm = header.get("normalization") if isinstance(header, dict) else None
    return validate(norm, NORMALIZATION, f"packed file {path}", "header.normalization") if norm else {}


def evaluation_normalization(header: dict[str, Any], path) -> tuple[np.ndarray, np.ndarray]:
    """The (1, C, 1, 1) mean and std `evaluate` applies to images in [0, 1]. A file without them
    (normalization missing or {}) is refused: running it on unnormalized images would give a
    plausible-looking but meaningless accuracy."""
    norm = header.get("normalization") if isinstance(header, dict) else None
    if not isinstance(norm, dict) or not {"mean", "std"} <= norm.keys():
        raise ValueError(f"packed file {path}: header.normalization: expected mean and std to normalize the "
                         f"images with (this file has none; normalize them yourself and call logits()), "
                         f"got {norm!r:.60}")
    norm = validate(norm, NORMALIZATION, f"packed file {path}", "header.normalization")
    shape = (1, -1, 1, 1)
    return np.asarray(norm["mean"], np.float32).reshape(shape), np.asarray(norm["std"], np.float32).reshape(shape)
