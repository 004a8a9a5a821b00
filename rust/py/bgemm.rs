//! `bgemm_1x1`, `bgemm_1x2`, `bgemm_2x2`: the popcount GEMMs on packed operands (`crate::bgemm`),
//! with the optional per-row `scale`/`shift` epilogue.

use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::args::{
    as_slice, filled2_on_lines, opt_int, py_shape, resolve_isa, resolve_threads, slice_of, typed, value_error,
};
use crate::bgemm::{self, Kind};
use crate::bits::{self, words_for};

/// Validate `k` (an int in [1, max_k]).
pub(super) fn parse_k(func: &str, k: &Bound<'_, PyAny>, max_k: usize) -> PyResult<usize> {
    let k = opt_int(func, "k", Some(k))?
        .ok_or_else(|| value_error(format!("{func}: k must be an integer, got None")))?;
    if k < 1 || k as u64 > max_k as u64 {
        return Err(value_error(format!(
            "{func}: k must be in [1, {max_k}] (larger k could overflow the int32 result), got {k}"
        )));
    }
    Ok(k as usize)
}

/// One packed operand plane after validation.
pub(super) struct Plane<'py> {
    pub name: &'static str,
    pub arr: Bound<'py, PyUntypedArray>,
    pub rows: usize,
    pub words: usize,
}

pub(super) fn plane<'py>(func: &str, name: &'static str, x: &Bound<'py, PyAny>) -> PyResult<Plane<'py>> {
    let arr = typed::<u64>(func, name, x, "uint64", 2)?;
    let (rows, words) = match arr.shape() {
        [r, w] => (*r, *w),
        _ => return Err(value_error(format!("{func}: {name} must be 2-D"))),
    };
    Ok(Plane {
        name,
        arr,
        rows,
        words,
    })
}

/// A packed plane's padding bits past `k` must be 0.
pub(super) fn zero_padding(func: &str, name: &str, words: &[u64], k: usize) -> PyResult<()> {
    match bits::first_bad_padding(words, k) {
        None => Ok(()),
        Some(row) => Err(value_error(format!(
            "{func}: {name} has non-zero padding bits past k = {k} (first in row {row}); \
             padding must be 0 (pack with pack_bits/pack_2bit)"
        ))),
    }
}

/// Planes of one operand must agree in shape.
pub(super) fn same_shape(func: &str, planes: &[Plane<'_>]) -> PyResult<()> {
    if let [first, rest @ ..] = planes {
        for p in rest {
            if (p.rows, p.words) != (first.rows, first.words) {
                return Err(value_error(format!(
                    "{func}: {} and {} must have the same shape, got ({}, {}) and ({}, {})",
                    first.name, p.name, first.rows, first.words, p.rows, p.words
                )));
            }
        }
    }
    Ok(())
}

/// The keyword arguments every bgemm takes.
struct BgemmOptions<'a, 'py> {
    isa: Option<&'a Bound<'py, PyAny>>,
    threads: Option<&'a Bound<'py, PyAny>>,
    scale: Option<&'a Bound<'py, PyAny>>,
    shift: Option<&'a Bound<'py, PyAny>>,
}

fn run_bgemm<'py>(
    py: Python<'py>,
    kind: Kind,
    a: &[(&'static str, &Bound<'py, PyAny>)],
    b: &[(&'static str, &Bound<'py, PyAny>)],
    k: &Bound<'py, PyAny>,
    options: BgemmOptions<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let func = kind.name();
    let a_planes = a
        .iter()
        .map(|(name, x)| plane(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    let b_planes = b
        .iter()
        .map(|(name, x)| plane(func, name, x))
        .collect::<PyResult<Vec<_>>>()?;
    same_shape(func, &a_planes)?;
    same_shape(func, &b_planes)?;
    let k = parse_k(func, k, kind.max_k())?;
    let (Some(fa), Some(fb)) = (a_planes.first(), b_planes.first()) else {
        return Err(value_error(format!("{func}: internal error: no planes")));
    };
    if fa.words != fb.words {
        return Err(value_error(format!(
            "{func}: {} and {} must have the same number of words per row (W), got {} and {}",
            fa.name, fb.name, fa.words, fb.words
        )));
    }
    let w = words_for(k);
    if fa.words != w {
        return Err(value_error(format!(
            "{func}: {} and {} have W = {} words per row, but k = {k} needs W = ceil(k/64) = {w}",
            fa.name, fb.name, fa.words
        )));
    }
    let isa = resolve_isa(func, options.isa)?;
    let threads = resolve_threads(func, options.threads)?;
    let (m, n) = (fa.rows, fb.rows);
    let scale = row_vector(func, "scale", options.scale, m)?;
    let shift = row_vector(func, "shift", options.shift, m)?;

    let a_ro = a_planes
        .iter()
        .map(|p| slice_of::<u64>(func, p.name, &p.arr))
        .collect::<PyResult<Vec<_>>>()?;
    let b_ro = b_planes
        .iter()
        .map(|p| slice_of::<u64>(func, p.name, &p.arr))
        .collect::<PyResult<Vec<_>>>()?;
    let mut a_sl: Vec<&[u64]> = Vec::with_capacity(a_ro.len());
    for (p, ro) in a_planes.iter().zip(&a_ro) {
        a_sl.push(as_slice(func, p.name, ro)?);
    }
    let mut b_sl: Vec<&[u64]> = Vec::with_capacity(b_ro.len());
    for (p, ro) in b_planes.iter().zip(&b_ro) {
        b_sl.push(as_slice(func, p.name, ro)?);
    }
    for (p, s) in a_planes.iter().chain(&b_planes).zip(a_sl.iter().chain(&b_sl)) {
        zero_padding(func, p.name, s, k)?;
    }

    // bgemm's errors already name the kernel
    if scale.is_none() && shift.is_none() {
        return filled2_on_lines(py, func, m, n, |os: &mut [i32]| {
            bgemm::bgemm(kind, &a_sl, &b_sl, m, n, k, isa, threads, None, os)
        });
    }
    let (ones, zeros) = (vec![1.0f32; m], vec![0.0f32; m]);
    let epilogue = bgemm::Epilogue {
        scale: scale
            .as_ref()
            .map_or(Ok(&ones[..]), |r| as_slice(func, "scale", r))?,
        shift: shift
            .as_ref()
            .map_or(Ok(&zeros[..]), |r| as_slice(func, "shift", r))?,
    };
    filled2_on_lines(py, func, m, n, |os: &mut [f32]| {
        // SAFETY: f32 and i32 have the same size and alignment and every bit pattern is a valid i32;
        // bgemm writes each element as an i32 product and the epilogue rewrites it as f32 bits.
        let ints = unsafe { std::slice::from_raw_parts_mut(os.as_mut_ptr().cast::<i32>(), os.len()) };
        bgemm::bgemm(kind, &a_sl, &b_sl, m, n, k, isa, threads, Some(epilogue), ints)
    })
}

/// An optional float32 vector of `m` values (one per row of a), borrowed read-only, or None.
fn row_vector<'py>(
    func: &str,
    name: &str,
    v: Option<&Bound<'py, PyAny>>,
    m: usize,
) -> PyResult<Option<numpy::PyReadonlyArrayDyn<'py, f32>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let arr = typed::<f32>(func, name, v, "float32", 1)?;
    if arr.shape() != [m] {
        return Err(value_error(format!(
            "{func}: {name} must hold one value per row of a ({m}), got shape {}",
            py_shape(arr.shape())
        )));
    }
    slice_of(func, name, &arr).map(Some)
}

