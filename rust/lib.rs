//! `apb_ref._kernels`: the Rust kernels of apb-ref, exposed to Python through PyO3.
//!
//! This file holds only the bindings: validate the arguments, release the GIL, call into a pure-Rust
//! module (`bits`, `bgemm`, `spmm`, `conv`), and turn errors into Python `ValueError`s naming the function and
//! the argument. Nothing here may panic across FFI: no `unwrap`/`expect`, no indexing that user input
//! can push out of range, outputs allocated through `numpy.empty` (a failed allocation is a Python
//! `MemoryError`, not a panic). Python code never imports this module directly;
//! `apb_ref.kernels.backend` is the one seam. The exact contracts are in `apb_ref/kernels/CONTRACTS.md`.
//!
//! # Bit conventions (the same text lives in `apb_ref/kernels/__init__.py`)
//!
//! * 1-bit values are ±1. They are packed 64 per `u64` along the reduction axis K (the last axis), in
//!   little-endian bit order: element `k` of a row goes to word `k / 64`, bit `k % 64`.
//! * Bit 1 means −1 (value < 0, like the IEEE sign bit); bit 0 means +1. So sign(0) = sign(−0.0) = +1.
//! * Padding (K rounded up to a multiple of 64) is bit 0 in every operand, so it adds nothing to
//!   `popcount(a ^ b)`: a ±1 dot product of true length K is `K − 2·popcount(a ^ b)`.
//! * 2-bit signed values `{−3, −1, +1, +3}·(s/2)` are stored as two sign planes `hi`, `lo`, each packed
//!   as above with each bit meaning ±1, and `v = 2·hi + lo`.
//!
//! # Instruction sets and threads
//!
//! Every kernel takes `isa=None` (`"avx512"`, `"avx2"` or `"scalar"`; else the environment variable
//! `APB_KERNEL_ISA`, else the best this CPU has; see `isa.rs`) where it has SIMD paths, and
//! `threads=None` (else `APB_NUM_THREADS`, else every core; see `threads.rs`).

#![deny(unsafe_op_in_unsafe_fn)]
// The microkernels index several register arrays with one loop variable (`acc[i][v]` from `a[i]`
// and `b[v]`); iterator chains would hide that shape.
#![allow(clippy::needless_range_loop)]

pub mod bgemm;
pub mod bits;
pub mod conv;
pub mod isa;
pub mod spmm;
#[cfg(test)]
mod test_rng;
pub mod threads;

use numpy::{
    Element, PyArray1, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

use bgemm::Kind;
use bits::{words_for, MaskByte, PackError, Source};

/// The crate version, e.g. "0.1.0".
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// Format a shape the way Python prints a tuple: `(3,)`, `(2, 5)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `x` as an untyped NumPy array, or a ValueError saying what it was.
fn as_array<'a, 'py>(x: &'a Bound<'py, PyAny>, expected: &str) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    x.cast::<PyUntypedArray>().map_err(|_| {
        let ty = x
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        value_error(format!("{expected}, got an object of type {ty}"))
    })
}

/// "got dtype D shape S[, not C-contiguous]" for error messages.
fn describe(arr: &Bound<'_, PyUntypedArray>) -> String {
    let layout = if arr.is_c_contiguous() {
        ""
    } else {
        ", not C-contiguous"
    };
    format!(
        "got dtype {} shape {}{layout}",
        arr.dtype(),
        py_shape(arr.shape())
    )
}

fn has_dtype<T: Element>(arr: &Bound<'_, PyUntypedArray>) -> bool {
    arr.dtype().is_equiv_to(&numpy::dtype::<T>(arr.py()))
}

/// Borrow `x` as a C-contiguous `ndim`-D array of `T` (`want` names the dtype in messages).
fn typed<'py, T: Element>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    want: &str,
    ndim: usize,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let expected = format!("{func}: {name} must be a C-contiguous {want} {ndim}-D array");
    let arr = as_array(x, &expected)?;
    if arr.ndim() != ndim || !has_dtype::<T>(arr) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    Ok(arr.clone())
}

/// Read-only contiguous data of an array already checked by [`typed`] (or equivalent) to hold `T`.
fn slice_of<'py, T: Element>(
    func: &str,
    name: &str,
    arr: &Bound<'py, PyUntypedArray>,
) -> PyResult<numpy::PyReadonlyArrayDyn<'py, T>> {
    let typed = arr
        .cast::<numpy::PyArrayDyn<T>>()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))?;
    typed
        .try_readonly()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))
}

