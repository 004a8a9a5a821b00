//! `BinaryNet`: a chain of binary convs prepared once (`crate::net`), run by `run(x)`.

use numpy::{PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::args::{
    as_slice, describe, empty, py_shape, resolve_isa, resolve_threads, slice_of, typed, value_error,
};
use super::bconv::{csr_arrays, CsrArrays};
use crate::bconv::Csr;
use crate::net::{self, Act, ConvSpec, HeadSpec, StemSpec, Step};

const F: &str = "BinaryNet";

/// A chain of binary convs with bits between layers, prepared once for (c, h, w) inputs.
///
/// `BinaryNet(input, padding, convs, steps, output, *, act_bits=1, stem=None, head=None)`: `input` =
/// (c, h, w); every conv pads by
/// `padding`; with `act_bits` = 1 every map is clipped (hardtanh) and packed as its signs, with 2
/// it goes through ReLU and is packed as the two planes of its DoReFa 2-bit level; `convs` is a list of tuples (weights uint64 (O, ceil(kh·kw·c/64)), c, kh, kw, stride,
/// scale float32 (O,), shift float32 (O,), correction float32 (Ho, Wo, O) or None, csr (indptr,
/// indices, data) or None), as `bconv_1bit` takes them; `steps` a list of ("conv", layer, input
/// bits, residual float or None, float out or None, bits out or None) and ("shortcut", src, dst,
/// stride, channels); `output` the float buffer returned. Buffer 0 of each kind is the blocks' input.
/// With `stem` = (weights float32 (C, c, kh, kw), padding, scale (C,), shift (C,)), the images are
/// (c, h, w) and the stem (conv, ·scale + shift, the activation) makes the blocks' input from them; with
/// `head` = (weights float32 (classes, C'), bias (classes,) or None), `run` returns logits (global
/// average pooling of the output buffer, then the linear layer).
#[pyclass(frozen, module = "apb_ref._kernels")]
pub(crate) struct BinaryNet {
    net: net::BinaryNet,
}

fn tuple<'a, 'py>(x: &'a Bound<'py, PyAny>, len: usize, what: &str) -> PyResult<&'a Bound<'py, PyTuple>> {
    match x.cast::<PyTuple>() {
        Ok(t) if t.len() == len => Ok(t),
        _ => Err(value_error(format!("{F}: {what} must be a tuple of {len} items"))),
    }
}

fn int(t: &Bound<'_, PyTuple>, i: usize, what: &str) -> PyResult<usize> {
    t.get_item(i)?
        .extract::<usize>()
        .map_err(|_| value_error(format!("{F}: {what} must be an integer >= 0")))
}

fn opt_int(t: &Bound<'_, PyTuple>, i: usize, what: &str) -> PyResult<Option<usize>> {
    let v = t.get_item(i)?;
    if v.is_none() {
        return Ok(None);
    }
    int(t, i, what).map(Some)
}

/// A C-contiguous float32 `ndim`-D array argument, borrowed read-only (its length is checked by
/// `crate::net`).
fn floats<'py>(
    x: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
) -> PyResult<numpy::PyReadonlyArrayDyn<'py, f32>> {
    slice_of(F, name, &typed::<f32>(F, name, x, "float32", ndim)?)
}

/// A conv tuple's arrays, borrowed while the net is built.
struct ConvArrays<'py> {
    weights: numpy::PyReadonlyArrayDyn<'py, u64>,
    o: usize,
    ints: [usize; 4],
    scale: numpy::PyReadonlyArrayDyn<'py, f32>,
    shift: numpy::PyReadonlyArrayDyn<'py, f32>,
    correction: Option<numpy::PyReadonlyArrayDyn<'py, f32>>,
    csr: Option<CsrArrays<'py>>,
}

