//! `conv2d_forward`, `conv2d_backward_input`, `conv2d_backward_weight`, `conv2d_backward` (both
//! gradients at once): the float32 conv of a training step on NCHW arrays (`crate::train::conv`).

use numpy::{PyArray4, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{
    as_slice, count_arg, empty, filled, resolve_isa, resolve_threads, slice_of, typed, value_error,
    window_args,
};
use crate::conv::Window;
use crate::train::conv::{self, Shape};

/// A float32 4-D argument and its four sizes, each at least 1.
fn array4<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyUntypedArray>, [usize; 4])> {
    let arr = typed::<f32>(func, name, x, "float32", 4)?;
    let dims: [usize; 4] = arr
        .shape()
        .try_into()
        .map_err(|_| value_error(format!("{func}: {name} must be 4-D")))?;
    if dims.contains(&0) {
        return Err(value_error(format!(
            "{func}: {name} must have no empty axis, got shape {dims:?}"
        )));
    }
    Ok((arr, dims))
}

/// The window of a conv whose kernel size comes from its weight's shape.
fn weight_window(
    func: &str,
    kh: usize,
    kw: usize,
    stride: Option<&Bound<'_, PyAny>>,
    padding: Option<&Bound<'_, PyAny>>,
) -> PyResult<Window> {
    Ok(Window {
        kh,
        kw,
        stride: count_arg(func, "stride", stride, Some(1), 1)?,
        padding: count_arg(func, "padding", padding, Some(0), 0)?,
    })
}

fn shape_of(func: &str, n: usize, c: usize, h: usize, w: usize, o: usize, win: Window) -> PyResult<Shape> {
    Shape::new(n, c, h, w, o, win).map_err(|e| value_error(format!("{func}: {e}")))
}

fn channels_match(func: &str, what: &str, got: usize, want: usize) -> PyResult<()> {
    if got != want {
        return Err(value_error(format!("{func}: {what}: {got} != {want}")));
    }
    Ok(())
}

/// conv2d of x float32 (N, C, H, W) with w float32 (O, C, kh, kw) -> float32 (N, O, Ho, Wo).
#[pyfunction]
#[pyo3(signature = (x, w, stride=None, padding=None, threads=None, isa=None))]
pub(crate) fn conv2d_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    const F: &str = "conv2d_forward";
    let (xa, [n, c, h, wd]) = array4(F, "x", x)?;
    let (wa, [o, wc, kh, kw]) = array4(F, "w", w)?;
    channels_match(F, "x's channels and w's input channels", c, wc)?;
    let win = weight_window(F, kh, kw, stride, padding)?;
    let s = shape_of(F, n, c, h, wd, o, win)?;
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let (xr, wr) = (slice_of::<f32>(F, "x", &xa)?, slice_of::<f32>(F, "w", &wa)?);
    let (xs, ws) = (as_slice(F, "x", &xr)?, as_slice(F, "w", &wr)?);
    filled(py, F, &[n, o, s.ho, s.wo], |ys| {
        conv::forward(&s, xs, ws, ys, isa, threads).map_err(|e| format!("{F}: {e}"))
    })
}

/// The gradient of conv2d's input: g float32 (N, O, Ho, Wo), w float32 (O, C, kh, kw), and the
/// input's height and width -> float32 (N, C, H, W).
#[pyfunction]
#[pyo3(signature = (g, w, h, width, stride=None, padding=None, threads=None, isa=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_input<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    h: &Bound<'py, PyAny>,
    width: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    const F: &str = "conv2d_backward_input";
    let (ga, [n, go, gh, gw]) = array4(F, "g", g)?;
    let (wa, [o, c, kh, kw]) = array4(F, "w", w)?;
    channels_match(F, "g's channels and w's output channels", go, o)?;
    let (h, wd) = (
        count_arg(F, "h", Some(h), None, 1)?,
        count_arg(F, "width", Some(width), None, 1)?,
    );
    let win = weight_window(F, kh, kw, stride, padding)?;
    let s = shape_of(F, n, c, h, wd, o, win)?;
    if (s.ho, s.wo) != (gh, gw) {
        return Err(value_error(format!(
            "{F}: g is {gh}x{gw} per channel, but a {h}x{width} input gives a {}x{} output",
            s.ho, s.wo
        )));
    }
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let (gr, wr) = (slice_of::<f32>(F, "g", &ga)?, slice_of::<f32>(F, "w", &wa)?);
    let (gs, ws) = (as_slice(F, "g", &gr)?, as_slice(F, "w", &wr)?);
    filled(py, F, &[n, c, h, wd], |gx| {
        conv::backward_input(&s, gs, ws, gx, isa, threads).map_err(|e| format!("{F}: {e}"))
    })
}

