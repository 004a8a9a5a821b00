//! `bgemm_prepare`, `bgemm_prepared`: a bgemm's B operand packed once (a layer's weights) and the
//! products against it (`crate::bgemm::prepared`).

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::args::{as_slice, filled2_on_lines, resolve_isa, resolve_threads, slice_of, value_error};
use super::bgemm::{parse_k, plane, same_shape, zero_padding, Plane};
use crate::bgemm::{self, Kind};
use crate::bits;

/// The kinds a prepared B serves, by the name of their bgemm.
const KINDS: [Kind; 3] = [Kind::B1x1, Kind::B1x2, Kind::B2x2];

/// A bgemm's B operand packed into the microkernels' panels for one kind and ISA
/// (`bgemm_prepare`); `bgemm_prepared(a, b)` multiplies by it.
#[pyclass(frozen, module = "apb_ref._kernels")]
pub(crate) struct PreparedB {
    inner: bgemm::Prepared,
}

#[pymethods]
impl PreparedB {
    /// The bgemm it serves ("bgemm_1x1", "bgemm_1x2" or "bgemm_2x2").
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// The ISA whose microkernels it was packed for.
    #[getter]
    fn isa(&self) -> String {
        self.inner.isa().to_string()
    }

    /// Rows of B: columns of every product.
    #[getter]
    fn n(&self) -> usize {
        self.inner.n()
    }

    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }

    /// Bytes it holds (the panels and B's planes as given).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "PreparedB(kind={:?}, n={}, k={}, isa={:?}, nbytes={})",
            self.kind(),
            self.n(),
            self.k(),
            self.isa(),
            self.nbytes()
        )
    }
}

/// An operand's planes: one uint64 array (named `one`), or a tuple or list of one or two (named
/// `two`, high plane first).
fn planes<'py>(
    func: &str,
    x: &Bound<'py, PyAny>,
    one: &'static str,
    two: [&'static str; 2],
) -> PyResult<Vec<Plane<'py>>> {
    let items: Vec<Bound<'py, PyAny>> = if let Ok(t) = x.cast::<PyTuple>() {
        t.iter().collect()
    } else if let Ok(l) = x.cast::<PyList>() {
        l.iter().collect()
    } else {
        return Ok(vec![plane(func, one, x)?]);
    };
    let names: &[&'static str] = match items.len() {
        1 => &[one],
        2 => &two,
        n => {
            return Err(value_error(format!(
                "{func}: {one} must be a uint64 array or a tuple of 1 or 2 planes (high first), got {n}"
            )))
        }
    };
    let planes = names
        .iter()
        .zip(&items)
        .map(|(name, x)| plane(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    same_shape(func, &planes)?;
    Ok(planes)
}

/// One operand of `kind` (`role` "A" or "B"): `want` planes of `k` bits per row, padding bits 0.
/// Returns its rows and the planes' words, borrowed; `wrong_w` words the error for another W.
#[allow(clippy::too_many_arguments)] // the operand's names and what it must match
fn operand<'py>(
    func: &str,
    x: &Bound<'py, PyAny>,
    (one, two): (&'static str, [&'static str; 2]),
    role: &str,
    want: usize,
    kind: Kind,
    k: usize,
    wrong_w: impl Fn(usize) -> String,
) -> PyResult<(usize, Vec<numpy::PyReadonlyArrayDyn<'py, u64>>)> {
    let planes = planes(func, x, one, two)?;
    if planes.len() != want {
        return Err(value_error(format!(
            "{func}: {} takes {role} as {want} plane(s), got {}",
            kind.name(),
            planes.len()
        )));
    }
    if planes[0].words != bits::words_for(k) {
        return Err(value_error(format!("{func}: {}", wrong_w(planes[0].words))));
    }
    let ro = planes
        .iter()
        .map(|p| slice_of::<u64>(func, p.name, &p.arr))
        .collect::<PyResult<Vec<_>>>()?;
    for (p, r) in planes.iter().zip(&ro) {
        zero_padding(func, p.name, as_slice(func, p.name, r)?, k)?;
    }
    Ok((planes[0].rows, ro))
}

/// The words of borrowed planes.
fn slices<'a>(func: &str, ro: &'a [numpy::PyReadonlyArrayDyn<'_, u64>]) -> PyResult<Vec<&'a [u64]>> {
    ro.iter().map(|r| as_slice(func, "a plane", r)).collect()
}

/// Pack `b` (a uint64 `(N, ceil(k/64))` array, or the `(b_hi, b_lo)` planes of a 2-bit operand) once
/// for products of `kind` ("bgemm_1x1", "bgemm_1x2" or "bgemm_2x2") on `isa`:
/// `bgemm_prepared(a, b_prepared)` then equals `kind(a, b, k)`. Made for a layer's weights, whose
/// product with the activations as `a` is the layer's output channels-last.
#[pyfunction]
#[pyo3(signature = (b, k, kind, isa=None))]
pub(crate) fn bgemm_prepare<'py>(
    py: Python<'py>,
    b: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    kind: &str,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<PreparedB> {
    const F: &str = "bgemm_prepare";
    let Some(kind) = KINDS.into_iter().find(|x| x.name() == kind) else {
        let names: Vec<String> = KINDS.iter().map(|x| format!("'{}'", x.name())).collect();
        let names = names.join(", ");
        return Err(value_error(format!(
            "{F}: kind must be one of {names}, got '{kind}'"
        )));
    };
    let k = parse_k(F, k, kind.max_k())?;
    let w = bits::words_for(k);
    let wrong_w = |got| format!("b has W = {got} words per row, but k = {k} needs W = ceil(k/64) = {w}");
    let b_names = ("b", ["b_hi", "b_lo"]);
    let (n, ro) = operand(F, b, b_names, "B", kind.planes().1, kind, k, wrong_w)?;
    let isa = resolve_isa(F, isa)?;
    let sl = slices(F, &ro)?;
    let inner = py
        .detach(|| bgemm::Prepared::new(kind, &sl, n, k, isa))
        .map_err(value_error)?;
    Ok(PreparedB { inner })
}

/// `a` (a uint64 `(M, ceil(k/64))` array, or `(a_hi, a_lo)` for bgemm_2x2) times the prepared B:
/// int32 `(M, N)`, exactly what `b.kind` computes on the operands as given, on `b.isa`.
#[pyfunction]
#[pyo3(signature = (a, b, threads=None))]
pub(crate) fn bgemm_prepared<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PreparedB>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    const F: &str = "bgemm_prepared";
    let prep = &b.get().inner;
    let (kind, k) = (prep.kind(), prep.k());
    let w = bits::words_for(k);
    let wrong_w = |got| format!("a has W = {got} words per row, but b was prepared for k = {k} (W = {w})");
    let (m, ro) = operand(
        F,
        a,
        ("a", ["a_hi", "a_lo"]),
        "A",
        kind.planes().0,
        kind,
        k,
        wrong_w,
    )?;
    let threads = resolve_threads(F, threads)?;
    let sl = slices(F, &ro)?;
    let n = prep.n();
    filled2_on_lines(py, F, m, n, |os: &mut [i32]| {
        bgemm::bgemm_prepared(&sl, m, prep, threads, os)
    })
}
