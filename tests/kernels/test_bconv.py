"""bconv_1bit: a whole binary conv layer on a packed 1-bit map (im2col_bits, bgemm_1x1 with its
scale/shift epilogue, the padding correction, the sparse residual, a residual input, hardtanh and the
packed signs of the result) in one kernel, channels last in and out.

The NumPy oracle is checked against plain float64 loops over the unpacked ±1 map; the Rust kernel
against the oracle on awkward shapes for every ISA path this CPU has and 1 and 2 threads: bit for bit
without a sparse part, else within the contract's rounding bound, which grows with each row's number
of non-zeros; the packed signs exactly wherever the oracle's float lies outside that bound of 0.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kernel_helpers import BACKENDS, needs_rust, random_csr, random_packed, rust_isas, unpack_pm1, words_for
from kernel_helpers import raw_rust  # noqa: F401  (a fixture)

from apb_ref import kernels
from apb_ref.kernels import backend, reference

ISAS = rust_isas()
EPS = float(np.finfo(np.float32).eps)
TINY = float(np.finfo(np.float32).smallest_subnormal)
CSR_KINDS = [None, "all empty", "sparse", "dense"]


# --- cases ------------------------------------------------------------------------------------------

@st.composite
def layer_specs(draw):
    """(c, o, kh, kw, stride, padding, n, h, w, correction, csr, residual, clip, out, seed): channel
    counts around word sizes, odd small maps the kernel fits, every option on or off."""
    c, o = draw(st.sampled_from([1, 63, 64, 65, 130])), draw(st.sampled_from([1, 5, 64, 65]))
    kh, kw = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))
    stride, padding = draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1]))
    n = draw(st.sampled_from([1, 3]))
    h = draw(st.sampled_from([v for v in (1, 3, 5) if v + 2 * padding >= kh]))
    w = draw(st.sampled_from([v for v in (1, 3, 5) if v + 2 * padding >= kw]))
    options = draw(st.tuples(st.booleans(), st.sampled_from(CSR_KINDS), st.booleans(), st.booleans(),
                             st.sampled_from(["float", "bits", "both"])))
    return (c, o, kh, kw, stride, padding, n, h, w, *options, draw(st.integers(0, 2**32 - 1)))


def make_layer(spec):
    """(args, options) of a bconv_1bit call built from a spec: random packed map and weights, scales
    of order 1/sqrt(K) so y straddles 0 and ±1, one channel whose y is exactly 0 (scale = shift = 0)."""
    c, o, kh, kw, stride, padding, n, h, w, correction, csr, residual, clip, out, seed = spec
    rng = np.random.default_rng(seed)
    k = kh * kw * c
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    bits = random_packed(rng, n * h * w, c).reshape(n, h, w, words_for(c))
    weights = random_packed(rng, o, k)
    scale = (rng.standard_normal(o) * 2 / np.sqrt(k)).astype(np.float32)
    shift = rng.standard_normal(o).astype(np.float32)
    scale[0] = shift[0] = 0
    options = {"scale": scale, "shift": shift, "clip": clip, "out": out}
    if correction:
        options["correction"] = rng.standard_normal((ho, wo, o)).astype(np.float32)
    if residual:
        options["residual"] = rng.standard_normal((n, ho, wo, o)).astype(np.float32)
    if csr is not None:
        density = {"all empty": 0.0, "sparse": 0.05, "dense": 0.5}[csr]
        options["csr"] = random_csr(rng, o, k, density, empty_rows=0.3)[1]
    return (weights, bits, c, kh, kw, stride, padding), options


def split(result, out):
    """(float or None, bits or None) of a result in `out` mode."""
    return {"float": (result, None), "bits": (None, result), "both": result}[out]


def rounding_bound(args, options):
    """The contract's bound on |rust − numpy| per (n, ho, wo, o): (n_o + 3)·(eps·(|y₀| + Σ_row |data| +
    |residual|) + 2⁻¹⁴⁹), y₀ the exact common part (before the sparse term); 0 without csr."""
    y0 = reference.bconv_1bit(*args, **{**options, "csr": None, "residual": None, "clip": False, "out": "float"})
    if options.get("csr") is None:
        return np.zeros_like(y0, dtype=np.float64)
    indptr, _, data = options["csr"]
    terms = np.diff(indptr)
    row_abs = np.zeros(len(terms))
    np.add.at(row_abs, np.repeat(np.arange(len(terms)), terms), np.abs(data.astype(np.float64)))
    res = np.abs(options["residual"]) if options.get("residual") is not None else 0.0
    return (terms + 3) * (EPS * (np.abs(y0.astype(np.float64)) + row_abs + res) + TINY)


def assert_matches_the_oracle(got, args, options):
    """got (a result in options["out"] mode) against the oracle: floats within the bound (bit for bit
    when it is 0), bits exactly except where the oracle's |y| is within the bound of 0."""
    out = options["out"]
    want_y = reference.bconv_1bit(*args, **{**options, "out": "float"})
    bound = rounding_bound(args, options)
    got_y, got_bits = split(got, out)
    if got_y is not None:
        assert got_y.dtype == np.float32 and got_y.shape == want_y.shape and got_y.flags.c_contiguous
        if options.get("csr") is None:
            np.testing.assert_array_equal(got_y.view(np.uint32), want_y.view(np.uint32))
        else:
            err = np.abs(got_y.astype(np.float64) - want_y)
            assert (err <= bound).all(), f"worst excess {np.max(err - bound)} at {np.argmax(err - bound)}"
    if got_bits is not None:
        o = want_y.shape[-1]
        want_bits = reference.bconv_1bit(*args, **{**options, "out": "bits"})
        assert got_bits.dtype == np.uint64 and got_bits.shape == want_bits.shape and got_bits.flags.c_contiguous
        if options.get("csr") is None:
            np.testing.assert_array_equal(got_bits, want_bits)
        else:
            assert not (got_bits[..., -1] & ~_used_bits(o)).any()  # padding bits 0
            rows = lambda b: unpack_pm1(b.reshape(-1, words_for(o)), o)  # noqa: E731
            decided = (np.abs(want_y) > bound).reshape(-1, o)
            np.testing.assert_array_equal(rows(got_bits)[decided], rows(want_bits)[decided])