fn as_slice<'a, T: Element>(
    func: &str,
    name: &str,
    ro: &'a numpy::PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    ro.as_slice()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))
}

/// A new uninitialized C-contiguous `(rows, cols)` array of `T`, through `numpy.empty` so that a
/// failed allocation is a Python MemoryError. Every caller writes every element.
fn empty2<'py, T: Element>(
    py: Python<'py>,
    func: &str,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let bytes = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
        .filter(|&b| b <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(value_error(format!(
            "{func}: the result of shape ({rows}, {cols}) is too large"
        )));
    }
    let np = py.import("numpy")?;
    let arr = np
        .getattr("empty")?
        .call1(((rows, cols), numpy::dtype::<T>(py)))?;
    arr.cast_into::<PyArray2<T>>()
        .map_err(|e| value_error(format!("{func}: output: {e}")))
}

/// A new `(rows, cols)` array of `T` filled by `compute` with the GIL released; `compute` must write
/// every element and returns its error message, which becomes the ValueError.
fn filled2<'py, T: Element + Send>(
    py: Python<'py>,
    func: &str,
    rows: usize,
    cols: usize,
    compute: impl FnOnce(&mut [T]) -> Result<(), String> + Send,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let out = empty2::<T>(py, func, rows, cols)?;
    {
        let mut rw = out.readwrite();
        let os = rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{func}: output: {e}")))?;
        py.detach(|| compute(os)).map_err(value_error)?;
    }
    Ok(out)
}

