//! `relu_forward`, `relu_backward`, `hardtanh_forward`, `hardtanh_backward`, `sign_forward`: elementwise
//! activations of a training step on float32 arrays of any shape (`crate::train::elementwise`).

use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::args::{as_array, as_slice, describe, filled, has_dtype, resolve_threads, slice_of, value_error};
use crate::train::elementwise::{self as ew, clip, masked, relu, sign};

/// A C-contiguous float32 array of any shape, borrowed read-only.
pub(super) fn float32<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyUntypedArray>, PyReadonlyArrayDyn<'py, f32>)> {
    let expected = format!("{func}: {name} must be a C-contiguous float32 array");
    let arr = as_array(x, &expected)?;
    if !has_dtype::<f32>(arr) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    let ro = slice_of::<f32>(func, name, arr)?;
    Ok((arr.clone(), ro))
}

/// A new array of `like`'s shape, each element `f` of the inputs' elements, computed with the GIL
/// released.
pub(super) fn elementwise<'py>(
    py: Python<'py>,
    func: &str,
    inputs: &[(&str, &Bound<'py, PyAny>)],
    threads: Option<&Bound<'py, PyAny>>,
    run: impl FnOnce(&[&[f32]], &mut [f32], usize) -> Result<(), String> + Send,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let arrays = inputs
        .iter()
        .map(|(name, x)| float32(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    let shape = arrays[0].0.shape().to_vec();
    if let Some((name, a)) = inputs
        .iter()
        .zip(&arrays)
        .find(|(_, a)| a.0.shape() != shape.as_slice())
        .map(|((n, _), a)| (n, a))
    {
        return Err(value_error(format!(
            "{func}: {name} must have shape {shape:?}, {}",
            describe(&a.0)
        )));
    }
    let threads = resolve_threads(func, threads)?;
    let slices = inputs
        .iter()
        .zip(&arrays)
        .map(|((name, _), (_, ro))| as_slice(func, name, ro))
        .collect::<PyResult<Vec<_>>>()?;
    filled(py, func, &shape, |os| {
        run(&slices, os, threads).map_err(|e| format!("{func}: {e}"))
    })
}

/// Hardtanh's bounds as float32, lo < hi after the rounding (also the fused batch norm's, `norm.rs`).
pub(super) fn clip_range(func: &str, lo: f64, hi: f64) -> PyResult<(f32, f32)> {
    let (l, h) = (lo as f32, hi as f32);
    if l.partial_cmp(&h) != Some(std::cmp::Ordering::Less) {
        return Err(value_error(format!(
            "{func}: need lo < hi (as float32), got {lo} and {hi}"
        )));
    }
    Ok((l, h))
}

/// max(x, 0) (NumPy's `np.maximum(x, 0)`, bit for bit).
#[pyfunction]
#[pyo3(signature = (x, threads=None))]
pub(crate) fn relu_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    elementwise(py, "relu_forward", &[("x", x)], threads, |s, o, t| {
        ew::map(s[0], o, t, relu)
    })
}

/// g · (y > 0) from ReLU's output y.
#[pyfunction]
#[pyo3(signature = (g, y, threads=None))]
pub(crate) fn relu_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    elementwise(py, "relu_backward", &[("g", g), ("y", y)], threads, |s, o, t| {
        ew::zip_map(s[0], s[1], o, t, |g, y| masked(g, y > 0.0))
    })
}

/// clip(x, lo, hi) (NumPy's `np.clip`, bit for bit).
#[pyfunction]
#[pyo3(signature = (x, lo, hi, threads=None))]
pub(crate) fn hardtanh_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    lo: f64,
    hi: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (lo, hi) = clip_range("hardtanh_forward", lo, hi)?;
    elementwise(py, "hardtanh_forward", &[("x", x)], threads, move |s, o, t| {
        ew::map(s[0], o, t, move |v| clip(v, lo, hi))
    })
}

/// g · (lo < y < hi) from Hardtanh's output y.
#[pyfunction]
#[pyo3(signature = (g, y, lo, hi, threads=None))]
pub(crate) fn hardtanh_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    lo: f64,
    hi: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (lo, hi) = clip_range("hardtanh_backward", lo, hi)?;
    elementwise(
        py,
        "hardtanh_backward",
        &[("g", g), ("y", y)],
        threads,
        move |s, o, t| ew::zip_map(s[0], s[1], o, t, move |g, y| masked(g, y > lo && y < hi)),
    )
}

/// ±1 by sign, +1 for ±0 and NaN (`np.where(x < 0, -1, 1)`, the packers' convention).
#[pyfunction]
#[pyo3(signature = (x, threads=None))]
pub(crate) fn sign_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    elementwise(py, "sign_forward", &[("x", x)], threads, |s, o, t| {
        ew::map(s[0], o, t, sign)
    })
}
