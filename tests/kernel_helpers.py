"""Shared bits of the kernel tests: whether the Rust extension is required/present, the `raw_rust`
fixture, a counter of the Rust training twins' calls, random packed operands, and an independent
unpacking of packed bits.

Tests import them as `from kernel_helpers import ...` (pytest puts tests/ on sys.path). A test module
that uses the fixture imports it by name: `from kernel_helpers import raw_rust  # noqa: F401`.
"""
import contextlib
import importlib
import os

import numpy as np
import pytest

from apb_ref.kernels import backend

RUST_REQUIRED = os.environ.get("APB_REQUIRE_RUST") == "1"
HAVE_RUST = backend.rust_version() is not None
NO_RUST_REASON = (
    'apb_ref._kernels is not built (pip install -e ".[test]"); set APB_REQUIRE_RUST=1 to fail instead'
)
# Without the extension the Rust cases skip, unless CI demands it: then they run and fail loudly.
needs_rust = pytest.mark.skipif(not HAVE_RUST and not RUST_REQUIRED, reason=NO_RUST_REASON)
BACKENDS = ["numpy", pytest.param("rust", marks=needs_rust)]


@contextlib.contextmanager
def counting_twins():
    """Counts the calls of each Rust training twin while it is open (so a test knows the fast path ran)."""
    counts, saved = {}, dict(backend._TRAINING)

    def counting(name, fn):
        def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return call

    backend._TRAINING.update({name: counting(name, fn) for name, fn in saved.items()})
    try:
        yield counts
    finally:
        backend._TRAINING.update(saved)


def import_raw_rust():
    """The extension module itself, or a skip (a failure under APB_REQUIRE_RUST=1)."""
    try:
        return importlib.import_module("apb_ref._kernels")
    except ImportError as exc:
        if RUST_REQUIRED:
            pytest.fail(f"APB_REQUIRE_RUST=1 but apb_ref._kernels does not import: {exc}")
        pytest.skip(NO_RUST_REASON)


@pytest.fixture(scope="module")
def raw_rust():
    """The extension module itself, to test its own argument checks and force its ISA paths
    (the package goes through backend)."""
    return import_raw_rust()


def rust_isas():
    """ISA paths the extension can run on this CPU, best first; ["scalar"] when it is not built
    (the tests that use them then skip through `raw_rust`). Evaluated at collection time."""
    try:
        return list(importlib.import_module("apb_ref._kernels").isa_available())
    except ImportError:
        return ["scalar"]


# --- operands -------------------------------------------------------------------------------------

def words_for(k):
    return -(-k // 64)


def last_word_mask(k):
    """Bits of the last word that hold real elements, as a uint64."""
    tail = k % 64
    return np.uint64(2**64 - 1) if tail == 0 else np.uint64((1 << tail) - 1)


def random_packed(rng, rows, k):
    """A (rows, ceil(k/64)) uint64 matrix of random bits with the padding bits past k cleared."""
    p = rng.integers(0, 2**64, size=(rows, words_for(k)), dtype=np.uint64, endpoint=False)
    if p.size:
        p[:, -1] &= last_word_mask(k)
    return p


def unpack_pm1(packed, k):
    """Independent unpacking (shifts, not np.unpackbits): (rows, k) float64 of ±1, bit 1 -> -1."""
    packed = np.asarray(packed, dtype=np.uint64)
    t = np.arange(k)
    bits = (packed[:, t // 64] >> (t % 64).astype(np.uint64)) & np.uint64(1)
    return 1.0 - 2.0 * bits.astype(np.float64)


def unpack_2bit_f64(hi, lo, k):
    """(rows, k) float64 in {-3, -1, 1, 3}: v = 2·hi + lo."""
    return 2.0 * unpack_pm1(hi, k) + unpack_pm1(lo, k)


def random_csr(rng, m, k, density, empty_rows=0.0):
    """A random (m, k) float32 matrix with about `density` non-zeros, a fraction `empty_rows` of its
    rows zeroed, and its CSR arrays (indptr int64, indices int32, data float32)."""
    dense = rng.standard_normal((m, k)).astype(np.float32)
    dense[rng.random((m, k)) >= density] = 0.0
    dense[rng.random(m) < empty_rows] = 0.0
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    return dense, (indptr, cols.astype(np.int32), dense[rows, cols].astype(np.float32))


def assert_close_scaled(got, want, scale, rtol=1e-5):
    """|got − want| ≤ rtol·|want| + rtol·scale elementwise: float32 rounding of a sum whose terms'
    absolute values add up to `scale` (cancellation makes a plain rtol meaningless)."""
    got, want, scale = (np.asarray(a, np.float64) for a in (got, want, scale))
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want)
    bound = rtol * np.abs(want) + rtol * scale + 1e-30
    bad = err > bound
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} entries differ beyond float32 rounding; worst at "
        f"{np.unravel_index(np.argmax(err - bound), err.shape)}: got "
        f"{got.flat[np.argmax(err - bound)]!r}, want {want.flat[np.argmax(err - bound)]!r}"
    )
