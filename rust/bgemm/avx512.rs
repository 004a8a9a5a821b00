//! AVX-512 microkernels: `vpopcntq` (AVX-512 VPOPCNTDQ) on 8 words per zmm register.
//!
//! Per word `p` of K the kernel loads `NR` zmm vectors per B plane (word `p` of 8·NR neighbouring
//! columns, contiguous in the packed panel), broadcasts word `p` of each of the `MR` A rows per A plane,
//! and for every (row, vector, plane pair) does XOR + VPOPCNTQ + VPADDQ into a 64-bit-lane accumulator:
//! 3 vector ops per 512 binary MACs, the whole `MR × NR × classes` block of accumulators living in
//! registers over the whole of K. Each accumulator lane is one output element, so there is no
//! horizontal reduction: the finished block is `kconst − 2·S`, narrowed to int32 by a masked VPMOVQD
//! store (the mask trims the columns past N).

use std::arch::x86_64::*;

use super::panel::{self, panel_len};
use super::{Family, Kind, Tile};
use crate::isa::Isa;

/// 64-bit words per zmm register.
const LANES: usize = 8;

/// The AVX-512 microkernels.
pub(super) const FAMILY: Family = Family {
    isa: Isa::Avx512,
    lanes: LANES,
    nibbles: false,
    geometry,
    tile,
    fill,
};

// `(mr, nr_max)`: accumulators `mr · nr · classes` stay at 24 of the 32 zmm registers.
microkernels! { kernel, 1;
    B1x1 => 4, [1, 2, 3, 4, 5, 6];
    B1x2 => 4, [1, 2, 3];
    B2x1 => 4, [1, 2, 3];
    B2x2 => 4, [1, 2];
}

/// `MR × 8·NR` outputs, A with `PA` planes, B with `PB` planes, over the whole of K.
///
/// # Safety
/// As for [`tile`].
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn kernel<const MR: usize, const NR: usize, const PA: usize, const PB: usize>(t: &Tile) -> bool {
    if !t.fits(MR, NR, PA, PB, LANES) {
        return false;
    }
    let w = t.w;
    let zero = _mm512_setzero_si512();
    let mut acc = [[[zero; NR]; MR]; 3];
    let mut ap: [[*const u64; MR]; PA] =
        std::array::from_fn(|pa| std::array::from_fn(|i| t.a[pa][i].as_ptr()));
    let mut bp = t.b.as_ptr();
    for _ in 0..w {
        let mut bv = [[zero; NR]; PB];
        for (pb, vecs) in bv.iter_mut().enumerate() {
            for (v, vec) in vecs.iter_mut().enumerate() {
                // SAFETY: at iteration p, bp = b + p·PB·NR·8 and this reads words
                // [(pb·NR + v)·8, +8) past it, all < (p + 1)·PB·NR·8 <= w·PB·NR·8 <= b.len() (`fits`).
                *vec = unsafe { _mm512_loadu_si512(bp.add((pb * NR + v) * LANES).cast()) };
            }
        }
        for i in 0..MR {
            for pa in 0..PA {
                // SAFETY: at iteration p, ap[pa][i] = a[pa][i] + p with p < w <= a[pa][i].len().
                let x = _mm512_set1_epi64(unsafe { *ap[pa][i] } as i64);
                for pb in 0..PB {
                    let e = (PA - 1 - pa) + (PB - 1 - pb);
                    for v in 0..NR {
                        let d = _mm512_xor_si512(x, bv[pb][v]);
                        acc[e][i][v] = _mm512_add_epi64(acc[e][i][v], _mm512_popcnt_epi64(d));
                    }
                }
                // SAFETY: stays within (or one past the end of) the row slice: at most w increments.
                ap[pa][i] = unsafe { ap[pa][i].add(1) };
            }
        }
        // SAFETY: at most w increments of PB·NR·8 words: within or one past the end of the panel.
        bp = unsafe { bp.add(PB * NR * LANES) };
    }
    let kc = _mm512_set1_epi64(t.kconst);
    for i in 0..MR {
        if i >= t.rows {
            break;
        }
        for v in 0..NR {
            let c0 = v * LANES;
            if c0 >= t.cols {
                break;
            }
            let mut s = acc[0][i][v];
            if PA + PB > 2 {
                s = _mm512_add_epi64(s, _mm512_slli_epi64::<1>(acc[1][i][v]));
            }
            if PA + PB > 3 {
                s = _mm512_add_epi64(s, _mm512_slli_epi64::<2>(acc[2][i][v]));
            }
            let r = _mm512_sub_epi64(kc, _mm512_slli_epi64::<1>(s));
            let valid = (t.cols - c0).min(LANES);
            let mask = (0xFFu32 >> (LANES - valid)) as __mmask8;
            // SAFETY: the masked store writes only lanes c0 .. c0 + valid <= cols of row i < rows,
            // inside the tile's output rectangle (caller's contract); |r| <= i32::MAX, so the
            // truncating narrow is exact.
            unsafe { _mm512_mask_cvtepi64_storeu_epi32(t.out.add(i * t.ld + c0).cast(), mask, r) };
        }
    }
    true
}