/// The gradient of conv2d's weight: x float32 (N, C, H, W), g float32 (N, O, Ho, Wo) and the
/// kernel size -> float32 (O, C, kh, kw).
#[pyfunction]
#[pyo3(signature = (x, g, kh, kw, stride=None, padding=None, threads=None, isa=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_weight<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    g: &Bound<'py, PyAny>,
    kh: &Bound<'py, PyAny>,
    kw: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    const F: &str = "conv2d_backward_weight";
    let (xa, [n, c, h, wd]) = array4(F, "x", x)?;
    let (ga, [gn, o, gh, gw]) = array4(F, "g", g)?;
    channels_match(F, "x's and g's batch sizes", gn, n)?;
    let win = window_args(F, kh, kw, stride, padding)?;
    let s = shape_of(F, n, c, h, wd, o, win)?;
    if (s.ho, s.wo) != (gh, gw) {
        return Err(value_error(format!(
            "{F}: g is {gh}x{gw} per channel, but x and the window give a {}x{} output",
            s.ho, s.wo
        )));
    }
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let (xr, gr) = (slice_of::<f32>(F, "x", &xa)?, slice_of::<f32>(F, "g", &ga)?);
    let (xs, gs) = (as_slice(F, "x", &xr)?, as_slice(F, "g", &gr)?);
    filled(py, F, &[o, c, win.kh, win.kw], |out| {
        conv::backward_weight(&s, xs, gs, out, isa, threads).map_err(|e| format!("{F}: {e}"))
    })
}

/// Both gradients of conv2d at once, (gx, gw) as `conv2d_backward_input` and `conv2d_backward_weight`
/// give them, bit for bit: x float32 (N, C, H, W), g float32 (N, O, Ho, Wo), w float32 (O, C, kh, kw).
/// Where the direct path allows, each image of g is padded once for both products.
#[pyfunction]
#[pyo3(signature = (x, g, w, stride=None, padding=None, threads=None, isa=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    g: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "conv2d_backward";
    let (xa, [n, c, h, wd]) = array4(F, "x", x)?;
    let (ga, [gn, o, gh, gwd]) = array4(F, "g", g)?;
    let (wa, [wo, wc, kh, kw]) = array4(F, "w", w)?;
    channels_match(F, "x's and g's batch sizes", gn, n)?;
    channels_match(F, "x's channels and w's input channels", c, wc)?;
    channels_match(F, "g's channels and w's output channels", o, wo)?;
    let win = weight_window(F, kh, kw, stride, padding)?;
    let s = shape_of(F, n, c, h, wd, o, win)?;
    if (s.ho, s.wo) != (gh, gwd) {
        return Err(value_error(format!(
            "{F}: g is {gh}x{gwd} per channel, but x and the window give a {}x{} output",
            s.ho, s.wo
        )));
    }
    let threads = resolve_threads(F, threads)?;
    let isa = resolve_isa(F, isa)?;
    let (xr, gr, wr) = (
        slice_of::<f32>(F, "x", &xa)?,
        slice_of::<f32>(F, "g", &ga)?,
        slice_of::<f32>(F, "w", &wa)?,
    );
    let (xs, gs, ws) = (
        as_slice(F, "x", &xr)?,
        as_slice(F, "g", &gr)?,
        as_slice(F, "w", &wr)?,
    );
    let gw = empty::<f32, numpy::ndarray::Ix4>(py, F, &[o, c, kh, kw])?;
    {
        let mut gw_rw = gw.readwrite();
        let gw_s = gw_rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{F}: gw: {e}")))?;
        let gx = filled::<f32, numpy::ndarray::Ix4>(py, F, &[n, c, h, wd], |gx_s| {
            conv::backward(&s, xs, gs, ws, gx_s, gw_s, isa, threads).map_err(|e| format!("{F}: {e}"))
        })?;
        drop(gw_rw);
        PyTuple::new(py, [gx.into_any(), gw.clone().into_any()])
    }
}
