//! The quantizers of a training step: DoReFa's activation quantizer (`DoReFaQuantize` in
//! `apb_ref/quant/activations.py`) and APB's weight quantizer (`APBQuantize` in `apb_ref/quant/apb.py`),
//! over chunks of the flat array on several threads.
//!
//! The elementwise parts repeat the NumPy code's float32 operations in its order, so they agree bit
//! for bit; APB's α and δ gradients are sums, accumulated here in f64 per chunk and the chunks added in
//! order (the same bits on any thread count), then rounded to float32 by the caller.

use super::elementwise::{self as ew, clip, masked, sign};
use super::vector::widest;
use crate::threads;

/// Elements per task, as in `elementwise`.
const CHUNK: usize = 1 << 16;

/// The largest DoReFa level count whose `levels − 1` float32 holds exactly (2²⁴ + 1).
pub const MAX_LEVELS: u64 = (1 << 24) + 1;

/// `np.round(np.clip(x, 0, 1) * s) / s` with s = levels − 1 as float32: NaN stays NaN, −0.0 stays −0.0,
/// halves round to even as `np.round` does.
#[inline(always)]
pub fn dorefa(v: f32, s: f32) -> f32 {
    (clip(v, 0.0, 1.0) * s).round_ties_even() / s
}

/// `g · ((x >= 0) & (x <= 1))`, the mask as 1.0 or 0.0 (NaN·0 = NaN as NumPy multiplies).
#[inline(always)]
pub fn dorefa_grad(g: f32, x: f32) -> f32 {
    masked(g, (0.0..=1.0).contains(&x))
}

/// DoReFa's forward with `levels` (≥ 2, ≤ [`MAX_LEVELS`]) levels.
pub fn dorefa_forward(x: &[f32], levels: u64, out: &mut [f32], threads: usize) -> Result<(), String> {
    if !(2..=MAX_LEVELS).contains(&levels) {
        return Err(format!("levels must be in [2, {MAX_LEVELS}], got {levels}"));
    }
    let s = (levels - 1) as f32; // exact below 2^24 + 1
    ew::map(x, out, threads, move |v| dorefa(v, s))
}

/// The inputs of APB's forward: the band (α, δ, margin m as float32) and an optional frozen mask.
#[derive(Clone, Copy, Debug)]
pub struct Band {
    pub alpha: f32,
    pub delta: f32,
    pub margin: f32,
}

impl Band {
    /// `| |w| − α | < m·δ` (NumPy's `band_mask`, the product m·δ in float32); False for NaN.
    #[inline(always)]
    pub fn inside(&self, w: f32) -> bool {
        (w.abs() - self.alpha).abs() < self.margin * self.delta
    }
}

/// `α·sign(w)` where binarized, else w (`np.where(mask, alpha * s, w)`).
#[inline(always)]
pub fn apb_value(w: f32, alpha: f32, binarized: bool) -> f32 {
    if binarized {
        alpha * sign(w)
    } else {
        w
    }
}

fn check(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} elements, expected {want}"));
    }
    Ok(())
}

/// APB's forward: q and the mask it used. With `frozen` (one byte per weight, non-zero = binarized)
/// the mask is that one and `mask_out` is left alone; else the band's mask is written to `mask_out`
/// (1 inside the band, else 0: the bytes of a NumPy bool array).
pub fn apb_forward(
    w: &[f32],
    band: &Band,
    frozen: Option<&[u8]>,
    q: &mut [f32],
    mask_out: &mut [u8],
    threads: usize,
) -> Result<(), String> {
    check("q", q.len(), w.len())?;
    match frozen {
        Some(f) => {
            check("frozen_mask", f.len(), w.len())?;
            let items: Vec<_> = w
                .chunks(CHUNK)
                .zip(f.chunks(CHUNK))
                .zip(q.chunks_mut(CHUNK))
                .collect();
            threads::run_claimed(threads, items, |((ws, fs), qs)| {
                apb_frozen_slice(ws, fs, band.alpha, qs);
                true
            })?;
        }
        None => {
            check("mask", mask_out.len(), w.len())?;
            let items: Vec<_> = w
                .chunks(CHUNK)
                .zip(q.chunks_mut(CHUNK))
                .zip(mask_out.chunks_mut(CHUNK))
                .collect();
            threads::run_claimed(threads, items, |((ws, qs), ms)| {
                apb_band_slice(ws, band, qs, ms);
                true
            })?;
        }
    }
    Ok(())
}

widest! {
    fn apb_band_slice(w: &[f32], band: &Band, q: &mut [f32], mask: &mut [u8]) {
        for ((&v, q), m) in w.iter().zip(q.iter_mut()).zip(mask.iter_mut()) {
            let inside = band.inside(v);
            *m = u8::from(inside);
            *q = apb_value(v, band.alpha, inside);
        }
    }
}

widest! {
    fn apb_frozen_slice(w: &[f32], frozen: &[u8], alpha: f32, q: &mut [f32]) {
        for ((&v, &f), q) in w.iter().zip(frozen).zip(q.iter_mut()) {
            *q = apb_value(v, alpha, f != 0);
        }
    }
}

