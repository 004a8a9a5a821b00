"""The backend seam: one set of kernel functions, dispatched to NumPy or to the Rust extension.

This is the only module that imports `apb_ref._kernels`. The backend is chosen, in order, by
`set_backend(name)`, else the environment variable `APB_BACKEND=numpy|rust`, else "rust" when the
extension imports and "numpy" otherwise. The package works with NumPy alone.

Adding a kernel: write its NumPy twin in `reference.py`, optionally a Rust wrapper here, then add one
row to `_KERNELS` and one `name = _kernel("name")` line below it.
"""
from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from ..ops import accel
from ..ops.lowering import im2col_columns, pad_hw
from . import contracts, reference

try:  # the compiled extension is optional
    from .. import _kernels as _rust
    _RUST_IMPORT_ERROR = None
except ImportError as exc:  # not built, or built for another Python
    _rust = None
    _RUST_IMPORT_ERROR = exc

BACKENDS = ("numpy", "rust")
_BUILD_HINT = 'build it with `pip install -e ".[test]"` (needs Rust and maturin) from the repository root'
_active: str | None = None  # resolved lazily so a bad APB_BACKEND fails at first use, not at import


def available_backends() -> list[str]:
    """Backends usable in this process: always "numpy", plus "rust" when the extension imports."""
    return ["numpy", "rust"] if _rust is not None else ["numpy"]


def rust_version() -> str | None:
    """Version of the compiled extension, or None when it is not importable."""
    return _rust.version() if _rust is not None else None


def rust_isa() -> str | None:
    """The instruction set the compiled extension's kernels run on here (e.g. "avx2"), or None."""
    return _rust.isa_selected() if _rust is not None else None


def _check(name, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "rust" and _rust is None:
        why = f" ({_RUST_IMPORT_ERROR})" if _RUST_IMPORT_ERROR else ""
        raise RuntimeError(
            f"{source} asks for the rust backend but apb_ref._kernels did not import{why}; {_BUILD_HINT}"
        )
    return name


def set_backend(name: str) -> None:
    """Use `name` ("numpy" or "rust") for every kernel call from now on."""
    global _active
    _active = _check(name, "set_backend: name")


def get_backend() -> str:
    """The active backend: "numpy" or "rust"."""
    global _active
    if _active is None:
        env = os.environ.get("APB_BACKEND", "").strip().lower()
        if env:
            _active = _check(env, "environment variable APB_BACKEND")
        else:
            _active = "rust" if _rust is not None else "numpy"
    return _active


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily switch backend: `with use_backend("numpy"): ...`."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


# --- Rust wrappers: adapt arguments to the extension's strict contracts -------------------------

def _contiguous(x):
    """A C-contiguous, aligned view or copy of an ndarray (the Rust bindings require both); anything
    else as is, so the extension's own check names the bad argument."""
    return np.require(x, requirements=["C", "A"]) if isinstance(x, np.ndarray) else x


def _rust_call(name: str, written: tuple[int, ...] = ()):
    """The Rust kernel `name` with its arrays made contiguous, except those it writes in place: the
    option add_to and the positional arrays at `written` (a copy would lose the result; the binding
    names a bad one instead)."""
    def call(*args, **options):
        options = {key: v if key == "add_to" else _contiguous(v) for key, v in options.items()}
        args = [a if i in written else _contiguous(a) for i, a in enumerate(args)]
        return getattr(_rust, name)(*args, **options)
    call.__name__ = f"_{name}_rust"
    return call


def _pack_bits_rust(x, *, layout="rows", **options):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.int8):
        # Casting to float32 could flush a tiny negative to -0.0 and flip its bit: let the oracle do it.
        return reference.pack_bits(x, layout=layout)
    return _rust.pack_bits(_contiguous(x), layout=layout, **options)


def _im2col_fast(x, kh, kw, stride=1, padding=0, layout="rows"):
    """The columns layout by the conv ops' threaded copy (memory-bound: Rust would not beat it); the
    rows layout, which nothing hot uses, by the oracle."""
    if layout != "columns":
        return reference.im2col(x, kh, kw, stride, padding, layout)
    contracts.check_array("im2col", "x", x, np.float32, 4, "(N, C, H, W)")
    contracts.check_conv_args("im2col", kh, kw, stride, padding)
    n, c, h, w = x.shape
    ho, wo = contracts.conv_output("im2col", n, h, w, kh, kw, stride, padding, c * kh * kw)
    return im2col_columns(pad_hw(x, padding), kh, kw, stride, ho, wo)