/// An optional integer argument (`None` -> None); anything but an int (bools included) is an error.
fn opt_int(func: &str, name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if v.is_instance_of::<PyBool>() {
        return Err(value_error(format!("{func}: {name} must be an integer, got {v}")));
    }
    v.extract::<i64>().map(Some).map_err(|_| {
        value_error(format!(
            "{func}: {name} must be an integer, got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

/// An optional string argument (`None` -> None).
fn opt_str(func: &str, name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let s = v.cast::<PyString>().map_err(|_| {
        value_error(format!(
            "{func}: {name} must be a string or None, got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })?;
    Ok(Some(s.to_str()?.to_owned()))
}

fn resolve_threads(func: &str, threads: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let n = opt_int(func, "threads", threads)?;
    threads::resolve(n, &format!("{func}: threads")).map_err(value_error)
}

fn resolve_isa(func: &str, isa: Option<&Bound<'_, PyAny>>) -> PyResult<isa::Isa> {
    let name = opt_str(func, "isa", isa)?;
    isa::resolve(name.as_deref(), &format!("{func}: isa")).map_err(value_error)
}

/// `layout` of a packing call: "rows" (the default; x is (rows, K)) or "columns" (x is (K, rows)).
fn resolve_layout(func: &str, layout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
    match opt_str(func, "layout", layout)?.as_deref() {
        None | Some("rows") => Ok(false),
        Some("columns") => Ok(true),
        Some(other) => Err(value_error(format!(
            "{func}: layout must be one of ('rows', 'columns'), got '{other}'"
        ))),
    }
}

/// Names of the instruction-set paths this CPU can run, best first (always ends with "scalar").
#[pyfunction]
fn isa_available() -> Vec<&'static str> {
    isa::available().into_iter().map(|i| i.name()).collect()
}

/// The path a kernel call without `isa=` uses: `APB_KERNEL_ISA` if set, else the best available.
#[pyfunction]
fn isa_selected() -> PyResult<&'static str> {
    isa::resolve(None, "isa").map(|i| i.name()).map_err(value_error)
}

/// The thread count a kernel call without `threads=` uses: `APB_NUM_THREADS` if set, else every core.
#[pyfunction]
fn threads_selected() -> PyResult<usize> {
    threads::resolve(None, "threads").map_err(value_error)
}

// --- packing -------------------------------------------------------------------------------------

/// Pack an array already checked to be a C-contiguous array of `T` into `P` planes: a 2-D
/// `(rows, K)` array, or with `columns` a `(K, rows)` one or a batch `(B, K, rows)` of them (whose
/// planes are `(B·rows, W)`, the matrices' rows one after another). `describe_invalid` gets the
/// position ("row r, column c", or "matrix b, row r, column c") and the value.
#[allow(clippy::too_many_arguments)] // the call's own options; a struct would only rename them
fn pack_typed<'py, T: Source<P> + Element + std::fmt::Debug, const P: usize>(
    py: Python<'py>,
    func: &str,
    name: &str,
    arr: &Bound<'py, PyUntypedArray>,
    threads: usize,
    isa: isa::Isa,
    columns: bool,
    describe_invalid: impl Fn(String, String) -> String,
) -> PyResult<[Bound<'py, PyArray2<u64>>; P]> {
    // rows layout: x is (rows, K); columns layout: x is (K, rows) or (B, K, rows), packed down its columns.
    let (batch, k, n) = match arr.shape() {
        [a, b] if columns => (1, *a, *b),
        [b, a, c] if columns => (*b, *a, *c),
        [r, k] => (1, *k, *r),
        s => {
            let want = if columns {
                "2-D (K, rows) or 3-D (B, K, rows)"
            } else {
                "2-D (rows, K)"
            };
            return Err(value_error(format!(
                "{func}: {name} must be {want}, got shape {}",
                py_shape(s)
            )));
        }
    };
    let Some(rows) = batch.checked_mul(n) else {
        return Err(value_error(format!("{func}: {name} is too large")));
    };
    let ro = slice_of::<T>(func, name, arr)?;
    let xs = as_slice(func, name, &ro)?;
    let words = words_for(k);
    let mut outs = Vec::with_capacity(P);
    for _ in 0..P {
        outs.push(empty2::<u64>(py, func, rows, words)?);
    }
    {
        let mut rws = outs.iter().map(|o| o.readwrite()).collect::<Vec<_>>();
        let mut slices: Vec<&mut [u64]> = Vec::with_capacity(P);
        for rw in rws.iter_mut() {
            slices.push(
                rw.as_slice_mut()
                    .map_err(|e| value_error(format!("{func}: output: {e}")))?,
            );
        }
        let planes: [&mut [u64]; P] = slices
            .try_into()
            .map_err(|_| value_error(format!("{func}: internal error: plane count")))?;
        // The packers bring in pool threads themselves, only when the input is worth splitting.
        let result = py.detach(|| {
            if columns {
                bits::columns::pack_columns::<T, P>(xs, batch, k, planes, threads, isa, bits::SPLIT)
            } else {
                bits::pack_planes::<T, P>(xs, k, planes, threads, isa)
            }
        });
        match result {
            Err(PackError::Invalid { row, col }) => {
                let cols = arr.shape().last().copied().unwrap_or(1);
                let v = xs
                    .get(row * cols + col)
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let at = match arr.ndim() {
                    3 => format!("matrix {}, row {}, column {col}", row / k.max(1), row % k.max(1)),
                    _ => format!("row {row}, column {col}"),
                };
                return Err(value_error(describe_invalid(at, v)));
            }
            Err(e) => return Err(value_error(format!("{func}: {e}"))),
            Ok(()) => {}
        }
    }
    outs.try_into()
        .map_err(|_| value_error(format!("{func}: internal error: plane count")))
}

/// Pack the signs of a (rows, K) float32 or int8 matrix into a (rows, ceil(K/64)) uint64 matrix.
///
/// Bit `k % 64` of word `k / 64` is 1 where `x[row, k] < 0`; padding bits are 0. NaN is rejected.
/// `isa` picks the packing code path (results are identical on every path). `layout="columns"`: x is
/// given transposed, (K, rows) — im2col's columns — and packs down its columns to the same result;
/// or a batch (B, K, rows) of such matrices (an NCHW map as (N, C, H·W): each pixel's channels), whose
/// packed rows follow one another, (B·rows, W).
#[pyfunction]
#[pyo3(signature = (x, threads=None, isa=None, layout=None))]
fn pack_bits<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
    layout: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    const F: &str = "pack_bits";
    let expected = format!("{F}: x must be a C-contiguous float32 2-D array (3-D with layout='columns')");
    let arr = as_array(x, &expected)?;
    if !(2..=3).contains(&arr.ndim())
        || !arr.is_c_contiguous()
        || !(has_dtype::<f32>(arr) || has_dtype::<i8>(arr))
    {
        return Err(value_error(format!(
            "{expected}, {} (int8 is accepted too)",
            describe(arr)
        )));
    }
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let columns = resolve_layout(F, layout)?;
    let nan = |at, _| format!("{F}: x contains NaN (first at {at})");
    let [out] = if has_dtype::<f32>(arr) {
        pack_typed::<f32, 1>(py, F, "x", arr, threads, isa, columns, nan)?
    } else {
        pack_typed::<i8, 1>(py, F, "x", arr, threads, isa, columns, nan)?
    };
    Ok(out)
}

/// Pack a (rows, K) bool matrix as it is (True -> bit 1, i.e. −1) into (rows, ceil(K/64)) uint64.
#[pyfunction]
#[pyo3(signature = (bits, threads=None, isa=None))]
fn pack_mask<'py>(
    py: Python<'py>,
    bits: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    const F: &str = "pack_mask";
    let arr = typed::<bool>(F, "bits", bits, "bool", 2)?;
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    // Read the bytes as uint8 (a NumPy bool byte need not be 0 or 1; any non-zero byte is True).
    let bytes = arr.call_method1("view", ("uint8",))?;
    let bytes = typed::<u8>(F, "bits", &bytes, "uint8 view of a bool", 2)?;
    let [out] = pack_typed_mask(py, F, &bytes, threads, isa)?;
    Ok(out)
}

fn pack_typed_mask<'py>(
    py: Python<'py>,
    func: &str,
    bytes: &Bound<'py, PyUntypedArray>,
    threads: usize,
    isa: isa::Isa,
) -> PyResult<[Bound<'py, PyArray2<u64>>; 1]> {
    let (rows, k) = match bytes.shape() {
        [r, k] => (*r, *k),
        _ => return Err(value_error(format!("{func}: bits must be 2-D"))),
    };
    let ro = slice_of::<u8>(func, "bits", bytes)?;
    let xs = as_slice(func, "bits", &ro)?;
    // SAFETY: MaskByte is #[repr(transparent)] over u8, so a &[u8] is a valid &[MaskByte] of the same
    // length and lifetime (same size, alignment and validity: every u8 is a valid MaskByte).
    let masks: &[MaskByte] = unsafe { std::slice::from_raw_parts(xs.as_ptr().cast(), xs.len()) };
    let out = filled2(py, func, rows, words_for(k), |os| {
        bits::pack_planes::<MaskByte, 1>(masks, k, [os], threads, isa).map_err(|e| format!("{func}: {e}"))
    })?;
    Ok([out])
}

/// A packed (rows, words) uint64 array handed back to Python.
type Words<'py> = Bound<'py, PyArray2<u64>>;

/// Pack a (rows, K) matrix of values in {−3, −1, 1, 3} into two sign planes `(hi, lo)`, each
/// (rows, ceil(K/64)) uint64, with v = 2·hi + lo. `layout` as for `pack_bits`.
#[pyfunction]
#[pyo3(signature = (v, threads=None, isa=None, layout=None))]
fn pack_2bit<'py>(
    py: Python<'py>,
    v: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
    layout: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Words<'py>, Words<'py>)> {
    const F: &str = "pack_2bit";
    let expected = format!(
        "{F}: v must be a C-contiguous 2-D array (3-D with layout='columns') of float32, float64, int8, \
         int16, int32 or int64"
    );
    let arr = as_array(v, &expected)?;
    if !(2..=3).contains(&arr.ndim()) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let columns = resolve_layout(F, layout)?;
    let bad = |at, val: String| format!("{F}: v must hold only -3, -1, 1, 3; got {val} at {at}");
    let [hi, lo] = if has_dtype::<f32>(arr) {
        pack_typed::<f32, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else if has_dtype::<f64>(arr) {
        pack_typed::<f64, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else if has_dtype::<i8>(arr) {
        pack_typed::<i8, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else if has_dtype::<i16>(arr) {
        pack_typed::<i16, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else if has_dtype::<i32>(arr) {
        pack_typed::<i32, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else if has_dtype::<i64>(arr) {
        pack_typed::<i64, 2>(py, F, "v", arr, threads, isa, columns, bad)?
    } else {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    };
    Ok((hi, lo))
}

// --- popcount GEMMs ------------------------------------------------------------------------------

/// Validate `k` (an int in [1, max_k]).
fn parse_k(func: &str, k: &Bound<'_, PyAny>, max_k: usize) -> PyResult<usize> {
    let k = opt_int(func, "k", Some(k))?
        .ok_or_else(|| value_error(format!("{func}: k must be an integer, got None")))?;
    if k < 1 || k as u64 > max_k as u64 {
        return Err(value_error(format!(
            "{func}: k must be in [1, {max_k}] (larger k could overflow the int32 result), got {k}"
        )));
    }
    Ok(k as usize)
}

/// One packed operand plane after validation.
struct Plane<'py> {
    name: &'static str,
    arr: Bound<'py, PyUntypedArray>,
    rows: usize,
    words: usize,
}

fn plane<'py>(func: &str, name: &'static str, x: &Bound<'py, PyAny>) -> PyResult<Plane<'py>> {
    let arr = typed::<u64>(func, name, x, "uint64", 2)?;
    let (rows, words) = match arr.shape() {
        [r, w] => (*r, *w),
        _ => return Err(value_error(format!("{func}: {name} must be 2-D"))),
    };
    Ok(Plane {
        name,
        arr,
        rows,
        words,
    })
}

/// Planes of one operand must agree in shape.
fn same_shape(func: &str, planes: &[Plane<'_>]) -> PyResult<()> {
    if let [first, rest @ ..] = planes {
        for p in rest {
            if (p.rows, p.words) != (first.rows, first.words) {
                return Err(value_error(format!(
                    "{func}: {} and {} must have the same shape, got ({}, {}) and ({}, {})",
                    first.name, p.name, first.rows, first.words, p.rows, p.words
                )));
            }
        }
    }
    Ok(())
}

/// The keyword arguments every bgemm takes.
struct BgemmOptions<'a, 'py> {
    isa: Option<&'a Bound<'py, PyAny>>,
    threads: Option<&'a Bound<'py, PyAny>>,
    scale: Option<&'a Bound<'py, PyAny>>,
    shift: Option<&'a Bound<'py, PyAny>>,
}

fn run_bgemm<'py>(
    py: Python<'py>,
    kind: Kind,
    a: &[(&'static str, &Bound<'py, PyAny>)],
    b: &[(&'static str, &Bound<'py, PyAny>)],
    k: &Bound<'py, PyAny>,
    options: BgemmOptions<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let func = kind.name();
    let a_planes = a
        .iter()
        .map(|(name, x)| plane(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    let b_planes = b
        .iter()
        .map(|(name, x)| plane(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    same_shape(func, &a_planes)?;
    same_shape(func, &b_planes)?;
    let k = parse_k(func, k, kind.max_k())?;
    let (Some(fa), Some(fb)) = (a_planes.first(), b_planes.first()) else {
        return Err(value_error(format!("{func}: internal error: no planes")));
    };
    if fa.words != fb.words {
        return Err(value_error(format!(
            "{func}: {} and {} must have the same number of words per row (W), got {} and {}",
            fa.name, fb.name, fa.words, fb.words
        )));
    }
    let w = words_for(k);
    if fa.words != w {
        return Err(value_error(format!(
            "{func}: {} and {} have W = {} words per row, but k = {k} needs W = ceil(k/64) = {w}",
            fa.name, fb.name, fa.words
        )));
    }
    let isa = resolve_isa(func, options.isa)?;
    let threads = resolve_threads(func, options.threads)?;
    let (m, n) = (fa.rows, fb.rows);
    let scale = row_vector(func, "scale", options.scale, m)?;
    let shift = row_vector(func, "shift", options.shift, m)?;

    let a_ro = a_planes
        .iter()
        .map(|p| slice_of::<u64>(func, p.name, &p.arr))
        .collect::<PyResult<Vec<_>>>()?;
    let b_ro = b_planes
        .iter()
        .map(|p| slice_of::<u64>(func, p.name, &p.arr))
        .collect::<PyResult<Vec<_>>>()?;
    let mut a_sl: Vec<&[u64]> = Vec::with_capacity(a_ro.len());
    for (p, ro) in a_planes.iter().zip(&a_ro) {
        a_sl.push(as_slice(func, p.name, ro)?);
    }
    let mut b_sl: Vec<&[u64]> = Vec::with_capacity(b_ro.len());
    for (p, ro) in b_planes.iter().zip(&b_ro) {
        b_sl.push(as_slice(func, p.name, ro)?);
    }
    for (p, s) in a_planes.iter().chain(&b_planes).zip(a_sl.iter().chain(&b_sl)) {
        if let Some(row) = bits::first_bad_padding(s, k) {
            return Err(value_error(format!(
                "{func}: {} has non-zero padding bits past k = {k} (first in row {row}); \
                 padding must be 0 (pack with pack_bits/pack_2bit)",
                p.name
            )));
        }
    }

    // bgemm's errors already name the kernel
    if scale.is_none() && shift.is_none() {
        let out = filled2(py, func, m, n, |os: &mut [i32]| {
            bgemm::bgemm(kind, &a_sl, &b_sl, m, n, k, isa, threads, None, os)
        })?;
        return Ok(out.into_any());
    }
    let (ones, zeros) = (vec![1.0f32; m], vec![0.0f32; m]);
    let epilogue = bgemm::Epilogue {
        scale: scale
            .as_ref()
            .map_or(Ok(&ones[..]), |r| as_slice(func, "scale", r))?,
        shift: shift
            .as_ref()
            .map_or(Ok(&zeros[..]), |r| as_slice(func, "shift", r))?,
    };
    let out = filled2(py, func, m, n, |os: &mut [f32]| {
        // SAFETY: f32 and i32 have the same size and alignment and every bit pattern is a valid i32;
        // bgemm writes each element as an i32 product and the epilogue rewrites it as f32 bits.
        let ints = unsafe { std::slice::from_raw_parts_mut(os.as_mut_ptr().cast::<i32>(), os.len()) };
        bgemm::bgemm(kind, &a_sl, &b_sl, m, n, k, isa, threads, Some(epilogue), ints)
    })?;
    Ok(out.into_any())
}

/// An optional float32 vector of `m` values (one per row of a), borrowed read-only, or None.
fn row_vector<'py>(
    func: &str,
    name: &str,
    v: Option<&Bound<'py, PyAny>>,
    m: usize,
) -> PyResult<Option<numpy::PyReadonlyArrayDyn<'py, f32>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let arr = typed::<f32>(func, name, v, "float32", 1)?;
    if arr.shape() != [m] {
        return Err(value_error(format!(
            "{func}: {name} must hold one value per row of a ({m}), got shape {}",
            py_shape(arr.shape())
        )));
    }
    slice_of(func, name, &arr).map(Some)
}

/// ±1 × ±1: `out[i, j] = k − 2·popcount(a[i] ^ b[j])`, int32 (M, N). With `scale` and/or `shift`
/// (float32 (M,) each) float32 `out · scale[i] + shift[i]` instead, made as the products finish
/// (the same for every bgemm).
#[pyfunction]
#[pyo3(signature = (a, b, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
fn bgemm_1x1<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    run_bgemm(py, Kind::B1x1, &[("a", a)], &[("b", b)], k, options)
}

/// ±1 × 2-bit: `out = 2·(a·b_hi) + (a·b_lo)`, int32 (M, N).
#[pyfunction]
#[pyo3(signature = (a, b_hi, b_lo, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
fn bgemm_1x2<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b_hi: &Bound<'py, PyAny>,
    b_lo: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    run_bgemm(
        py,
        Kind::B1x2,
        &[("a", a)],
        &[("b_hi", b_hi), ("b_lo", b_lo)],
        k,
        options,
    )
}

/// 2-bit × 2-bit: `out = 4·(ah·bh) + 2·(ah·bl) + 2·(al·bh) + (al·bl)`, int32 (M, N).
#[pyfunction]
#[pyo3(signature = (a_hi, a_lo, b_hi, b_lo, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
fn bgemm_2x2<'py>(
    py: Python<'py>,
    a_hi: &Bound<'py, PyAny>,
    a_lo: &Bound<'py, PyAny>,
    b_hi: &Bound<'py, PyAny>,
    b_lo: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    let (a, b) = ([("a_hi", a_hi), ("a_lo", a_lo)], [("b_hi", b_hi), ("b_lo", b_lo)]);
    run_bgemm(py, Kind::B2x2, &a, &b, k, options)
}

// --- sparse × dense ------------------------------------------------------------------------------

/// CSR (M, K) × dense float32 (K, N) -> float32 (M, N). `indptr` int64 (M+1,), `indices` int32
/// (nnz,) in [0, K), `data` float32 (nnz,).
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, x, threads=None, isa=None))]
fn csr_matmul<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    const F: &str = "csr_matmul";
    let csr = CsrArgs::new(F, indptr, indices, data)?;
    let x_a = typed::<f32>(F, "x", x, "float32", 2)?;
    let (k, n) = match x_a.shape() {
        [k, n] => (*k, *n),
        _ => return Err(value_error(format!("{F}: x must be 2-D"))),
    };
    let isa = resolve_isa(F, isa)?;
    let threads = resolve_threads(F, threads)?;
    let x_ro = slice_of::<f32>(F, "x", &x_a)?;
    let xs = as_slice(F, "x", &x_ro)?;
    let (ip, ix, d, m) = csr.validated(F, k)?;
    filled2(py, F, m, n, |os| {
        spmm::csr_matmul(ip, ix, d, xs, k, n, isa, threads, os).map_err(|e| format!("{F}: {e}"))
    })
}

/// indptr, indices, data and the row count of a validated CSR matrix.
type CsrSlices<'a> = (&'a [i64], &'a [i32], &'a [f32], usize);

