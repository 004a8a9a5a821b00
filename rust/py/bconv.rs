//! `bconv_1bit`: a binary conv layer from a packed 1-bit map to a float map and/or packed signs
//! (`crate::bconv`), channels last in and out.

use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyTuple};

use super::args::{
    as_slice, count_arg, empty2, opt_str, pixel_map_arg, py_shape, resolve_isa, resolve_threads, slice_of,
    typed, value_error, window_args, PixelMap,
};
use crate::bconv::{self, BitMap, Csr, Epilogue, Outputs};
use crate::bits::words_for;

const F: &str = "bconv_1bit";

/// A float32 array argument of exactly `shape` (`what` names its axes), borrowed read-only.
pub(super) fn shaped<'py>(
    name: &str,
    x: &Bound<'py, PyAny>,
    shape: &[usize],
    what: &str,
) -> PyResult<numpy::PyReadonlyArrayDyn<'py, f32>> {
    let arr = typed::<f32>(F, name, x, "float32", shape.len())?;
    if arr.shape() != shape {
        return Err(value_error(format!(
            "{F}: {name} must have shape {what} = {}, got {}",
            py_shape(shape),
            py_shape(arr.shape())
        )));
    }
    slice_of(F, name, &arr)
}

fn optional<'a, 'py>(x: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    x.filter(|v| !v.is_none())
}

/// The CSR tuple (indptr, indices, data), each array checked for dtype, ndim and contiguity.
pub(super) struct CsrArrays<'py> {
    pub indptr: numpy::PyReadonlyArrayDyn<'py, i64>,
    pub indices: numpy::PyReadonlyArrayDyn<'py, i32>,
    pub data: numpy::PyReadonlyArrayDyn<'py, f32>,
}

/// The CSR tuple of function `func`'s argument `csr`.
pub(super) fn csr_arrays<'py>(func: &str, csr: &Bound<'py, PyAny>) -> PyResult<CsrArrays<'py>> {
    let parts = match csr.cast::<PyTuple>() {
        Ok(t) if t.len() == 3 => t,
        other => {
            let got = match other {
                Ok(t) => format!("a tuple of {}", t.len()),
                Err(_) => format!("an object of type {}", csr.get_type().name()?),
            };
            return Err(value_error(format!(
                "{func}: csr must be None or a tuple (indptr, indices, data), got {got}"
            )));
        }
    };
    Ok(CsrArrays {
        indptr: csr_part(func, parts, 0, "csr: indptr", "int64")?,
        indices: csr_part(func, parts, 1, "csr: indices", "int32")?,
        data: csr_part(func, parts, 2, "csr: data", "float32")?,
    })
}

/// Item `i` of the CSR tuple as a C-contiguous 1-D array of `T`, borrowed read-only.
fn csr_part<'py, T: numpy::Element>(
    func: &str,
    parts: &Bound<'py, PyTuple>,
    i: usize,
    name: &str,
    dtype: &str,
) -> PyResult<numpy::PyReadonlyArrayDyn<'py, T>> {
    slice_of(
        func,
        name,
        &typed::<T>(func, name, &parts.get_item(i)?, dtype, 1)?,
    )
}

/// A new `(rows, cols)` output, or None when this `out` mode does not make it.
fn output<'py, T: numpy::Element>(
    py: Python<'py>,
    wanted: bool,
    rows: usize,
    cols: usize,
) -> PyResult<Option<Bound<'py, PyArray2<T>>>> {
    wanted.then(|| empty2::<T>(py, F, rows, cols)).transpose()
}