fn conv_arrays<'py>(i: usize, x: &Bound<'py, PyAny>) -> PyResult<ConvArrays<'py>> {
    let what = format!("convs[{i}]");
    let t = tuple(x, 9, &what)?;
    let w = typed::<u64>(F, &format!("{what}: weights"), &t.get_item(0)?, "uint64", 2)?;
    let o = w.shape()[0];
    let mut ints = [0; 4];
    for (q, name) in ["c", "kh", "kw", "stride"].iter().enumerate() {
        ints[q] = int(t, q + 1, &format!("{what}: {name}"))?;
    }
    let correction = t.get_item(7)?;
    let correction = (!correction.is_none())
        .then(|| floats(&correction, &format!("{what}: correction"), 3))
        .transpose()?;
    let csr = t.get_item(8)?;
    let csr = (!csr.is_none()).then(|| csr_arrays(F, &csr)).transpose()?;
    Ok(ConvArrays {
        weights: slice_of(F, &format!("{what}: weights"), &w)?,
        o,
        ints,
        scale: floats(&t.get_item(5)?, &format!("{what}: scale"), 1)?,
        shift: floats(&t.get_item(6)?, &format!("{what}: shift"), 1)?,
        correction,
        csr,
    })
}

fn step(i: usize, x: &Bound<'_, PyAny>) -> PyResult<Step> {
    let what = format!("steps[{i}]");
    let kind = x
        .cast::<PyTuple>()
        .ok()
        .and_then(|t| t.get_item(0).ok())
        .and_then(|k| k.extract::<String>().ok());
    match kind.as_deref() {
        Some("conv") => {
            let t = tuple(x, 6, &format!("{what} (a conv)"))?;
            Ok(Step::Conv {
                layer: int(t, 1, &format!("{what}: layer"))?,
                input: int(t, 2, &format!("{what}: input"))?,
                residual: opt_int(t, 3, &format!("{what}: residual"))?,
                float: opt_int(t, 4, &format!("{what}: float"))?,
                bits: opt_int(t, 5, &format!("{what}: bits"))?,
            })
        }
        Some("shortcut") => {
            let t = tuple(x, 5, &format!("{what} (a shortcut)"))?;
            Ok(Step::Shortcut {
                src: int(t, 1, &format!("{what}: src"))?,
                dst: int(t, 2, &format!("{what}: dst"))?,
                stride: int(t, 3, &format!("{what}: stride"))?,
                channels: int(t, 4, &format!("{what}: channels"))?,
            })
        }
        _ => Err(value_error(format!(
            "{F}: {what} must be a tuple starting with 'conv' or 'shortcut'"
        ))),
    }
}