/// The CSR arrays of a sparse operand S, checked for dtype, ndim and contiguity and borrowed
/// read-only (csr_matmul, csr_conv2d).
struct CsrArgs<'py> {
    indptr: numpy::PyReadonlyArrayDyn<'py, i64>,
    indices: numpy::PyReadonlyArrayDyn<'py, i32>,
    data: numpy::PyReadonlyArrayDyn<'py, f32>,
}

impl<'py> CsrArgs<'py> {
    fn new(
        func: &str,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            indptr: slice_of(func, "indptr", &typed::<i64>(func, "indptr", indptr, "int64", 1)?)?,
            indices: slice_of(
                func,
                "indices",
                &typed::<i32>(func, "indices", indices, "int32", 1)?,
            )?,
            data: slice_of(func, "data", &typed::<f32>(func, "data", data, "float32", 1)?)?,
        })
    }

    /// The three slices (indptr, indices, data), checked as a CSR matrix with `k` columns, and its
    /// row count.
    fn validated(&self, func: &str, k: usize) -> PyResult<CsrSlices<'_>> {
        let (ip, ix, d) = (
            as_slice(func, "indptr", &self.indptr)?,
            as_slice(func, "indices", &self.indices)?,
            as_slice(func, "data", &self.data)?,
        );
        let m = spmm::validate(ip, ix, d.len(), k).map_err(|e| value_error(format!("{func}: {e}")))?;
        Ok((ip, ix, d, m))
    }
}

