//! AVX-512 microkernels: `vpopcntq` (AVX-512 VPOPCNTDQ) on 8 words per zmm register.
//!
//! Per word `p` of K the kernel loads `NR` zmm vectors per B plane (word `p` of 8·NR neighbouring
//! columns, contiguous in the packed panel), broadcasts word `p` of each of the `MR` A rows per A plane,
//! and for every (row, vector, plane pair) does XOR + VPOPCNTQ + VPADDQ into a 64-bit-lane accumulator:
//! 3 vector ops per 512 binary MACs, the whole `MR × NR × classes` block of accumulators living in
//! registers over the whole of K. Each accumulator lane is one output element, so there is no
//! horizontal reduction: two accumulators of a row are narrowed into one vector of 16 int32 (VPERMT2D)
//! that becomes `kconst − 2·S` and is stored whole, or masked past N. The kernel loops over the
//! tile's row blocks itself: one call per B panel sweep.

use std::arch::x86_64::*;

use super::dot::DotTile;
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
    dot: Some(dot),
};

// `(mr, nr_max)`: accumulators `mr · nr · classes` stay at 24 or fewer of the 32 zmm registers. 1x1 takes 5
// rows: 25 output pixels (the last paper shape channels-last) are 5 whole blocks.
microkernels! { kernel, 1;
    B1x1 => 5, [1, 2, 3, 4];
    B1x2 => 4, [1, 2, 3];
    B2x1 => 4, [1, 2, 3];
    B2x2 => 4, [1, 2];
}

/// `MR × 8·NR` outputs per row block, A with `PA` planes, B with `PB` planes, over the whole of K.
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
    let kc = _mm512_set1_epi32(t.kconst as i32); // kconst <= i32::MAX (the driver's K limit)
    let even_dwords = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for j in 0..t.rows.div_ceil(MR) {
        let (out, rows) = t.block_out(j, MR);
        let mut acc = [[[zero; NR]; MR]; 3];
        // row i of the block: w words at t.row(j, MR, i)·w of each plane (`fits`: rows·w words)
        let mut ap: [[*const u64; MR]; PA] =
            std::array::from_fn(|pa| std::array::from_fn(|i| t.a[pa][t.row(j, MR, i) * w..].as_ptr()));
        let mut bp = t.b.as_ptr();
        // One word of K; the first sets the accumulators instead of adding to them (w >= 1: k >= 1),
        // which saves one vector op in 3 on that word, 4 % of the work at K = 576.
        let mut step = |first: bool| {
            let mut bv = [[zero; NR]; PB];
            for (pb, vecs) in bv.iter_mut().enumerate() {
                for (v, vec) in vecs.iter_mut().enumerate() {
                    // SAFETY: at word p, bp = b + p·PB·NR·8 and this reads words
                    // [(pb·NR + v)·8, +8) past it, all < (p + 1)·PB·NR·8 <= w·PB·NR·8 <= b.len() (`fits`).
                    *vec = unsafe { _mm512_loadu_si512(bp.add((pb * NR + v) * LANES).cast()) };
                }
            }
            for i in 0..MR {
                for pa in 0..PA {
                    // SAFETY: at word p, ap[pa][i] points p words into a row of w words.
                    let x = _mm512_set1_epi64(unsafe { *ap[pa][i] } as i64);
                    for pb in 0..PB {
                        let e = (PA - 1 - pa) + (PB - 1 - pb);
                        // the pair's class is set by its first pair in this order (pa, then pb):
                        // e = 1 of 2x2 has two, (0, 1) and then (1, 0)
                        let set = first && (pa == 0 || pb == PB - 1);
                        for v in 0..NR {
                            let d = _mm512_popcnt_epi64(_mm512_xor_si512(x, bv[pb][v]));
                            acc[e][i][v] = if set { d } else { _mm512_add_epi64(acc[e][i][v], d) };
                        }
                    }
                    // SAFETY: stays within (or one past the end of) the row slice: at most w increments.
                    ap[pa][i] = unsafe { ap[pa][i].add(1) };
                }
            }
            // SAFETY: at most w increments of PB·NR·8 words: within or one past the end of the panel.
            bp = unsafe { bp.add(PB * NR * LANES) };
        };
        step(true);
        for _ in 1..w {
            step(false);
        }
        // Per row, two accumulators' sums S are narrowed into one vector of 16 int32 (their low
        // halves, exact modulo 2^32), which then becomes kconst − 2·S in wrapping int32 arithmetic:
        // exact, as every result fits int32. One full or masked store per 16 columns.
        for i in 0..MR {
            if i >= rows {
                break; // (a constant-trip loop, so the accumulators keep their registers)
            }
            let sum = |v: usize| weighted([acc[0][i][v], acc[1][i][v], acc[2][i][v]], PA + PB - 1);
            for v in (0..NR).step_by(2) {
                let c0 = v * LANES;
                if c0 >= t.cols {
                    break;
                }
                let high = if v + 1 < NR { sum(v + 1) } else { zero };
                let s = _mm512_permutex2var_epi32(sum(v), even_dwords, high);
                let r = _mm512_sub_epi32(kc, _mm512_slli_epi32::<1>(s));
                let valid = (t.cols - c0).min(2 * LANES);
                let mask = (0xFFFFu32 >> (2 * LANES - valid)) as __mmask16;
                // SAFETY: the masked store writes only lanes c0 .. c0 + valid <= cols of row i of
                // the block's rows, inside the tile's output rectangle (caller's contract).
                unsafe { _mm512_mask_storeu_epi32(out.add(i * t.ld + c0).cast(), mask, r) };
            }
        }
    }
    true
}