def _used_bits(o):
    """The bits of a pixel's last word that hold channels."""
    return np.uint64(2**64 - 1) if o % 64 == 0 else np.uint64((1 << (o % 64)) - 1)


# --- Rust against the oracle ---------------------------------------------------------------------------

EDGE_SPECS = [
    (130, 65, 3, 3, 2, 1, 3, 5, 5, True, "dense", True, True, "both", 1),
    (65, 64, 3, 1, 1, 1, 1, 1, 3, True, "all empty", True, False, "bits", 2),
    (1, 1, 1, 1, 1, 0, 1, 1, 1, False, None, False, False, "float", 3),
    (63, 5, 1, 3, 2, 0, 3, 5, 3, False, "sparse", False, True, "both", 4),
    (64, 65, 3, 3, 1, 1, 1, 3, 5, True, None, True, True, "both", 5),
]


@needs_rust
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=40, deadline=None)
@given(spec=layer_specs())
@example(spec=EDGE_SPECS[0])
@example(spec=EDGE_SPECS[1])
@example(spec=EDGE_SPECS[2])
@example(spec=EDGE_SPECS[3])
@example(spec=EDGE_SPECS[4])
def test_rust_equals_the_oracle(raw_rust, isa, threads, spec):
    args, options = make_layer(spec)
    got = raw_rust.bconv_1bit(*args, **options, isa=isa, threads=threads)
    assert_matches_the_oracle(got, args, options)


@needs_rust
@pytest.mark.parametrize("shape", [(0, 3, 3, 3, 4, 3, 1), (1, 0, 3, 3, 4, 1, 1), (2, 3, 3, 65, 0, 3, 1)])
def test_empty_batches_maps_and_layers(raw_rust, shape):
    """N = 0, a 0-high map padded by 1 (every window on the padding), O = 0: the same shapes and values."""
    n, h, w, c, o, k, padding = shape
    rng = np.random.default_rng(3)
    args = (random_packed(rng, o, k * k * c), np.zeros((n, h, w, words_for(c)), np.uint64), c, k, k, 1, padding)
    options = {"scale": np.ones(o, np.float32), "shift": np.zeros(o, np.float32), "out": "both"}
    for got, want in zip(raw_rust.bconv_1bit(*args, **options), reference.bconv_1bit(*args, **options)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# --- the oracle against the definition -------------------------------------------------------------------

def plain_layer(weights, bits, c, kh, kw, stride, padding, *, scale, shift, correction=None, csr=None,
                residual=None, clip=False, binary_pad=1.0):
    """float64, from the definitions: the ±1 map unpacked by shifts, padded with `binary_pad` (+1 as
    the popcount counts it) for the binary part and with 0 for the sparse part, one window at a time."""
    n, h, w, wc = bits.shape
    o, k, p = len(weights), kh * kw * c, padding
    x = unpack_pm1(bits.reshape(-1, wc), c).reshape(n, h, w, c)
    padded = lambda v: np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=v)  # noqa: E731
    x_binary, x_sparse = padded(binary_pad), padded(0.0)
    signs = unpack_pm1(weights, k).reshape(o, kh, kw, c)
    dense = np.zeros((o, k))
    if csr is not None:
        indptr, indices, data = csr
        np.add.at(dense, (np.repeat(np.arange(o), np.diff(indptr)), indices), data)
    dense = dense.reshape(o, kh, kw, c)
    ho, wo = (h + 2 * p - kh) // stride + 1, (w + 2 * p - kw) // stride + 1
    y = np.zeros((n, ho, wo, o))
    for img in range(n):
        for oy in range(ho):
            for ox in range(wo):
                at = (img, slice(oy * stride, oy * stride + kh), slice(ox * stride, ox * stride + kw))
                acc = np.tensordot(signs, x_binary[at], axes=3)
                y[img, oy, ox] = acc * scale + shift + np.tensordot(dense, x_sparse[at], axes=3)
    if correction is not None:
        y -= correction
    if residual is not None:
        y += residual
    return np.clip(y, -1, 1) if clip else y


