//! Elementwise activations of a training step and their gradients, and the 1-bit activations' sign, over chunks of the flat array on
//! several threads, in the widest vectors the CPU has (`vector::widest`). Each value is computed exactly as its NumPy twin computes it (`ReLU`, `Hardtanh`
//! in `apb_ref/ops/basic.py`, `SignSTE` in `apb_ref/quant/activations.py`), NaN, infinities and signed zeros included, so the two agree bit for bit.

use super::vector::widest;
use crate::threads;

/// Elements per task: big enough that a task outlasts a thread's wake-up, small enough to share.
const CHUNK: usize = 1 << 16;

/// `np.maximum(x, 0)`: NaN stays NaN, −0.0 becomes +0.0.
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v.is_nan() || v > 0.0 {
        v
    } else {
        0.0
    }
}

/// `np.clip(x, lo, hi)`: NaN stays NaN, −0.0 stays −0.0 inside the range.
#[inline(always)]
pub fn clip(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// `np.where(x < 0, -1, 1)`, the sign convention of the bit packers: +1 for ±0 and NaN.
#[inline(always)]
pub fn sign(v: f32) -> f32 {
    if v < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// `g * mask` with the mask as 1.0 or 0.0 (so NaN·0 = NaN and −g·0 = −0.0, as NumPy multiplies).
#[inline(always)]
pub fn masked(g: f32, keep: bool) -> f32 {
    g * if keep { 1.0 } else { 0.0 }
}

/// The activation a fused batch-norm call applies to its output (`norm::forward`), and whose
/// gradient it applies to the incoming one (`norm::backward`): the same operations as `relu`,
/// `clip` and their NumPy twins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Identity,
    Relu,
    Clip { lo: f32, hi: f32 },
}

impl Act {
    /// The activation of v.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => relu(v),
            Act::Clip { lo, hi } => clip(v, lo, hi),
        }
    }

    /// g times the activation's derivative, read off its output y (`relu_backward`,
    /// `hardtanh_backward`; the identity's g · 1 keeps g's bits).
    #[inline(always)]
    pub fn gradient(self, g: f32, y: f32) -> f32 {
        match self {
            Act::Identity => masked(g, true),
            Act::Relu => masked(g, y > 0.0),
            Act::Clip { lo, hi } => masked(g, y > lo && y < hi),
        }
    }
}

fn check(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} elements, expected {want}"));
    }
    Ok(())
}

/// out[i] = f(x[i]).
pub fn map(x: &[f32], out: &mut [f32], threads: usize, f: impl Fn(f32) -> f32 + Sync) -> Result<(), String> {
    check("out", out.len(), x.len())?;
    let items: Vec<_> = x.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).collect();
    threads::run_claimed(threads, items, |(xs, os)| {
        map_slice(xs, os, &f);
        true
    })?;
    Ok(())
}

/// out[i] = f(a[i], b[i]).
pub fn zip_map(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    threads: usize,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(), String> {
    check("b", b.len(), a.len())?;
    check("out", out.len(), a.len())?;
    let items: Vec<_> = a
        .chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .zip(out.chunks_mut(CHUNK))
        .collect();
    threads::run_claimed(threads, items, |((xs, ys), os)| {
        zip_map_slice(xs, ys, os, &f);
        true
    })?;
    Ok(())
}

widest! {
    fn map_slice(x: &[f32], out: &mut [f32], f: &impl Fn(f32) -> f32) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v);
        }
    }
}

widest! {
    fn zip_map_slice(a: &[f32], b: &[f32], out: &mut [f32], f: &impl Fn(f32, f32) -> f32) {
        for ((o, &u), &v) in out.iter_mut().zip(a).zip(b) {
            *o = f(u, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_values_behave_as_numpy() {
        assert_eq!(relu(-0.0).to_bits(), 0.0f32.to_bits());
        assert!(relu(f32::NAN).is_nan() && relu(f32::INFINITY) == f32::INFINITY && relu(-3.0) == 0.0);
        assert_eq!(clip(-0.0, -1.0, 1.0).to_bits(), (-0.0f32).to_bits());
        assert!(clip(f32::NAN, -1.0, 1.0).is_nan() && clip(5.0, -1.0, 1.0) == 1.0);
        assert_eq!(masked(-2.0, false).to_bits(), (-0.0f32).to_bits());
        assert!(sign(-0.0) == 1.0 && sign(f32::NAN) == 1.0 && sign(-1e-45) == -1.0);
        assert!(masked(f32::INFINITY, false).is_nan());
    }

    #[test]
    fn chunks_cover_the_array_on_any_thread_count() {
        let x: Vec<f32> = (0..3 * CHUNK + 5).map(|i| i as f32 - 1e5).collect();
        for threads in [1, 2, 3] {
            let mut out = vec![f32::NAN; x.len()];
            map(&x, &mut out, threads, relu).unwrap();
            assert!(out.iter().zip(&x).all(|(&o, &v)| o == v.max(0.0)));
            zip_map(&x, &x, &mut out, threads, |g, y| masked(g, y > 0.0)).unwrap();
            assert!(out
                .iter()
                .zip(&x)
                .all(|(&o, &v)| o == if v > 0.0 { v } else { 0.0 }));
        }
    }
}
