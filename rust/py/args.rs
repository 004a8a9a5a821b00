//! Argument plumbing shared by the bindings: NumPy arrays checked for dtype, shape and contiguity
//! and borrowed read-only, outputs allocated through `numpy.empty`, optional ints and strings, the
//! `isa`/`threads` keywords and a convolution's window. Every failure is a `ValueError` naming the
//! function and the argument; nothing here panics.

use numpy::{
    Element, PyArray, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyString, PyTuple};

use crate::bits::words_for;
use crate::{conv, isa, threads};

pub(super) fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// Format a shape the way Python prints a tuple: `(3,)`, `(2, 5)`.
pub(super) fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `x` as an untyped NumPy array, or a ValueError saying what it was.
pub(super) fn as_array<'a, 'py>(
    x: &'a Bound<'py, PyAny>,
    expected: &str,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    x.cast::<PyUntypedArray>().map_err(|_| not_an_array(x, expected))
}

/// The ValueError for a non-array `x`: `expected`, and the type it got.
fn not_an_array(x: &Bound<'_, PyAny>, expected: &str) -> PyErr {
    let ty = x
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    value_error(format!("{expected}, got an object of type {ty}"))
}

/// "got dtype D shape S[, not C-contiguous]" for error messages.
pub(super) fn describe(arr: &Bound<'_, PyUntypedArray>) -> String {
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

pub(super) fn has_dtype<T: Element>(arr: &Bound<'_, PyUntypedArray>) -> bool {
    arr.dtype().is_equiv_to(&numpy::dtype::<T>(arr.py()))
}

/// Borrow `x` as a C-contiguous `ndim`-D array of `T` (`want` names the dtype in messages).
pub(super) fn typed<'py, T: Element>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    want: &str,
    ndim: usize,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let expected = || format!("{func}: {name} must be a C-contiguous {want} {ndim}-D array");
    let arr = x
        .cast::<PyUntypedArray>()
        .map_err(|_| not_an_array(x, &expected()))?;
    if arr.ndim() != ndim || !has_dtype::<T>(arr) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{}, {}", expected(), describe(arr))));
    }
    Ok(arr.clone())
}

/// Read-only contiguous data of an array already checked by [`typed`] (or equivalent) to hold `T`.
pub(super) fn slice_of<'py, T: Element>(
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

pub(super) fn as_slice<'a, T: Element>(
    func: &str,
    name: &str,
    ro: &'a numpy::PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    ro.as_slice()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))
}

/// A new uninitialized C-contiguous array of `T` and shape `shape`, through `numpy.empty` so that a
/// failed allocation is a Python MemoryError. Every caller writes every element.
pub(super) fn empty<'py, T: Element, D: numpy::ndarray::Dimension>(
    py: Python<'py>,
    func: &str,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArray<T, D>>> {
    let bytes = shape
        .iter()
        .try_fold(std::mem::size_of::<T>(), |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(value_error(format!(
            "{func}: the result of shape {} is too large",
            py_shape(shape)
        )));
    }
    // numpy.empty, looked up once per process instead of per call
    static NUMPY_EMPTY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let arr = NUMPY_EMPTY
        .import(py, "numpy", "empty")?
        .call1((PyTuple::new(py, shape)?, numpy::dtype::<T>(py)))?;
    arr.cast_into::<PyArray<T, D>>()
        .map_err(|e| value_error(format!("{func}: output: {e}")))
}

/// [`empty`] for a `(rows, cols)` matrix.
pub(super) fn empty2<'py, T: Element>(
    py: Python<'py>,
    func: &str,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    empty(py, func, &[rows, cols])
}

/// A new array of `T` and shape `shape` filled by `compute` with the GIL released; `compute` must
/// write every element and returns its error message, which becomes the ValueError.
pub(super) fn filled<'py, T: Element + Send, D: numpy::ndarray::Dimension>(
    py: Python<'py>,
    func: &str,
    shape: &[usize],
    compute: impl FnOnce(&mut [T]) -> Result<(), String> + Send,
) -> PyResult<Bound<'py, PyArray<T, D>>> {
    let out = empty::<T, D>(py, func, shape)?;
    {
        let mut rw = out.readwrite();
        let os = rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{func}: output: {e}")))?;
        py.detach(|| compute(os)).map_err(value_error)?;
    }
    Ok(out)
}

