//! APB's sparse term S·x of one conv, read straight from the gathered windows: per output position,
//! Σ v·x over the row's non-zeros in CSR order, x the tap's sign (±1), or 0 on the padding — the
//! same products summed in the same order as `bconv_1bit`'s (crate::bconv), so the same bits.
//!
//! A product on the padding is ±0, and adding ±0 leaves every sum as it was (a sum that starts at +0
//! is never −0 under round-to-nearest), so the padding's products are simply not added: the
//! portable sums add +0 there, the AVX-512 ones mask those lanes out of the add.

use std::ops::Range;

use super::kernel::{segments, CHUNK, LEVELS};
use super::Conv;
use crate::bconv::Csr;

/// S per non-zero, row by row in CSR order.
pub(crate) struct Sparse {
    starts: Vec<usize>,
    taps: Vec<Tap>,
}

/// A non-zero of S, as the kernel reads it: its tap, the 32-bit half of the window word that holds
/// its input channel (2·tap + channel / 32), the shift that brings the channel's bit to the sign
/// bit, that bit itself, and the bits of the value and of its negative.
#[derive(Clone, Copy)]
pub(crate) struct Tap {
    pub tap: usize,
    pub half: usize,
    pub up: u32,
    pub bit: u32,
    pub v: u32,
    pub nv: u32,
}

impl Sparse {
    /// S of a conv with `o` rows and columns in the window's (tap, channel) order over `c` channels
    /// (k = taps·c columns).
    pub(crate) fn new(csr: Csr, o: usize, k: usize, c: usize) -> Result<Sparse, String> {
        let rows = crate::spmm::validate(csr.indptr, csr.indices, csr.data.len(), k)
            .map_err(|e| format!("csr: {e}"))?;
        if rows != o {
            return Err(format!(
                "csr has {rows} rows (len(indptr) - 1), but the weights have O = {o}"
            ));
        }
        if csr.data.iter().any(|v| !v.is_finite()) {
            return Err("csr data must be finite".into());
        }
        // validate(): indptr runs from 0 to nnz without decreasing, every column is in [0, k)
        let taps = csr.indices.iter().zip(csr.data).map(|(&col, &v)| {
            let (tap, ch) = (col as usize / c, col as usize % c);
            Tap {
                tap,
                half: 2 * tap + ch / 32,
                up: 31 - (ch % 32) as u32,
                bit: 1 << (ch % 32),
                v: v.to_bits(),
                nv: (-v).to_bits(),
            }
        });
        Ok(Sparse {
            starts: csr.indptr.iter().map(|&s| s as usize).collect(),
            taps: taps.collect(),
        })
    }

    /// The non-zeros of output channel `o`.
    #[inline(always)]
    pub(crate) fn row(&self, o: usize) -> &[Tap] {
        &self.taps[self.starts[o]..self.starts[o + 1]]
    }
}

/// Per chunk of positions and tap, a mask of the lanes whose tap lies inside the map (bit l for
/// position chunk·[`CHUNK`] + l; 0 past the last position): `masks[chunk · taps + tap]`.
pub(crate) fn inside_masks(c: &Conv, pad: usize) -> Vec<u64> {
    let (taps, positions) = (c.kh * c.kw, c.ho * c.wo);
    let chunks = positions.div_ceil(CHUNK);
    let mut masks = vec![0u64; chunks * taps];
    for chunk in 0..chunks {
        let p0 = chunk * CHUNK;
        for (l, oy, ox, len) in segments(p0, CHUNK.min(positions - p0), c.wo) {
            for (t, m) in masks[chunk * taps..(chunk + 1) * taps].iter_mut().enumerate() {
                let (i, j) = (t / c.kw, t % c.kw);
                let y = oy * c.stride + i; // in the padded map
                if y < pad || y >= c.h + pad {
                    continue;
                }
                // column (ox + q)·stride + j lies in [pad, w + pad) for q in `inside`
                let first = pad.saturating_sub(j).div_ceil(c.stride);
                let end = (c.w + pad).saturating_sub(j).div_ceil(c.stride);
                let inside: Range<usize> = first.max(ox)..end.min(ox + len);
                for q in inside {
                    *m |= 1 << (l + q - ox);
                }
            }
        }
    }
    masks
}

/// The masks of a chunk's taps as `keep` words for the portable sums: all bits inside, none outside.
#[inline(always)]
pub(crate) fn expand(masks: &[u64], keep: &mut [[u32; CHUNK]]) {
    for (&m, lanes) in masks.iter().zip(keep) {
        for (l, k) in lanes.iter_mut().enumerate() {
            *k = 0u32.wrapping_sub(((m >> l) & 1) as u32);
        }
    }
}