def _bconv_1bit_rust(*args, csr=None, **options):
    """The csr tuple's arrays made contiguous too (the generic wrapper passes a tuple as is)."""
    if isinstance(csr, tuple):
        csr = tuple(map(_contiguous, csr))
    return _rust_call("bconv_1bit")(*args, csr=csr, **options)


# name -> (NumPy reference, the fast implementation (Rust, or None while the kernel is NumPy-only))
_KERNELS = {
    "pack_bits": (reference.pack_bits, _pack_bits_rust),
    "pack_mask": (reference.pack_mask, _rust_call("pack_mask")),
    "pack_2bit": (reference.pack_2bit, _rust_call("pack_2bit")),
    "unpack_bits": (reference.unpack_bits, None),
    "unpack_2bit": (reference.unpack_2bit, None),
    "bgemm_1x1": (reference.bgemm_1x1, _rust_call("bgemm_1x1")),
    "bgemm_1x2": (reference.bgemm_1x2, _rust_call("bgemm_1x2")),
    "bgemm_2x2": (reference.bgemm_2x2, _rust_call("bgemm_2x2")),
    "csr_matmul": (reference.csr_matmul, _rust_call("csr_matmul")),
    "im2col": (reference.im2col, _im2col_fast),
    "im2col_bits": (reference.im2col_bits, _rust_call("im2col_bits")),
    "csr_conv2d": (reference.csr_conv2d, _rust_call("csr_conv2d")),
    "bconv_1bit": (reference.bconv_1bit, _bconv_1bit_rust),
}


def _kernel(name: str):
    numpy_fn, fast_fn = _KERNELS[name]

    @functools.wraps(numpy_fn)
    def dispatch(*args, **kwargs):
        if fast_fn is not None and get_backend() == "rust":
            return fast_fn(*args, **kwargs)
        return numpy_fn(*args, **kwargs)

    dispatch.__module__ = __name__
    return dispatch


pack_bits = _kernel("pack_bits")
pack_mask = _kernel("pack_mask")
pack_2bit = _kernel("pack_2bit")
unpack_bits = _kernel("unpack_bits")
unpack_2bit = _kernel("unpack_2bit")
bgemm_1x1 = _kernel("bgemm_1x1")
bgemm_1x2 = _kernel("bgemm_1x2")
bgemm_2x2 = _kernel("bgemm_2x2")
csr_matmul = _kernel("csr_matmul")
im2col = _kernel("im2col")
im2col_bits = _kernel("im2col_bits")
csr_conv2d = _kernel("csr_conv2d")
bconv_1bit = _kernel("bconv_1bit")
KERNEL_NAMES = tuple(_KERNELS)


# --- training kernels: the ops' fast twins (`apb_ref/ops/accel.py`), Rust only ----------------------
_TRAINING = {name: _rust_call(name) for name in (
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward",
    "batch_norm_forward", "batch_norm_backward", "batch_norm_eval",
    "relu_forward", "relu_backward", "hardtanh_forward", "hardtanh_backward", "sign_forward",
    "dorefa_forward", "dorefa_backward", "apb_forward", "apb_backward",
    "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
    "cross_entropy_forward", "cross_entropy_backward")}
# the optimizer steps write the parameter and its state in place: (p, g, buf) and (p, m, v, g)
_TRAINING.update(sgd_step=_rust_call("sgd_step", (0, 2)), adam_step=_rust_call("adam_step", (0, 1, 2)))


def _training_kernel(name: str):
    """The Rust twin of an op's array work while the backend is "rust", else None (NumPy)."""
    return _TRAINING.get(name) if _rust is not None and get_backend() == "rust" else None


accel.set_provider(_training_kernel)


# --- a chain of binary convs prepared once (`apb_ref/packed/fused.py`), Rust only -------------------
def binary_net(input_shape, padding, convs, steps, output, act_bits=1, stem=None, head=None):
    """The Rust `BinaryNet` (its docstring has the arguments) while the backend is "rust", else None:
    its NumPy twin is the chain of `bconv_1bit` calls (and float modules) it replaces."""
    if _rust is None or get_backend() != "rust":
        return None
    contiguous = lambda parts: None if parts is None else tuple(map(_contiguous, parts))  # noqa: E731
    convs = [(*(_contiguous(a) for a in c[:8]), contiguous(c[8])) for c in convs]
    return _rust.BinaryNet(tuple(input_shape), padding, convs, list(steps), output, act_bits=act_bits,
                           stem=contiguous(stem), head=contiguous(head))
