"""pack_bits / unpack_bits: the bit convention, NumPy vs Rust agreement, and argument errors."""
import ast
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import BACKENDS, HAVE_RUST, NO_RUST_REASON, RUST_REQUIRED, needs_rust
from kernel_helpers import raw_rust  # noqa: F401  (a fixture)
from strategies import PACK_KS, float32_matrices, pm_one_pairs, row_counts

from apb_ref.kernels import backend, reference


def signs(x):
    return np.where(np.asarray(x) < 0, -1.0, 1.0).astype(np.float32)


def test_rust_extension_is_built_when_required():
    if not HAVE_RUST:
        if RUST_REQUIRED:
            pytest.fail(f"APB_REQUIRE_RUST=1 but the rust backend is missing: {backend._RUST_IMPORT_ERROR}")
        pytest.skip(NO_RUST_REASON)
    assert "rust" in backend.available_backends()
    assert re.fullmatch(r"\d+\.\d+\.\d+", backend.rust_version())


# --- the convention, on every backend ---------------------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(x=float32_matrices())
def test_roundtrip_gives_signs(name, x):
    with backend.use_backend(name):
        packed = backend.pack_bits(x)
    rows, k = x.shape
    assert packed.dtype == np.uint64 and packed.shape == (rows, -(-k // 64))
    np.testing.assert_array_equal(backend.unpack_bits(packed, k), signs(x))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("k", PACK_KS)
@settings(max_examples=10, deadline=None)
@given(rows=row_counts())
def test_padding_bits_are_zero(name, k, rows):
    with backend.use_backend(name):
        packed = backend.pack_bits(np.full((rows, k), -1.0, np.float32))  # every real bit set
    tail = k % 64
    full_last_word = np.uint64(2**64 - 1) if tail == 0 else np.uint64((1 << tail) - 1)
    assert (packed[:, :-1] == np.uint64(2**64 - 1)).all()
    assert (packed[:, -1] == full_last_word).all()


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(x=float32_matrices())
def test_columns_layout_packs_the_transpose(name, x):
    """pack_bits(xᵀ, layout="columns") is pack_bits(x): same words, padding included, from a (K, rows)
    array, C-ordered or a strided view."""
    with backend.use_backend(name):
        want = backend.pack_bits(x)
        np.testing.assert_array_equal(backend.pack_bits(np.ascontiguousarray(x.T), layout="columns"), want)
        np.testing.assert_array_equal(backend.pack_bits(x.T, layout="columns"), want)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("k", PACK_KS)
def test_columns_layout_of_2bit_planes(name, k):
    v = np.random.default_rng(k).choice(np.array([-3, -1, 1, 3], np.int8), size=(5, k))
    with backend.use_backend(name):
        hi, lo = backend.pack_2bit(v)
        hi_t, lo_t = backend.pack_2bit(np.ascontiguousarray(v.T), layout="columns")
    np.testing.assert_array_equal(hi_t, hi)
    np.testing.assert_array_equal(lo_t, lo)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("func", ["pack_bits", "pack_2bit"])
def test_unknown_layout_is_refused(name, func):
    with backend.use_backend(name), pytest.raises(
            ValueError, match=rf"{func}: layout must be one of \('rows', 'columns'\), got 'cols'"):
        getattr(backend, func)(np.ones((2, 3), np.float32), layout="cols")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_columns_layout_errors_name_the_position_in_x(name, threads, monkeypatch):
    """(row, column) of the array as passed, (K, rows); big enough to be split among threads."""
    monkeypatch.setenv("APB_NUM_THREADS", threads)
    x = np.ones((65, 20000), np.float32)
    x[64, 19999] = np.nan
    v = np.ones((65, 20000), np.int8)
    v[3, 12345] = 2
    with backend.use_backend(name):
        with pytest.raises(ValueError, match=r"pack_bits: x contains NaN \(first at row 64, column 19999\)"):
            backend.pack_bits(x, layout="columns")
        with pytest.raises(ValueError, match=r"pack_2bit: v must hold only -3, -1, 1, 3; got 2 at row 3, column 12345"):
            backend.pack_2bit(v, layout="columns")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_columns_layout_of_empty_shapes(name, shape):
    x = np.ones(shape, np.float32)
    with backend.use_backend(name):
        got = backend.pack_bits(x, layout="columns")
        hi, lo = backend.pack_2bit(x, layout="columns")
    want = (shape[1], -(-shape[0] // 64))
    assert got.shape == hi.shape == lo.shape == want and got.dtype == np.uint64


@pytest.mark.parametrize("name", BACKENDS)
def test_sign_of_zero_and_negative_zero_is_plus_one(name):
    x = np.array([[0.0, -0.0, 1.0, -1.0, -0.0]], np.float32)
    with backend.use_backend(name):
        packed = backend.pack_bits(x)
    assert packed.tolist() == [[0b01000]]  # only element 3 (-1.0) is a 1 bit
    np.testing.assert_array_equal(backend.unpack_bits(packed, 5), [[1, 1, 1, -1, 1]])


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(pair=pm_one_pairs())
def test_dot_product_is_k_minus_twice_popcount_of_xor(name, pair):
    a, b = pair
    k = a.shape[1]
    with backend.use_backend(name):
        pa, pb = backend.pack_bits(a), backend.pack_bits(b)
    popcount = np.bitwise_count(pa[:, None, :] ^ pb[None, :, :]).sum(axis=-1, dtype=np.int64)
    np.testing.assert_array_equal(k - 2 * popcount, (a.astype(np.int64) @ b.T.astype(np.int64)))


@pytest.mark.parametrize("name", BACKENDS)
def test_tiny_negatives_and_integers_keep_their_sign(name):
    # float64 -1e-300 would become -0.0 in float32: the rust backend must not cast it away.
    with backend.use_backend(name):
        assert backend.pack_bits(np.array([[-1e-300, 1e-300]])).tolist() == [[1]]
        assert backend.pack_bits(np.array([[-3, 0, 2]], np.int8)).tolist() == [[1]]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(name, shape):
    with backend.use_backend(name):
        packed = backend.pack_bits(np.zeros(shape, np.float32))
    assert packed.shape == (shape[0], -(-shape[1] // 64)) and packed.dtype == np.uint64
    assert backend.unpack_bits(packed, shape[1]).shape == shape


# --- Rust agrees with the oracle bit for bit ----------------------------------------------------

@needs_rust
@settings(max_examples=80, deadline=None)
@given(x=float32_matrices())
def test_rust_equals_numpy_exactly(x):
    with backend.use_backend("rust"):
        got = backend.pack_bits(x)
    np.testing.assert_array_equal(got, reference.pack_bits(x))


@needs_rust
@settings(max_examples=40, deadline=None)
@given(x=float32_matrices(), layout=st.sampled_from(["strided", "fortran", "transposed"]))
def test_rust_backend_accepts_non_contiguous_views(x, layout):
    view = {
        "strided": lambda: np.repeat(x, 2, axis=1)[:, ::2],
        "fortran": lambda: np.asfortranarray(x),
        "transposed": lambda: np.ascontiguousarray(x.T).T,
    }[layout]()
    np.testing.assert_array_equal(view, x)
    with backend.use_backend("rust"):
        got = backend.pack_bits(view)
    np.testing.assert_array_equal(got, reference.pack_bits(x))


@needs_rust
def test_rust_threaded_path_equals_numpy_and_finds_nan():
    # Through the backend wrapper (default threads); NaN is found wherever it sits in a large input.
    x = np.random.default_rng(7).standard_normal((301, 577)).astype(np.float32)
    x[::17, ::5] = -0.0
    with backend.use_backend("rust"):
        np.testing.assert_array_equal(backend.pack_bits(x), reference.pack_bits(x))
        x[250, 576] = np.nan
        x[290, 3] = np.nan
        with pytest.raises(ValueError, match=r"NaN \(first at row 250, column 576\)"):
            backend.pack_bits(x)


def test_rust_extension_itself_rejects_what_the_wrapper_would_fix(raw_rust):
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"pack_bits: x .*not C-contiguous"):
        raw_rust.pack_bits(x[:, ::2])
    with pytest.raises(ValueError, match=r"pack_bits: x must be a C-contiguous float32 2-D array \(3-D with layout='columns'\), "
                                         r"got dtype int8 shape \(3,\)"):
        raw_rust.pack_bits(np.zeros(3, np.int8))
    with pytest.raises(ValueError, match=r"got dtype float64 shape \(3, 8\)"):
        raw_rust.pack_bits(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"pack_bits: x .*got an object of type list"):
        raw_rust.pack_bits([[1.0, -1.0]])
    with pytest.raises(ValueError, match=r"pack_bits: x contains NaN \(first at row 2, column 5\)"):
        x[2, 5] = np.nan
        raw_rust.pack_bits(x)


# --- bad input names the argument -----------------------------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones(5, np.float32), r"pack_bits: x must be .*2-D.*\(5,\)"),
        (np.ones((2, 3, 4), np.float32), r"pack_bits: x must be .*2-D.*\(2, 3, 4\)"),
        (np.array([[1.0, np.nan]], np.float32), r"pack_bits: x contains NaN \(first at row 0, column 1\)"),
        (np.array([[1.0, np.nan]]), r"pack_bits: x contains NaN"),
        (np.array([[True, False]]), r"pack_bits: x must be a float or integer array, got dtype bool"),
    ],
)
def test_pack_bits_rejects_bad_x(name, bad, message):
    with backend.use_backend(name), pytest.raises(ValueError, match=message):
        backend.pack_bits(bad)


@pytest.mark.parametrize(
    "packed, k, message",
    [
        (np.zeros((2, 1), np.int64), 3, r"unpack_bits: packed must be a uint64 numpy array, got int64"),
        ([[0]], 3, r"unpack_bits: packed must be a uint64 numpy array, got list"),
        (np.zeros(2, np.uint64), 3, r"unpack_bits: packed must be 2-D .*\(2,\)"),
        (np.zeros((2, 1), np.uint64), 65, r"unpack_bits: k=65 is larger than the packed capacity 64"),
        (np.zeros((2, 1), np.uint64), -1, r"unpack_bits: k must be a non-negative integer, got -1"),
        (np.zeros((2, 1), np.uint64), 2.0, r"unpack_bits: k must be a non-negative integer, got 2.0"),
    ],
)
def test_unpack_bits_rejects_bad_arguments(packed, k, message):
    with pytest.raises(ValueError, match=message):
        backend.unpack_bits(packed, k)


# --- the seam itself --------------------------------------------------------------------------------

def test_backend_selection(monkeypatch):
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.setenv("APB_BACKEND", "numpy")
    assert backend.get_backend() == "numpy"

    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.setenv("APB_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"APB_BACKEND must be one of numpy, rust; got 'cuda'"):
        backend.get_backend()

    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.delenv("APB_BACKEND")
    assert backend.get_backend() == ("rust" if HAVE_RUST else "numpy")

    with pytest.raises(ValueError, match=r"set_backend: name must be one of numpy, rust; got 'fast'"):
        backend.set_backend("fast")


def test_requesting_missing_rust_says_how_to_build(monkeypatch):
    monkeypatch.setattr(backend, "_rust", None)
    monkeypatch.setattr(backend, "_active", None)
    assert backend.available_backends() == ["numpy"] and backend.rust_version() is None
    with pytest.raises(RuntimeError, match=r"rust backend.*pip install -e"):
        backend.set_backend("rust")
    assert backend.get_backend() == "numpy"


def test_only_the_backend_imports_the_extension():
    package = pathlib.Path(backend.__file__).resolve().parents[1]
    importers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            else:
                continue
            if any(n.split(".")[-1] == "_kernels" for n in names) and path.name != "backend.py":
                importers.append(str(path.relative_to(package)))
    assert importers == [], "import apb_ref._kernels only through apb_ref.kernels.backend"


# --- isa= of the Rust packers ---------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_rust_pack_isa_argument_gives_identical_results(raw_rust, threads):
    # Every path the CPU has, on awkward K and values; 1900 x 577 float32 (4.4 MB) is past the size
    # where the Rust side splits rows among threads.
    rng = np.random.default_rng(11)
    specials = np.array([0.0, -0.0, 1e-45, -1e-45, -1e-40, np.inf, -np.inf, 3.4e38, -3.4e38, 1.0, -1.0],
                        np.float32)
    cases = [rng.choice(specials, size=(rows, k)) for rows, k in [(3, 1), (5, 63), (4, 64), (6, 65), (7, 1000)]]
    cases.append(rng.standard_normal((1900, 577)).astype(np.float32))
    for x in cases:
        want = reference.pack_bits(x)
        i8 = np.clip(np.round(np.clip(x, -3, 3) * 64), -128, 127).astype(np.int8)  # hits -128 and 127
        v = rng.choice(np.array([-3, -1, 1, 3], np.int8), size=x.shape)
        for isa in raw_rust.isa_available():
            np.testing.assert_array_equal(raw_rust.pack_bits(x, threads=threads, isa=isa), want)
            np.testing.assert_array_equal(raw_rust.pack_bits(i8, threads, isa), reference.pack_bits(i8))
            np.testing.assert_array_equal(raw_rust.pack_mask(x < 0, threads=threads, isa=isa), want)
            for dtype in (np.int8, np.float32):
                hi, lo = raw_rust.pack_2bit(v.astype(dtype), threads=threads, isa=isa)
                want_hi, want_lo = reference.pack_2bit(v)
                np.testing.assert_array_equal(hi, want_hi)
                np.testing.assert_array_equal(lo, want_lo)
    big = cases[-1]
    big[1234, 576] = np.nan
    big[1500, 0] = -np.nan
    for isa in raw_rust.isa_available():
        with pytest.raises(ValueError, match=r"pack_bits: x contains NaN \(first at row 1234, column 576\)"):
            raw_rust.pack_bits(big, threads=threads, isa=isa)


def test_rust_pack_isa_argument_is_checked(raw_rust):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r'pack_bits: isa must be one of avx512, avx2, scalar; got "sse"'):
        raw_rust.pack_bits(x, isa="sse")
    with pytest.raises(ValueError, match=r"pack_2bit: isa must be a string or None, got 3"):
        raw_rust.pack_2bit(x, isa=3)
    for isa in {"avx512", "avx2"} - set(raw_rust.isa_available()):
        with pytest.raises(ValueError, match=rf"pack_mask: isa asks for {isa}, which this CPU does not support"):
            raw_rust.pack_mask(x < 0, isa=isa)