/// The sums of APB's α and δ gradients: (Σ gs, Σ gs·(α − |w|)) with gs = g·sign(w) where binarized
/// and +0.0 elsewhere (`np.where(mask, g * s, 0)`), each term a float32 product as NumPy forms it
/// (so an infinite weight outside the band still makes the second sum NaN, 0·inf), added in f64.
pub fn apb_backward_sums(
    g: &[f32],
    w: &[f32],
    mask: &[u8],
    alpha: f32,
    threads: usize,
) -> Result<(f64, f64), String> {
    check("w", w.len(), g.len())?;
    check("mask", mask.len(), g.len())?;
    let mut partial = vec![(0.0f64, 0.0f64); g.len().div_ceil(CHUNK)];
    let items: Vec<_> = g
        .chunks(CHUNK)
        .zip(w.chunks(CHUNK))
        .zip(mask.chunks(CHUNK))
        .zip(partial.iter_mut())
        .collect();
    threads::run_claimed(threads, items, |(((gs, ws), ms), out)| {
        *out = apb_sums_slice(gs, ws, ms, alpha);
        true
    })?;
    Ok(partial
        .iter()
        .fold((0.0, 0.0), |(a, d), &(pa, pd)| (a + pa, d + pd)))
}

/// One weight's two gradient terms (gs, gs·(α − |w|)), float32 as NumPy computes them.
#[inline(always)]
pub fn apb_terms(g: f32, w: f32, binarized: bool, alpha: f32) -> (f32, f32) {
    let gs = if binarized { g * sign(w) } else { 0.0 };
    (gs, gs * (alpha - w.abs()))
}

widest! {
    fn apb_sums_slice(g: &[f32], w: &[f32], mask: &[u8], alpha: f32) -> (f64, f64) {
        let (mut a, mut d) = (0.0f64, 0.0f64);
        for ((&g, &w), &m) in g.iter().zip(w).zip(mask) {
            let (ta, td) = apb_terms(g, w, m != 0, alpha);
            a += f64::from(ta);
            d += f64::from(td);
        }
        (a, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dorefa_edge_values_behave_as_numpy() {
        let s = 3.0;
        assert_eq!(dorefa(-0.0, s).to_bits(), (-0.0f32).to_bits()); // np.clip keeps −0.0
        assert!(dorefa(f32::NAN, s).is_nan());
        assert_eq!(dorefa(f32::INFINITY, s), 1.0);
        assert_eq!(dorefa(f32::NEG_INFINITY, s), 0.0);
        assert_eq!(dorefa(0.5, s), 2.0 / 3.0); // 1.5 rounds to 2 (half to even)
        assert_eq!(dorefa(0.5, 1.0), 0.0); // 0.5 rounds to 0
        assert_eq!(dorefa(2.5 / 3.0, s), 2.0 / 3.0); // 2.5 (as float32) rounds to 2
        assert!(dorefa_grad(f32::NAN, 0.5).is_nan() && dorefa_grad(f32::INFINITY, 2.0).is_nan());
        assert_eq!(dorefa_grad(-2.0, -0.0), -2.0); // −0.0 >= 0
        assert_eq!(dorefa_grad(-2.0, f32::NAN).to_bits(), (-0.0f32).to_bits());
        let mut out = [0.0f32; 2];
        assert!(dorefa_forward(&[0.0, 1.0], 1, &mut out, 1).is_err());
        assert!(dorefa_forward(&[0.0, 1.0], MAX_LEVELS + 1, &mut out, 1).is_err());
    }

    #[test]
    fn apb_edge_values_behave_as_numpy() {
        let band = Band {
            alpha: 0.5,
            delta: 0.25,
            margin: 1.0,
        };
        let w = [0.5f32, -0.3, f32::NAN, -0.0, f32::INFINITY, 0.75, 0.7];
        let (mut q, mut m) = ([0.0f32; 7], [9u8; 7]);
        apb_forward(&w, &band, None, &mut q, &mut m, 1).unwrap();
        assert_eq!(m, [1, 1, 0, 0, 0, 0, 1]); // 0.75 is on the edge: outside
        assert_eq!(q[..2], [0.5, -0.5]);
        assert!(q[2].is_nan() && q[4] == f32::INFINITY && q[6] == 0.5);
        assert_eq!(q[3].to_bits(), (-0.0f32).to_bits());
        // a frozen mask: −0.0 binarized is +α (sign(−0) = +1)
        apb_forward(&w, &band, Some(&[0, 0, 0, 7, 0, 1, 0]), &mut q, &mut [], 1).unwrap();
        assert!(q[3] == 0.5 && q[5] == 0.5 && q[0] == 0.5 && q[1] == -0.3);
        // gradients: an infinite weight outside the band makes the δ sum NaN (0·−inf), a NaN
        // gradient outside the band is dropped (where, not a product)
        let (a, d) = apb_backward_sums(&[1.0, f32::NAN], &[0.5, f32::INFINITY], &[1, 0], 0.5, 1).unwrap();
        assert!(a == 1.0 && d.is_nan());
        let (a, d) = apb_backward_sums(&[2.0, f32::NAN], &[-0.25, 3.0], &[1, 0], 0.5, 1).unwrap();
        assert!(a == -2.0 && d == -0.5);
    }

    #[test]
    fn sums_are_the_same_on_any_thread_count() {
        let n = 3 * CHUNK + 11;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let m: Vec<u8> = (0..n).map(|i| (i % 3 != 0) as u8).collect();
        let one = apb_backward_sums(&g, &w, &m, 0.4, 1).unwrap();
        for threads in [2, 3] {
            let got = apb_backward_sums(&g, &w, &m, 0.4, threads).unwrap();
            assert_eq!(
                (got.0.to_bits(), got.1.to_bits()),
                (one.0.to_bits(), one.1.to_bits())
            );
        }
    }
}