/// [`filled`] for a `(rows, cols)` matrix.
pub(super) fn filled2<'py, T: Element + Send>(
    py: Python<'py>,
    func: &str,
    rows: usize,
    cols: usize,
    compute: impl FnOnce(&mut [T]) -> Result<(), String> + Send,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    filled(py, func, &[rows, cols], compute)
}

/// [`filled2`] whose data start on a 64-byte cache line (numpy.empty promises 16 bytes): a GEMM's
/// threads then write rectangles whose edges are line edges, where they used to share a line on
/// every row (false sharing: 2-thread calls ran 1.2-1.6x one thread in processes whose output landed
/// off a line, 1.8-1.9x in the others), and a full-vector store writes one line, not two. The result
/// is a view of a slightly longer array, which is its `base`.
pub(super) fn filled2_on_lines<'py, T: Element + Send>(
    py: Python<'py>,
    func: &str,
    rows: usize,
    cols: usize,
    compute: impl FnOnce(&mut [T]) -> Result<(), String> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    const LINE: usize = 64;
    let size = std::mem::size_of::<T>();
    let len = rows.checked_mul(cols).ok_or_else(|| {
        value_error(format!(
            "{func}: the result of shape {} is too large",
            py_shape(&[rows, cols])
        ))
    })?;
    // numpy's data are aligned to T, so the offset to the next line is a whole number of T
    let skip = |data: *const T| (LINE - data as usize % LINE) % LINE / size;
    // (the elements before and after the view are left as numpy.empty made them)
    let flat = filled::<T, numpy::Ix1>(py, func, &[len.saturating_add(LINE / size)], |os| {
        let from = skip(os.as_ptr());
        compute(&mut os[from..from + len])
    })?;
    let skip = skip(flat.data());
    let lines = pyo3::types::PySlice::new(py, skip as isize, (skip + len) as isize, 1);
    flat.get_item(lines)?.call_method1("reshape", ((rows, cols),))
}

/// An optional integer argument (`None` -> None); anything but an int (bools included) is an error.
pub(super) fn opt_int(func: &str, name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
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
pub(super) fn opt_str(func: &str, name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
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

pub(super) fn resolve_threads(func: &str, threads: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let n = opt_int(func, "threads", threads)?;
    // the function's name is added only to an error: no formatting on every call
    threads::resolve(n, "threads").map_err(|e| value_error(format!("{func}: {e}")))
}

pub(super) fn resolve_isa(func: &str, isa: Option<&Bound<'_, PyAny>>) -> PyResult<isa::Isa> {
    let name = opt_str(func, "isa", isa)?;
    isa::resolve(name.as_deref(), "isa").map_err(|e| value_error(format!("{func}: {e}")))
}

/// An integer argument of at least `min`; `None` (or absent) means `default`, and is an error when
/// there is no default.
pub(super) fn count_arg(
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
pub(super) fn window_args(
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

/// The geometry of a conv over a packed pixel map argument `bits`, uint64 (N, H, W, ceil(c/64)).
pub(super) struct PixelMap<'py> {
    pub arr: Bound<'py, PyUntypedArray>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    /// kh·kw·c, the bits of one output position's window
    pub k: usize,
    /// N·Ho·Wo, the output positions
    pub positions: usize,
}

/// `bits` checked as the packed map of `c` channels that `win` slides over (im2col_bits, bconv_1bit).
pub(super) fn pixel_map_arg<'py>(
    func: &str,
    bits: &Bound<'py, PyAny>,
    c: usize,
    win: conv::Window,
) -> PyResult<PixelMap<'py>> {
    let arr = typed::<u64>(func, "bits", bits, "uint64", 4)?;
    let [n, h, w, wc] = arr.shape() else {
        return Err(value_error(format!("{func}: bits must be 4-D")));
    };
    let (n, h, w, wc) = (*n, *h, *w, *wc);
    if wc != words_for(c) {
        return Err(value_error(format!(
            "{func}: bits has {wc} words per pixel, but c = {c} needs ceil(c/64) = {}",
            words_for(c)
        )));
    }
    let (ho, wo) = win
        .output(h, w)
        .map_err(|e| value_error(format!("{func}: {e}")))?;
    let (Some(k), Some(positions)) = (
        win.kh.checked_mul(win.kw).and_then(|t| t.checked_mul(c)),
        n.checked_mul(ho).and_then(|v| v.checked_mul(wo)),
    ) else {
        return Err(value_error(format!(
            "{func}: kh·kw·c or the number of output pixels overflows"
        )));
    };
    Ok(PixelMap {
        arr,
        n,
        h,
        w,
        ho,
        wo,
        k,
        positions,
    })
}