/// Σ v·x of 1-bit maps over a row's non-zeros, per lane: `halves` the chunk's windows as 32-bit
/// halves, `masks` (AVX-512) or `keep` (portable) where each tap is inside. `wide`: the AVX-512
/// form, only where AVX-512 was checked.
#[inline(always)]
pub(crate) fn sums_1bit(
    wide: bool,
    row: &[Tap],
    halves: &[[u32; CHUNK]],
    masks: &[u64],
    keep: &[[u32; CHUNK]],
) -> [f32; CHUNK] {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` only when the ISA is AVX-512, checked available by the caller.
        return unsafe { sums_1bit_avx512(row, halves, masks) };
    }
    let _ = (wide, masks);
    let mut sums = [0f32; CHUNK];
    for &Tap { tap, half, up, v, .. } in row {
        let (x, keep) = (&halves[half], &keep[tap]);
        // v·x exactly, without the multiply: v with its sign flipped where x = −1 (the channel's
        // bit of the window), +0 on the padding
        for l in 0..CHUNK {
            sums[l] += f32::from_bits((((x[l] << up) & 0x8000_0000) ^ v) & keep[l]);
        }
    }
    sums
}

/// [`sums_1bit`] in AVX-512: per 16 lanes a bit test (x = −1?), a blend of v and −v, and an add
/// masked to the lanes inside the map.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sums_1bit_avx512(row: &[Tap], halves: &[[u32; CHUNK]], masks: &[u64]) -> [f32; CHUNK] {
    use std::arch::x86_64::*;
    const VECS: usize = CHUNK / 16;
    let mut acc = [_mm512_setzero_ps(); VECS];
    for t in row {
        let (x, m) = (&halves[t.half], masks[t.tap]);
        let bit = _mm512_set1_epi32(t.bit as i32);
        let (v, nv) = (_mm512_set1_epi32(t.v as i32), _mm512_set1_epi32(t.nv as i32));
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: lanes 16q .. 16q + 16 of a CHUNK-lane row.
            let xq = unsafe { _mm512_loadu_si512(x[16 * q..].as_ptr().cast()) };
            let term = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(xq, bit), v, nv);
            *a = _mm512_mask_add_ps(*a, (m >> (16 * q)) as u16, *a, _mm512_castsi512_ps(term));
        }
    }
    let mut sums = [0f32; CHUNK];
    for (q, a) in acc.iter().enumerate() {
        // SAFETY: lanes 16q .. 16q + 16 of sums.
        unsafe { _mm512_storeu_ps(sums[16 * q..].as_mut_ptr(), *a) };
    }
    sums
}

/// Σ v·x of 2-bit maps over a row's non-zeros, per lane (portable): x = j/3 of the level j = 3 − 2·hi
/// − lo (hi, lo: the planes' bits, `halves` and `halves_lo`), +0 on the padding; v·x as the float
/// model multiplies.
#[inline(always)]
pub(crate) fn sums_2bit(
    row: &[Tap],
    halves: &[[u32; CHUNK]],
    halves_lo: &[[u32; CHUNK]],
    keep: &[[u32; CHUNK]],
) -> [f32; CHUNK] {
    let mut sums = [0f32; CHUNK];
    for &Tap { tap, half, up, v, .. } in row {
        let (x, x_lo, keep, vf) = (&halves[half], &halves_lo[half], &keep[tap], f32::from_bits(v));
        for l in 0..CHUNK {
            let (hi, lo) = (
                (x[l] << up) & 0x8000_0000 != 0,
                (x_lo[l] << up) & 0x8000_0000 != 0,
            );
            let xv = match (hi, lo) {
                (false, false) => 1.0,
                (false, true) => LEVELS[2],
                (true, false) => LEVELS[1],
                (true, true) => 0.0,
            };
            sums[l] += f32::from_bits((vf * xv).to_bits() & keep[l]);
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::kernel::Act;

    /// A conv of the given geometry with nothing but its shape.
    fn conv(h: usize, w: usize, kh: usize, kw: usize, stride: usize, pad: usize) -> Conv {
        let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        Conv {
            c: 1,
            o: 1,
            kh,
            kw,
            stride,
            k: kh * kw,
            h,
            w,
            ho,
            wo,
            weights: Vec::new(),
            scale: Vec::new(),
            shift: Vec::new(),
            correction: None,
            sparse: None,
            inside: Vec::new(),
            act: Act::Sign,
        }
    }

    #[test]
    fn inside_masks_are_the_taps_inside_the_map() {
        for (h, w, kh, kw, stride, pad) in [
            (5, 7, 3, 3, 1, 1),
            (9, 9, 3, 3, 2, 1),
            (12, 11, 3, 3, 2, 0),
            (1, 1, 1, 5, 1, 2), // a kernel wider than map and padding: no column inside for some taps
            (3, 2, 3, 3, 3, 2),
        ] {
            let c = conv(h, w, kh, kw, stride, pad);
            let masks = inside_masks(&c, pad);
            let taps = kh * kw;
            for p in 0..c.ho * c.wo {
                for t in 0..taps {
                    let (y, x) = ((p / c.wo) * stride + t / kw, (p % c.wo) * stride + t % kw);
                    let want = y >= pad && y < h + pad && x >= pad && x < w + pad;
                    let got = masks[(p / CHUNK) * taps + t] >> (p % CHUNK) & 1 == 1;
                    assert_eq!(
                        got, want,
                        "{h}x{w}, {kh}x{kw}, stride {stride}, pad {pad}: p {p}, tap {t}"
                    );
                }
            }
        }
    }
}