/// One binary conv layer on packed bits: `weights` uint64 (O, ceil(kh·kw·c/64)), ±1 rows in
/// (i, j, channel) order; `bits` uint64 (N, H, W, ceil(c/64)). Returns, per `out`, float32
/// (N, Ho, Wo, O) y = acc·scale + shift − correction + S·x + residual (clipped to [−1, 1] with
/// `clip`), its signs packed per pixel, uint64 (N, Ho, Wo, ceil(O/64)), or both (see
/// `apb_ref.kernels.reference.bconv_1bit`).
#[pyfunction]
#[pyo3(signature = (weights, bits, c, kh, kw, stride=None, padding=None, *, scale, shift, correction=None,
                    csr=None, residual=None, clip=None, out=None, isa=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bconv_1bit<'py>(
    py: Python<'py>,
    weights: &Bound<'py, PyAny>,
    bits: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
    kh: &Bound<'py, PyAny>,
    kw: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    scale: &Bound<'py, PyAny>,
    shift: &Bound<'py, PyAny>,
    correction: Option<&Bound<'py, PyAny>>,
    csr: Option<&Bound<'py, PyAny>>,
    residual: Option<&Bound<'py, PyAny>>,
    clip: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (want_float, want_bits) = match opt_str(F, "out", out)?.as_deref() {
        None | Some("float") => (true, false),
        Some("bits") => (false, true),
        Some("both") => (true, true),
        Some(other) => {
            return Err(value_error(format!(
                "{F}: out must be one of ('float', 'bits', 'both'), got '{other}'"
            )))
        }
    };
    let clip = match optional(clip) {
        None => false,
        Some(v) => v.cast::<PyBool>().map(|b| b.is_true()).map_err(|_| {
            value_error(format!(
                "{F}: clip must be True or False, got {}",
                v.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?,
    };
    let win = window_args(F, kh, kw, stride, padding)?;
    let c = count_arg(F, "c", Some(c), None, 1)?;
    let isa = resolve_isa(F, isa)?;
    // A thread count from the caller is obeyed; the default one (APB_NUM_THREADS, else every core) is
    // lowered for small layers (`bconv::threads_for_work`).
    let explicit_threads = optional(threads).is_some();
    let threads = resolve_threads(F, threads)?;

    let PixelMap {
        arr: bits_a,
        n,
        h,
        w,
        ho,
        wo,
        k,
        positions: p,
    } = pixel_map_arg(F, bits, c, win)?;
    let weights_a = typed::<u64>(F, "weights", weights, "uint64", 2)?;
    let [o, words] = weights_a.shape() else {
        return Err(value_error(format!("{F}: weights must be 2-D")));
    };
    let (o, words) = (*o, *words);
    if words != words_for(k) {
        return Err(value_error(format!(
            "{F}: weights has {words} words per row, but k = kh·kw·c = {k} needs ceil(k/64) = {}",
            words_for(k)
        )));
    }
    let threads = if explicit_threads {
        threads
    } else {
        bconv::threads_for_work(threads, p, o, k)
    };
    let scale = shaped("scale", scale, &[o], "(O,)")?;
    let shift = shaped("shift", shift, &[o], "(O,)")?;
    let correction = optional(correction)
        .map(|x| shaped("correction", x, &[ho, wo, o], "(Ho, Wo, O)"))
        .transpose()?;
    let residual = optional(residual)
        .map(|x| shaped("residual", x, &[n, ho, wo, o], "(N, Ho, Wo, O)"))
        .transpose()?;
    let csr = optional(csr).map(|c| csr_arrays(F, c)).transpose()?;

    let bits_ro = slice_of::<u64>(F, "bits", &bits_a)?;
    let weights_ro = slice_of::<u64>(F, "weights", &weights_a)?;
    let map = BitMap {
        bits: as_slice(F, "bits", &bits_ro)?,
        n,
        h,
        w,
        c,
    };
    let weights = as_slice(F, "weights", &weights_ro)?;
    let csr = match &csr {
        Some(a) => Some(Csr {
            indptr: as_slice(F, "csr: indptr", &a.indptr)?,
            indices: as_slice(F, "csr: indices", &a.indices)?,
            data: as_slice(F, "csr: data", &a.data)?,
        }),
        None => None,
    };
    let epi = Epilogue {
        scale: as_slice(F, "scale", &scale)?,
        shift: as_slice(F, "shift", &shift)?,
        correction: correction
            .as_ref()
            .map(|a| as_slice(F, "correction", a))
            .transpose()?,
        csr,
        residual: residual
            .as_ref()
            .map(|a| as_slice(F, "residual", a))
            .transpose()?,
        clip,
    };

    let float_out = output::<f32>(py, want_float, p, o)?;
    let bits_out = output::<u64>(py, want_bits, p, words_for(o))?;
    {
        let mut float_rw = float_out.as_ref().map(|a| a.readwrite());
        let mut bits_rw = bits_out.as_ref().map(|a| a.readwrite());
        let outs = Outputs {
            float: float_rw
                .as_mut()
                .map(|rw| {
                    rw.as_slice_mut()
                        .map_err(|e| value_error(format!("{F}: output: {e}")))
                })
                .transpose()?,
            bits: bits_rw
                .as_mut()
                .map(|rw| {
                    rw.as_slice_mut()
                        .map_err(|e| value_error(format!("{F}: output: {e}")))
                })
                .transpose()?,
        };
        py.detach(|| bconv::bconv_1bit(weights, o, map, win, &epi, isa, threads, outs))
            .map_err(|e| value_error(format!("{F}: {e}")))?;
    }
    let float_out = float_out.map(|a| a.reshape([n, ho, wo, o])).transpose()?;
    let bits_out = bits_out
        .map(|a| a.reshape([n, ho, wo, words_for(o)]))
        .transpose()?;
    match (float_out, bits_out) {
        (Some(f), Some(b)) => Ok(PyTuple::new(py, [f.into_any(), b.into_any()])?.into_any()),
        (Some(f), None) => Ok(f.into_any()),
        (None, Some(b)) => Ok(b.into_any()),
        (None, None) => Err(value_error(format!("{F}: internal error: no output"))),
    }
}