/// `S = c[0] + 2·c[1] + 4·c[2]` of a product with `classes` weight classes (1 to 3; the ones past it
/// are not read): the popcount sums, each class counted at its weight.
#[inline]
#[target_feature(enable = "avx512f")]
fn weighted(c: [__m512i; 3], classes: usize) -> __m512i {
    let mut s = c[0];
    if classes > 1 {
        s = _mm512_add_epi64(s, _mm512_slli_epi64::<1>(c[1]));
    }
    if classes > 2 {
        s = _mm512_add_epi64(s, _mm512_slli_epi64::<2>(c[2]));
    }
    s
}

/// [`super::dot::Dot`] on zmm vectors: 8 consecutive words of an A row and of a B column per load
/// (the last load masked), XOR + VPOPCNTQ + VPADDQ per plane pair into one vector per weight class,
/// and one horizontal sum per output.
///
/// # Safety
/// The CPU has AVX-512F and VPOPCNTDQ; the tile's output is valid as documented on [`DotTile`].
unsafe fn dot(kind: Kind, t: &DotTile) -> bool {
    // SAFETY (all arms): forwarded from the caller.
    unsafe {
        match kind {
            Kind::B1x1 => dot_kernel::<1, 1>(t),
            Kind::B1x2 => dot_kernel::<1, 2>(t),
            Kind::B2x1 => dot_kernel::<2, 1>(t),
            Kind::B2x2 => dot_kernel::<2, 2>(t),
        }
    }
}

/// Rows in groups of [`DOT_ROWS`] per column: the column's vectors are loaded once per group, and
/// the group's sums are independent chains.
///
/// # Safety
/// As for [`dot`].
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn dot_kernel<const PA: usize, const PB: usize>(t: &DotTile) -> bool {
    if !t.fits(PA, PB) {
        return false;
    }
    let w = t.w;
    let (full, tail) = (w / LANES, w % LANES);
    let tail_mask = (0xFFu32 >> (LANES - tail.max(1))) as __mmask8;
    let zero = _mm512_setzero_si512();
    for j in t.cols.clone() {
        for i0 in t.rows.clone().step_by(DOT_ROWS) {
            // rows past the tile repeat its first (computed, not stored)
            let row = |r: usize| if i0 + r < t.rows.end { i0 + r } else { i0 };
            let mut acc = [[zero; 3]; DOT_ROWS];
            // One step: 8 words (fewer in the masked tail) at word `p0` of every row and the column.
            let mut step = |p0: usize, mask: __mmask8| {
                for pb in 0..PB {
                    // SAFETY: `fits`: plane pb of B holds cols.end·w words, and j < cols.end; the
                    // mask keeps words p0 .. min(p0 + 8, w): indices below (j + 1)·w.
                    let bv =
                        unsafe { _mm512_maskz_loadu_epi64(mask, t.b[pb].as_ptr().add(j * w + p0).cast()) };
                    for (r, sums) in acc.iter_mut().enumerate() {
                        for pa in 0..PA {
                            // SAFETY: as for B, with row(r) < rows.end.
                            let av = unsafe {
                                _mm512_maskz_loadu_epi64(mask, t.a[pa].as_ptr().add(row(r) * w + p0).cast())
                            };
                            let e = (PA - 1 - pa) + (PB - 1 - pb);
                            let d = _mm512_popcnt_epi64(_mm512_xor_si512(av, bv));
                            sums[e] = _mm512_add_epi64(sums[e], d);
                        }
                    }
                }
            };
            for s in 0..full {
                step(s * LANES, 0xFF);
            }
            if tail > 0 {
                step(full * LANES, tail_mask);
            }
            for (r, sums) in acc.iter().enumerate() {
                if i0 + r >= t.rows.end {
                    break;
                }
                let v = t.kconst - 2 * _mm512_reduce_add_epi64(weighted(*sums, PA + PB - 1));
                // SAFETY: row i0 + r in rows, j in cols: inside the tile's output (caller's contract);
                // |v| <= weight_sum·K <= i32::MAX.
                unsafe { *t.out.get().add((i0 + r) * t.ld + j) = v as i32 };
            }
        }
    }
    true
}

/// Rows per group of [`dot_kernel`].
const DOT_ROWS: usize = 4;

