//! `dorefa_forward`, `dorefa_backward`, `apb_forward`, `apb_backward`: the quantizers of a training
//! step on float32 arrays of any shape (`crate::train::quant`).

use numpy::ndarray::IxDyn;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{
    as_array, as_slice, count_arg, describe, empty, filled, has_dtype, resolve_threads, slice_of, value_error,
};
use super::elementwise::{elementwise, float32};
use crate::train::elementwise as ew;
use crate::train::quant::{self, Band};

/// A C-contiguous bool array of `shape`, borrowed as its bytes (a NumPy bool byte need not be 0 or 1:
/// any non-zero byte is True).
fn bool_bytes<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    shape: &[usize],
) -> PyResult<PyReadonlyArrayDyn<'py, u8>> {
    let expected = format!("{func}: {name} must be a C-contiguous bool array of shape {shape:?}");
    let arr = as_array(x, &expected)?;
    if !has_dtype::<bool>(arr) || !arr.is_c_contiguous() || arr.shape() != shape {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    let bytes = arr.call_method1("view", ("uint8",))?;
    let bytes = as_array(&bytes, &expected)?;
    slice_of::<u8>(func, name, bytes)
}

/// round(clip(x, 0, 1)·(levels − 1))/(levels − 1), bit for bit NumPy's (halves to even), for
/// 2 ≤ levels ≤ 2²⁴ + 1 (where levels − 1 is exact in float32).
#[pyfunction]
#[pyo3(signature = (x, levels, threads=None))]
pub(crate) fn dorefa_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    levels: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "dorefa_forward";
    let levels = count_arg(F, "levels", Some(levels), None, 2)? as u64;
    if levels > quant::MAX_LEVELS {
        return Err(value_error(format!(
            "{F}: levels must be at most {}, got {levels}",
            quant::MAX_LEVELS
        )));
    }
    elementwise(py, F, &[("x", x)], threads, move |s, o, t| {
        quant::dorefa_forward(s[0], levels, o, t)
    })
}

/// g · (0 ≤ x ≤ 1) from DoReFa's input x.
#[pyfunction]
#[pyo3(signature = (g, x, threads=None))]
pub(crate) fn dorefa_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    elementwise(
        py,
        "dorefa_backward",
        &[("g", g), ("x", x)],
        threads,
        |s, o, t| ew::zip_map(s[0], s[1], o, t, quant::dorefa_grad),
    )
}

/// APB's forward: (q, mask) with mask = | |w| − α | < m·δ (α, δ and m rounded to float32, m·δ a
/// float32 product) and q = α·sign(w) where the mask holds, else w; with `frozen_mask` (bool, w's
/// shape) that mask is used and returned.
#[pyfunction]
#[pyo3(signature = (w, alpha, delta, margin, frozen_mask=None, threads=None))]
pub(crate) fn apb_forward<'py>(
    py: Python<'py>,
    w: &Bound<'py, PyAny>,
    alpha: f64,
    delta: f64,
    margin: f64,
    frozen_mask: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "apb_forward";
    let (wa, wr) = float32(F, "w", w)?;
    let shape = wa.shape().to_vec();
    let frozen = frozen_mask.filter(|m| !m.is_none());
    let fr = frozen
        .map(|m| bool_bytes(F, "frozen_mask", m, &shape))
        .transpose()?;
    let band = Band {
        alpha: alpha as f32,
        delta: delta as f32,
        margin: margin as f32,
    };
    let threads = resolve_threads(F, threads)?;
    let ws = as_slice(F, "w", &wr)?;
    let fs = fr.as_ref().map(|r| as_slice(F, "frozen_mask", r)).transpose()?;
    // a new mask is written as bytes 0 and 1, then viewed as bool (uninitialized bytes are no bools)
    let bytes = match frozen {
        Some(_) => None,
        None => Some(empty::<u8, IxDyn>(py, F, &shape)?),
    };
    let mut bytes_rw = bytes
        .as_ref()
        .map(|b| b.try_readwrite())
        .transpose()
        .map_err(|e| value_error(format!("{F}: mask: {e}")))?;
    let mask_out: &mut [u8] = match bytes_rw.as_mut() {
        Some(rw) => rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{F}: mask: {e}")))?,
        None => &mut [],
    };
    let q = filled::<f32, IxDyn>(py, F, &shape, |qs| {
        quant::apb_forward(ws, &band, fs, qs, mask_out, threads).map_err(|e| format!("{F}: {e}"))
    })?;
    drop(bytes_rw);
    let mask = match (bytes, frozen) {
        (Some(b), _) => b.call_method1("view", ("bool",))?,
        (None, Some(m)) => m.clone(),
        (None, None) => py.None().into_bound(py), // not reached: the bytes are made when nothing is frozen
    };
    PyTuple::new(py, [q.into_any(), mask])
}

/// The sums behind APB's α and δ gradients, (Σ gs, Σ gs·(α − |w|)) with gs = g·sign(w) where `mask`
/// holds and 0 elsewhere, each term a float32 product as NumPy forms it, added in f64.
#[pyfunction]
#[pyo3(signature = (g, w, mask, alpha, threads=None))]
pub(crate) fn apb_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    mask: &Bound<'py, PyAny>,
    alpha: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<(f64, f64)> {
    const F: &str = "apb_backward";
    let (ga, gr) = float32(F, "g", g)?;
    let shape = ga.shape().to_vec();
    let (wa, wr) = float32(F, "w", w)?;
    if wa.shape() != shape.as_slice() {
        return Err(value_error(format!(
            "{F}: w must have shape {shape:?}, {}",
            describe(&wa)
        )));
    }
    let mr = bool_bytes(F, "mask", mask, &shape)?;
    let threads = resolve_threads(F, threads)?;
    let (gs, ws, ms) = (
        as_slice(F, "g", &gr)?,
        as_slice(F, "w", &wr)?,
        as_slice(F, "mask", &mr)?,
    );
    py.detach(|| quant::apb_backward_sums(gs, ws, ms, alpha as f32, threads))
        .map_err(|e| value_error(format!("{F}: {e}")))
}