// --- convolution pieces for packed inference -----------------------------------------------------

/// An integer argument of at least `min`; `None` (or absent) means `default`, and is an error when
/// there is no default.
fn count_arg(
    func: &str,
    name: &str,
    v: Option<&Bound<'_, PyAny>>,
    default: Option<usize>,
    min: i64,
) -> PyResult<usize> {
    match (opt_int(func, name, v)?, default) {
        (None, Some(d)) => Ok(d),
        (Some(got), _) if got >= min => {
            usize::try_from(got).map_err(|_| value_error(format!("{func}: {name} is too large: {got}")))
        }
        (got, _) => Err(value_error(format!(
            "{func}: {name} must be an integer >= {min}, got {}",
            got.map_or("None".to_string(), |g| g.to_string())
        ))),
    }
}

/// The window of a conv call: kh, kw (required), stride (default 1), padding (default 0).
fn window_args(
    func: &str,
    kh: &Bound<'_, PyAny>,
    kw: &Bound<'_, PyAny>,
    stride: Option<&Bound<'_, PyAny>>,
    padding: Option<&Bound<'_, PyAny>>,
) -> PyResult<conv::Window> {
    Ok(conv::Window {
        kh: count_arg(func, "kh", Some(kh), None, 1)?,
        kw: count_arg(func, "kw", Some(kw), None, 1)?,
        stride: count_arg(func, "stride", stride, Some(1), 1)?,
        padding: count_arg(func, "padding", padding, Some(0), 0)?,
    })
}