/// [`panel::fill_panel`] by 8 × 8 transposes: 8 words of 8 neighbouring columns (one load per
/// column) become 8 vectors, word `p` of the 8 columns each, stored where the microkernel loads
/// them. Every word of the panel is written (columns past B are loaded as 0), so the panel is not
/// cleared first. Nibble panels (and a `dst` shorter than the panel, a caller bug, which it refuses)
/// go to the portable fill.
///
/// # Safety
/// The CPU has AVX-512F.
unsafe fn fill(
    planes: &[&[u64]],
    w: usize,
    c0: usize,
    cols: usize,
    nc: usize,
    split: bool,
    dst: &mut [u64],
) -> bool {
    let short = dst.len() < panel_len(w, planes.len(), nc);
    if split || short || !nc.is_multiple_of(LANES) || w == 0 {
        return panel::fill_panel(planes, w, c0, cols, nc, split, dst);
    }
    // SAFETY: forwarded from the caller.
    unsafe { transpose_panel(planes, w, c0, cols, nc, dst) };
    true
}

#[target_feature(enable = "avx512f")]
unsafe fn transpose_panel(planes: &[&[u64]], w: usize, c0: usize, cols: usize, nc: usize, dst: &mut [u64]) {
    let np = planes.len();
    let stride = np * nc; // words between word p and word p + 1 of one column
    for (pi, plane) in planes.iter().enumerate() {
        // the columns this plane has (columns past its end, a caller bug, stay zero)
        let have = (plane.len() / w).saturating_sub(c0).min(cols.min(nc));
        for g in 0..nc / LANES {
            let valid = have.saturating_sub(g * LANES).min(LANES);
            let first = (c0 + g * LANES) * w; // word 0 of the group's first column
            for p0 in (0..w).step_by(LANES) {
                let words = (w - p0).min(LANES);
                let mask = (0xFFu32 >> (LANES - words)) as __mmask8;
                // row j: words p0 .. p0 + 8 of column j of the group (0 past `valid` or w). Rows
                // past `valid` load nothing (mask 0) from the plane's start: no branch per row.
                let rows: [__m512i; LANES] = std::array::from_fn(|j| {
                    let (at, m) = if j < valid {
                        (first + j * w + p0, mask)
                    } else {
                        (0, 0)
                    };
                    // SAFETY: for j < valid, column c0 + g·8 + j < c0 + have <= plane.len() / w and the
                    // mask keeps the words below w: indices below (c0 + g·8 + j + 1)·w <= plane.len();
                    // otherwise no word is read.
                    unsafe { _mm512_maskz_loadu_epi64(m, plane.as_ptr().add(at).cast()) }
                });
                let t = transpose(rows);
                let at = p0 * stride + pi * nc + g * LANES;
                for (i, v) in t.iter().enumerate() {
                    if i < words {
                        // SAFETY: (p0 + i)·stride + pi·nc + g·8 + 8 <= (w − 1)·stride + np·nc
                        // = panel_len <= dst.len().
                        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(at + i * stride).cast(), *v) };
                    }
                }
            }
        }
    }
}

/// The 8 × 8 transpose of 64-bit words: `out[i]` holds word i of every row, row j in lane j.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(r: [__m512i; LANES]) -> [__m512i; LANES] {
    // pairs: u[2k] = (r[2k][0], r[2k+1][0], r[2k][2], r[2k+1][2], …), u[2k+1] the odd words
    let u: [__m512i; LANES] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // quads: rows 4k..4k+4 of words (e, e + 4) for the even-pair / odd-pair combinations
    let lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    let hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    let quad = |a: __m512i, b: __m512i, idx: __m512i| _mm512_permutex2var_epi64(a, idx, b);
    // v[4k + 0]: words 0 and 4; v[4k + 1]: 2 and 6; v[4k + 2]: 1 and 5; v[4k + 3]: 3 and 7
    let v: [__m512i; LANES] = std::array::from_fn(|i| {
        let k = i / 4;
        let (even, odd) = (u[4 * k], u[4 * k + 2]); // rows 4k, 4k+1 | 4k+2, 4k+3, even words
        let (even1, odd1) = (u[4 * k + 1], u[4 * k + 3]); // odd words
        match i % 4 {
            0 => quad(even, odd, lo),
            1 => quad(even, odd, hi),
            2 => quad(even1, odd1, lo),
            _ => quad(even1, odd1, hi),
        }
    });
    // halves: rows 0..4 from v[0..4], rows 4..8 from v[4..8]
    let low = |a: __m512i, b: __m512i| _mm512_shuffle_i64x2::<0x44>(a, b);
    let high = |a: __m512i, b: __m512i| _mm512_shuffle_i64x2::<0xEE>(a, b);
    [
        low(v[0], v[4]),
        low(v[2], v[6]),
        low(v[1], v[5]),
        low(v[3], v[7]),
        high(v[0], v[4]),
        high(v[2], v[6]),
        high(v[1], v[5]),
        high(v[3], v[7]),
    ]
}
