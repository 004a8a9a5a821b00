//! `im2col_bits`: im2col on packed bits (`crate::conv`).

use numpy::PyArray2;
use pyo3::prelude::*;

use super::args::{
    as_slice, count_arg, filled2, pixel_map_arg, resolve_threads, slice_of, window_args, PixelMap,
};
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
    let PixelMap {
        arr,
        n,
        h,
        w,
        k,
        positions: rows,
        ..
    } = pixel_map_arg(F, bits, c, win)?;
    let ro = slice_of::<u64>(F, "bits", &arr)?;
    let src = as_slice(F, "bits", &ro)?;
    filled2(py, F, rows, words_for(k), |os| {
        conv::im2col_bits(src, n, h, w, c, win, threads, os).map_err(|e| format!("{F}: {e}"))
    })
}