/// im2col on packed bits: `bits` uint64 (N, H, W, ceil(c/64)) -> uint64 (N·Ho·Wo, ceil(kh·kw·c/64)),
/// each row's bits ordered (i, j, channel), padding taps 0 (see `apb_ref.kernels.reference`).
#[pyfunction]
#[pyo3(signature = (bits, c, kh, kw, stride=None, padding=None, threads=None))]
#[allow(clippy::too_many_arguments)]
fn im2col_bits<'py>(
    py: Python<'py>,
    bits: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
    kh: &Bound<'py, PyAny>,
    kw: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    const F: &str = "im2col_bits";
    let win = window_args(F, kh, kw, stride, padding)?;
    let c = count_arg(F, "c", Some(c), None, 1)?;
    let threads = resolve_threads(F, threads)?;
    let arr = typed::<u64>(F, "bits", bits, "uint64", 4)?;
    let [n, h, w, wc] = arr.shape() else {
        return Err(value_error(format!("{F}: bits must be 4-D")));
    };
    let (n, h, w, wc) = (*n, *h, *w, *wc);
    if wc != words_for(c) {
        return Err(value_error(format!(
            "{F}: bits has {wc} words per pixel, but c = {c} needs ceil(c/64) = {}",
            words_for(c)
        )));
    }
    let (ho, wo) = win.output(h, w).map_err(|e| value_error(format!("{F}: {e}")))?;
    let (Some(k), Some(rows)) = (
        win.kh.checked_mul(win.kw).and_then(|t| t.checked_mul(c)),
        n.checked_mul(ho).and_then(|r| r.checked_mul(wo)),
    ) else {
        return Err(value_error(format!(
            "{F}: kh·kw·c or the number of output pixels overflows"
        )));
    };
    let ro = slice_of::<u64>(F, "bits", &arr)?;
    let src = as_slice(F, "bits", &ro)?;
    filled2(py, F, rows, words_for(k), |os| {
        conv::im2col_bits(src, n, h, w, c, win, threads, os).map_err(|e| format!("{F}: {e}"))
    })
}

