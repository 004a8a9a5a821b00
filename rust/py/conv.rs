//! `im2col_bits`: im2col on packed bits (`crate::conv`).

use numpy::{PyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::args::{as_slice, count_arg, filled2, resolve_threads, slice_of, typed, value_error, window_args};
use crate::bits::words_for;
use crate::conv;

/// im2col on packed bits: `bits` uint64 (N, H, W, ceil(c/64)) -> uint64 (N·Ho·Wo, ceil(kh·kw·c/64)),
/// each row's bits ordered (i, j, channel), padding taps 0 (see `apb_ref.kernels.reference`).
#[pyfunction]
#[pyo3(signature = (bits, c, kh, kw, stride=None, padding=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_bits<'py>(
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
