//! `pack_bits`, `pack_mask`, `pack_2bit`: sign-bit packing of NumPy arrays (`crate::bits`).

use numpy::{Element, PyArray2, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::args::{
    as_array, as_slice, describe, empty2, filled2, has_dtype, opt_str, py_shape, resolve_isa,
    resolve_threads, slice_of, typed, value_error,
};
use crate::bits::{self, words_for, MaskByte, PackError, Source};
use crate::isa;

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
pub(crate) fn pack_bits<'py>(
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
pub(crate) fn pack_mask<'py>(
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
pub(crate) fn pack_2bit<'py>(
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