/// [`panel::fill_panel`] with one 8-column gather per word: a vector of word `p` of 8 neighbouring
/// columns, stored where the microkernel loads it. Every word of the panel is written (columns past B
/// gather nothing and store 0), so the panel is not cleared first. Nibble panels (and a `dst`
/// shorter than the panel, a caller bug) go to the portable fill.
///
/// # Safety
/// The CPU has AVX-512F.
unsafe fn fill(planes: &[&[u64]], w: usize, c0: usize, cols: usize, nc: usize, split: bool, dst: &mut [u64]) {
    let short = dst.len() < panel_len(w, planes.len(), nc);
    if split || short || !nc.is_multiple_of(LANES) || w == 0 || w > i64::MAX as usize / LANES {
        return panel::fill_panel(planes, w, c0, cols, nc, split, dst);
    }
    // SAFETY: forwarded from the caller.
    unsafe { gather_panel(planes, w, c0, cols, nc, dst) }
}

#[target_feature(enable = "avx512f")]
unsafe fn gather_panel(planes: &[&[u64]], w: usize, c0: usize, cols: usize, nc: usize, dst: &mut [u64]) {
    let np = planes.len();
    let stride = np * nc; // words between word p and word p + 1 of one column
    let wi = w as i64;
    let offsets = _mm512_setr_epi64(0, wi, 2 * wi, 3 * wi, 4 * wi, 5 * wi, 6 * wi, 7 * wi);
    for (pi, plane) in planes.iter().enumerate() {
        // the columns this plane has (columns past its end, a caller bug, stay zero)
        let have = (plane.len() / w).saturating_sub(c0).min(cols.min(nc));
        for g in 0..nc / LANES {
            let valid = have.saturating_sub(g * LANES).min(LANES);
            let mask = (0xFFu32 >> (LANES - valid)) as __mmask8; // 0 when valid = 0
            let first = (c0 + g * LANES) * w; // word 0 of the group's first column
            for p in 0..w {
                let v = if valid == 0 {
                    _mm512_setzero_si512()
                } else {
                    // SAFETY: lane l < valid reads word p of column c0 + g·8 + l < c0 + have <=
                    // plane.len() / w, so index first + p + l·w < plane.len(); masked-off lanes read
                    // nothing.
                    unsafe {
                        _mm512_mask_i64gather_epi64::<8>(
                            _mm512_setzero_si512(),
                            mask,
                            offsets,
                            plane.as_ptr().add(first + p).cast(),
                        )
                    }
                };
                // SAFETY: p·stride + pi·nc + g·8 + 8 <= (w − 1)·stride + np·nc = panel_len <= dst.len().
                unsafe {
                    _mm512_storeu_si512(dst.as_mut_ptr().add(p * stride + pi * nc + g * LANES).cast(), v)
                };
            }
        }
    }
}