#[pymethods]
impl BinaryNet {
    #[new]
    #[pyo3(signature = (input, padding, convs, steps, output, *, act_bits=1, stem=None, head=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        input: &Bound<'_, PyAny>,
        padding: usize,
        convs: &Bound<'_, PyList>,
        steps: &Bound<'_, PyList>,
        output: usize,
        act_bits: usize,
        stem: Option<&Bound<'_, PyAny>>,
        head: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let input = tuple(input, 3, "input")?;
        let shape = (
            int(input, 0, "input: c")?,
            int(input, 1, "input: h")?,
            int(input, 2, "input: w")?,
        );
        let arrays = convs
            .iter()
            .enumerate()
            .map(|(i, c)| conv_arrays(i, &c))
            .collect::<PyResult<Vec<_>>>()?;
        let mut specs = Vec::with_capacity(arrays.len());
        for (i, a) in arrays.iter().enumerate() {
            let name = |n: &str| format!("convs[{i}]: {n}");
            let [c, kh, kw, stride] = a.ints;
            specs.push(ConvSpec {
                weights: as_slice(F, &name("weights"), &a.weights)?,
                o: a.o,
                c,
                kh,
                kw,
                stride,
                scale: as_slice(F, &name("scale"), &a.scale)?,
                shift: as_slice(F, &name("shift"), &a.shift)?,
                correction: a
                    .correction
                    .as_ref()
                    .map(|c| as_slice(F, &name("correction"), c))
                    .transpose()?,
                csr: match &a.csr {
                    Some(s) => Some(Csr {
                        indptr: as_slice(F, &name("csr: indptr"), &s.indptr)?,
                        indices: as_slice(F, &name("csr: indices"), &s.indices)?,
                        data: as_slice(F, &name("csr: data"), &s.data)?,
                    }),
                    None => None,
                },
            });
        }
        let steps = steps
            .iter()
            .enumerate()
            .map(|(i, s)| step(i, &s))
            .collect::<PyResult<Vec<_>>>()?;
        let fail = |e: String| value_error(format!("{F}: {e}"));
        let act = match act_bits {
            1 => Act::Sign,
            2 => Act::Dorefa2,
            _ => return Err(fail(format!("act_bits must be 1 or 2, got {act_bits}"))),
        };
        let mut net = net::BinaryNet::new(shape, padding, act, &specs, &steps, output).map_err(fail)?;
        if let Some(stem) = stem.filter(|s| !s.is_none()) {
            let t = tuple(stem, 4, "stem")?;
            let w = typed::<f32>(F, "stem: weights", &t.get_item(0)?, "float32", 4)?;
            let &[_, c, kh, kw] = w.shape() else {
                return Err(fail("stem: weights must be 4-D".into()));
            };
            let (w, scale, shift) = (
                slice_of::<f32>(F, "stem: weights", &w)?,
                floats(&t.get_item(2)?, "stem: scale", 1)?,
                floats(&t.get_item(3)?, "stem: shift", 1)?,
            );
            let spec = StemSpec {
                weights: as_slice(F, "stem: weights", &w)?,
                c,
                kh,
                kw,
                padding: int(t, 1, "stem: padding")?,
                scale: as_slice(F, "stem: scale", &scale)?,
                shift: as_slice(F, "stem: shift", &shift)?,
            };
            net = net.with_stem(&spec).map_err(fail)?;
        }
        if let Some(head) = head.filter(|h| !h.is_none()) {
            let t = tuple(head, 2, "head")?;
            let w = typed::<f32>(F, "head: weights", &t.get_item(0)?, "float32", 2)?;
            let classes = w.shape()[0];
            let w = slice_of::<f32>(F, "head: weights", &w)?;
            let bias = t.get_item(1)?;
            let bias = (!bias.is_none())
                .then(|| floats(&bias, "head: bias", 1))
                .transpose()?;
            let spec = HeadSpec {
                weights: as_slice(F, "head: weights", &w)?,
                classes,
                bias: bias.as_ref().map(|b| as_slice(F, "head: bias", b)).transpose()?,
            };
            net = net.with_head(&spec).map_err(fail)?;
        }
        Ok(BinaryNet { net })
    }

    /// The shapes of one image and of its result: (c, h, w) and (c', h', w') ((classes, 1, 1) with a
    /// head).
    #[getter]
    fn shapes(&self) -> ((usize, usize, usize), (usize, usize, usize)) {
        (self.net.input_shape(), self.net.output_shape())
    }

    /// float32 (N, c', h', w') of float32 images `x` (N, c, h, w).
    #[pyo3(signature = (x, *, isa=None, threads=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        isa: Option<&Bound<'py, PyAny>>,
        threads: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = "BinaryNet.run";
        let (c, h, w) = self.net.input_shape();
        let arr = typed::<f32>(f, "x", x, "float32", 4)?;
        if arr.shape()[1..] != [c, h, w] {
            return Err(value_error(format!(
                "{f}: x must have shape (N, {c}, {h}, {w}), got {} ({})",
                py_shape(arr.shape()),
                describe(&arr)
            )));
        }
        let n = arr.shape()[0];
        let isa = resolve_isa(f, isa)?;
        let threads = resolve_threads(f, threads)?;
        let ro = slice_of::<f32>(f, "x", &arr)?;
        let xs = as_slice(f, "x", &ro)?;
        let (oc, oh, ow) = self.net.output_shape();
        let out = empty::<f32, numpy::ndarray::Ix4>(py, f, &[n, oc, oh, ow])?;
        {
            let mut rw = out.readwrite();
            let dst = rw
                .as_slice_mut()
                .map_err(|e| value_error(format!("{f}: output: {e}")))?;
            py.detach(|| self.net.run(xs, n, dst, isa, threads))
                .map_err(|e| value_error(format!("{f}: {e}")))?;
        }
        Ok(out.into_any())
    }
}