/// ±1 × ±1: `out[i, j] = k − 2·popcount(a[i] ^ b[j])`, int32 (M, N). With `scale` and/or `shift`
/// (float32 (M,) each) float32 `out · scale[i] + shift[i]` instead, made as the products finish
/// (the same for every bgemm).
#[pyfunction]
#[pyo3(signature = (a, b, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bgemm_1x1<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    run_bgemm(py, Kind::B1x1, &[("a", a)], &[("b", b)], k, options)
}

/// ±1 × 2-bit: `out = 2·(a·b_hi) + (a·b_lo)`, int32 (M, N).
#[pyfunction]
#[pyo3(signature = (a, b_hi, b_lo, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bgemm_1x2<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b_hi: &Bound<'py, PyAny>,
    b_lo: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    run_bgemm(
        py,
        Kind::B1x2,
        &[("a", a)],
        &[("b_hi", b_hi), ("b_lo", b_lo)],
        k,
        options,
    )
}

/// 2-bit × 2-bit: `out = 4·(ah·bh) + 2·(ah·bl) + 2·(al·bh) + (al·bl)`, int32 (M, N).
#[pyfunction]
#[pyo3(signature = (a_hi, a_lo, b_hi, b_lo, k, isa=None, threads=None, *, scale=None, shift=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn bgemm_2x2<'py>(
    py: Python<'py>,
    a_hi: &Bound<'py, PyAny>,
    a_lo: &Bound<'py, PyAny>,
    b_hi: &Bound<'py, PyAny>,
    b_lo: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    isa: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    shift: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = BgemmOptions {
        isa,
        threads,
        scale,
        shift,
    };
    let (a, b) = ([("a_hi", a_hi), ("a_lo", a_lo)], [("b_hi", b_hi), ("b_lo", b_lo)]);
    run_bgemm(py, Kind::B2x2, &a, &b, k, options)
}

/// Binary MACs per second of the xor-popcount-add loop on registers (`crate::bgemm::peak`) on
/// `threads` threads of `steps` steps each, or None without AVX-512 VPOPCNTDQ: the bound the
/// benchmarks state `bgemm_1x1`'s AVX-512 figures against.
#[pyfunction]
#[pyo3(signature = (threads=None, steps=None))]
pub(crate) fn xor_popcount_peak(
    py: Python<'_>,
    threads: Option<&Bound<'_, PyAny>>,
    steps: Option<usize>,
) -> PyResult<Option<f64>> {
    let threads = super::args::resolve_threads("xor_popcount_peak", threads)?;
    let steps = steps.unwrap_or(1 << 22).clamp(1, 1 << 32);
    Ok(py.detach(|| crate::bgemm::peak::xor_popcount_peak(threads, steps)))
}