/// The sparse residual of a conv from its input map: CSR (O, C·kh·kw) × float32 x (N, C, H, W) ->
/// float32 (O, N·Ho·Wo), equal to csr_matmul(S, im2col columns of x) up to float rounding; with
/// `signs`, of sign(x) (±1, sign(0) = +1). With `add_to` (a C-contiguous float32 (O, N·Ho·Wo) array)
/// the result is added to it in place and it is returned; no new array is made.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, x, kh, kw, stride=None, padding=None, signs=false, threads=None, *, add_to=None))]
#[allow(clippy::too_many_arguments)]
fn csr_conv2d<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    kh: &Bound<'py, PyAny>,
    kw: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    signs: bool,
    threads: Option<&Bound<'py, PyAny>>,
    add_to: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    const F: &str = "csr_conv2d";
    let win = window_args(F, kh, kw, stride, padding)?;
    let threads = resolve_threads(F, threads)?;
    let csr = CsrArgs::new(F, indptr, indices, data)?;
    let x_a = typed::<f32>(F, "x", x, "float32", 4)?;
    let [n, c, h, w] = x_a.shape() else {
        return Err(value_error(format!("{F}: x must be 4-D")));
    };
    let shape = [*n, *c, *h, *w];
    let (ho, wo) = win
        .output(shape[2], shape[3])
        .map_err(|e| value_error(format!("{F}: {e}")))?;
    let (Some(k), Some(pixels)) = (
        shape[1].checked_mul(win.kh).and_then(|t| t.checked_mul(win.kw)),
        shape[0].checked_mul(ho).and_then(|p| p.checked_mul(wo)),
    ) else {
        return Err(value_error(format!(
            "{F}: c·kh·kw or the number of output pixels overflows"
        )));
    };
    let x_ro = slice_of::<f32>(F, "x", &x_a)?;
    let xs = as_slice(F, "x", &x_ro)?;
    let (ip, ix, d, m) = csr.validated(F, k)?;
    let run = |accumulate: bool, os: &mut [f32]| {
        conv::csr_conv2d(ip, ix, d, xs, shape, win, signs, accumulate, threads, os)
            .map_err(|e| format!("{F}: {e}"))
    };
    let Some(add_to) = add_to.filter(|a| !a.is_none()) else {
        return filled2(py, F, m, pixels, |os| run(false, os));
    };
    let acc = typed::<f32>(F, "add_to", add_to, "float32", 2)?;
    if acc.shape() != [m, pixels] {
        return Err(value_error(format!(
            "{F}: add_to must have shape (O, N·Ho·Wo) = {}, got {}",
            py_shape(&[m, pixels]),
            py_shape(acc.shape())
        )));
    }
    // The kernel reads x and the CSR arrays while it writes add_to: refuse any overlap. The borrow
    // check below sees only arrays with the same base object, not two views of one buffer.
    let may_share = py.import("numpy")?.getattr("may_share_memory")?;
    for (name, input) in [("x", x), ("data", data), ("indices", indices), ("indptr", indptr)] {
        if may_share.call1((add_to, input))?.is_truthy()? {
            return Err(value_error(format!(
                "{F}: add_to must not share memory with {name}"
            )));
        }
    }
    let acc = acc
        .cast_into::<PyArray2<f32>>()
        .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
    {
        // Fails (a ValueError) if add_to is read-only.
        let mut rw = acc
            .try_readwrite()
            .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
        let os = rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
        py.detach(|| run(true, os)).map_err(value_error)?;
    }
    Ok(acc)
}

#[pymodule]
fn _kernels(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(im2col_bits, m)?)?;
    m.add_function(wrap_pyfunction!(csr_conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(isa_available, m)?)?;
    m.add_function(wrap_pyfunction!(isa_selected, m)?)?;
    m.add_function(wrap_pyfunction!(threads_selected, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(pack_mask, m)?)?;
    m.add_function(wrap_pyfunction!(pack_2bit, m)?)?;
    m.add_function(wrap_pyfunction!(bgemm_1x1, m)?)?;
    m.add_function(wrap_pyfunction!(bgemm_1x2, m)?)?;
    m.add_function(wrap_pyfunction!(bgemm_2x2, m)?)?;
    m.add_function(wrap_pyfunction!(csr_matmul, m)?)?;
    // Keep the 1-D array type linked for the docs of csr_matmul's arguments.
    let _ = std::marker::PhantomData::<PyArray1<f32>>;
    Ok(())
}