@settings(max_examples=25, deadline=None)
@given(spec=layer_specs())
@example(spec=EDGE_SPECS[0])
def test_the_oracle_is_the_plain_float_layer(spec):
    args, options = make_layer(spec)
    options["out"] = "float"
    got = reference.bconv_1bit(*args, **options)
    want = plain_layer(*args, **{key: v for key, v in options.items() if key != "out"})
    # float32 rounding: one per step, (n_o + 5) for the longest row, of the sum of the terms' magnitudes
    c, kh, kw = args[2:5]
    scale, shift = options["scale"].astype(np.float64), options["shift"]
    magnitude = kh * kw * c * np.abs(scale) + np.abs(shift)
    terms = 0
    if options.get("csr") is not None:
        indptr, _, data = options["csr"]
        terms = int(np.diff(indptr).max(initial=0))
        magnitude = magnitude + np.abs(data).sum()
    magnitude = magnitude + sum(np.abs(options[key]) for key in ("correction", "residual") if key in options)
    assert got.shape == want.shape
    assert (np.abs(got - want) <= (terms + 5) * EPS * magnitude + 1e-30).all()


def test_the_padding_correction_makes_the_zero_padded_conv():
    """Padded taps count as +1 in the popcount; a correction of scale·(weights·padding indicator) turns
    the result into the float model's zero-padded conv."""
    args, options = make_layer((65, 5, 3, 3, 1, 1, 2, 3, 5, False, "sparse", False, False, "float", 9))
    plus_one = plain_layer(*args, scale=1.0, shift=0.0)  # acc with the padding read as +1
    zero = plain_layer(*args, scale=1.0, shift=0.0, binary_pad=0.0)
    correction = (options["scale"] * (plus_one - zero)[0]).astype(np.float32)  # the same for every image
    got = reference.bconv_1bit(*args, **options, correction=correction)
    want = plain_layer(*args, scale=options["scale"], shift=options["shift"], csr=options["csr"], binary_pad=0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- the backend seam ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
def test_the_package_dispatches_and_copies_views(name):
    args, options = make_layer((65, 5, 3, 3, 2, 1, 3, 5, 5, True, "sparse", True, True, "both", 11))
    weights, bits = args[:2]
    views = (np.asfortranarray(weights), np.repeat(bits, 2, axis=2)[:, :, ::2])
    csr = tuple(np.repeat(a, 2)[::2] for a in options["csr"])
    residual = np.asfortranarray(options["residual"])
    with backend.use_backend(name):
        got = kernels.bconv_1bit(*views, *args[2:], **{**options, "csr": csr, "residual": residual})
    assert_matches_the_oracle(got, args, options)


# --- bad input ----------------------------------------------------------------------------------------

def _bad_calls():
    """(change to a valid call, the argument the error must name)."""
    args, options = make_layer((65, 5, 3, 3, 1, 1, 1, 3, 3, True, "sparse", True, False, "both", 13))
    weights, bits = args[:2]
    indptr, indices, data = options["csr"]
    bad_pad = bits.copy()
    bad_pad[0, 0, 0, -1] |= np.uint64(1 << 63)
    bad_weights = weights.copy()
    bad_weights[1, -1] |= np.uint64(1 << 63)  # K = 585: bit 585 % 64 = 9 onward is padding
    out_of_range = indices.copy()
    out_of_range[-1] = 9 * 65
    changes = [
        ({"weights": weights.astype(np.int64)}, "weights"),
        ({"weights": np.ascontiguousarray(weights[:, :-1])}, "weights"),
        ({"weights": bad_weights}, "weights.*padding"),
        ({"bits": bits.astype(np.uint32)}, "bits"),
        ({"bits": bits[0]}, "bits"),
        ({"bits": bad_pad}, "bits.*padding"),
        ({"c": 64}, "bits"),  # 2 words per pixel, c = 64 needs 1
        ({"c": 0}, "c"),
        ({"kh": 0}, "kh"),
        ({"kh": 7, "padding": 0}, "fit"),
        ({"scale": options["scale"].astype(np.float64)}, "scale"),
        ({"scale": options["scale"][:-1]}, "scale"),
        ({"scale": None}, "scale"),
        ({"shift": options["shift"][None]}, "shift"),
        ({"correction": np.ascontiguousarray(options["correction"][:, :, :-1])}, "correction"),
        ({"correction": options["correction"].astype(np.float64)}, "correction"),
        ({"residual": options["residual"][0]}, "residual"),
        ({"csr": (indptr, out_of_range, data)}, "csr.*indices"),
        ({"csr": (indptr, indices.astype(np.int64), data)}, "csr.*indices"),
        ({"csr": (indptr[:-1], indices[:indptr[-2]], data[:indptr[-2]])}, "csr"),  # 4 rows, not 5
        ({"csr": [indptr, indices, data]}, "csr"),
        ({"csr": (indptr, indices)}, "csr"),
        ({"out": "signs"}, "out"),
        ({"out": 1}, "out"),
        ({"clip": 1}, "clip"),
    ]
    names = ("weights", "bits", "c", "kh", "kw", "stride", "padding")
    for change, message in changes:
        call_args = tuple(change.get(key, v) for key, v in zip(names, args))
        yield call_args, {**options, **{key: v for key, v in change.items() if key not in names}}, message


BAD_CALLS = list(_bad_calls())


def _implementations():
    """The oracle, and the raw Rust binding when it is built (the package path is checked below)."""
    return [reference.bconv_1bit] + ([backend._rust.bconv_1bit] if backend.rust_version() else [])


@pytest.mark.parametrize("fn", _implementations(), ids=lambda fn: fn.__module__)
@pytest.mark.parametrize("call", BAD_CALLS, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(fn, call):
    args, options, message = call
    with pytest.raises(ValueError, match=f"bconv_1bit: .*{message}"):
        fn(*args, **options)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_nan_has_no_sign(name):
    """A NaN y (from a non-finite shift, say) is NaN in the float output and an error for packed output."""
    args, options = make_layer((3, 5, 3, 3, 1, 1, 1, 3, 3, False, None, False, True, "float", 17))
    options["shift"] = options["shift"].copy()
    options["shift"][2] = np.nan
    with backend.use_backend(name):
        y = kernels.bconv_1bit(*args, **options)
        assert np.isnan(y[..., 2]).all() and not np.isnan(np.delete(y, 2, axis=-1)).any()
        with pytest.raises(ValueError, match=r"bconv_1bit: y is NaN at \(n, ho, wo, o\) = \(0, 0, 0, 2\)"):
            kernels.bconv_1bit(*args, **{**options, "out": "bits"})


@needs_rust
def test_garbage_in_is_a_value_error_never_a_panic(raw_rust):
    """Random slots of a valid call replaced by ill-formed values: the binding returns or raises
    ValueError (or MemoryError); a Rust panic would surface as a PanicException, anything else as a bug."""
    args, options = make_layer((65, 5, 3, 3, 1, 1, 1, 3, 3, True, "sparse", True, True, "both", 19))
    call = dict(zip(("weights", "bits", "c", "kh", "kw", "stride", "padding"), args), **options)
    pool = [None, 0, -1, 1, 3, 2**62, 2**64, True, 1.5, "x", "bits", (), [1], np.float32(1),
            np.zeros(5, np.float32), np.zeros(5, np.float64), np.zeros((3, 3, 5), np.float32),
            np.zeros((5, 10), np.uint64), np.zeros((5, 10), np.int64), np.zeros((1, 3, 3, 2), np.uint64),
            np.zeros((1, 3, 3, 2), np.uint64)[:, :, ::-1], np.full((1, 3, 3, 2), 2**64 - 1, np.uint64),
            (np.zeros(6, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)),
            (np.array([0, 1, 1, 1, 1, 9]), np.zeros(1, np.int32), np.ones(1, np.float32)),
            (np.zeros(6, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))]
    rng = np.random.default_rng(23)
    for _ in range(2000):
        bad = dict(call)
        for slot in rng.choice(list(call) + ["isa", "threads"], size=rng.integers(1, 4), replace=False):
            bad[slot] = pool[rng.integers(len(pool))]
        positional = [bad.pop(key) for key in list(call)[:7]]
        try:
            raw_rust.bconv_1bit(*positional, **bad)
        except (ValueError, MemoryError):
            pass
