//! AVX2 microkernels: 4 words per ymm register, popcount by a `vpshufb` table lookup on nibble words.
//!
//! AVX2 has no vector popcount. The driver hands this family its operands as nibble words
//! (`panel::nibbles`: each word split into its low and its high nibbles, so every byte is below 16).
//! The XOR of two nibble words is again one, and a single VPSHUFB into a 16-entry popcount table
//! gives the popcount of each of its bytes. Per nibble word and (row, vector, plane pair) that is
//! XOR + VPSHUFB + VPADDB into a byte accumulator: 6 vector ops per original word against 8 for
//! splitting in the loop (AND, shift, AND, two lookups, two adds), and no shifts, which share the
//! shuffle ports. A byte gains at most 4 per nibble word and pair, so after at most 63 nibble
//! words (31 when two pairs share a class, as the middle class of 2x2 does) the byte accumulators
//! are folded into 64-bit lanes with VPSADBW against zero and cleared. As in the AVX-512 kernel
//! each 64-bit lane is one output element.

use std::arch::x86_64::*;

use super::{Family, Kind, Tile};
use crate::isa::Isa;

/// 64-bit words per ymm register.
const LANES: usize = 4;

/// The AVX2 microkernels.
pub(super) const FAMILY: Family = Family {
    isa: Isa::Avx2,
    lanes: LANES,
    nibbles: true,
    geometry,
    tile,
    fill: super::panel::fill_panel,
    dot: None,
};

// `(mr, nr_max)`: byte accumulators, B vectors, the table and a temporary fit the 16 ymm registers
// (5×2 for 1x1 and 3×1 for 2x2 measured within noise of these).
microkernels! { kernel, 1;
    B1x1 => 4, [1, 2];
    B1x2 => 2, [1, 2];
    B2x1 => 2, [1, 2];
    B2x2 => 2, [1];
}

/// `MR × 4·NR` outputs per row block, A with `PA` planes, B with `PB` planes, over the whole of K.
///
/// # Safety
/// As for [`tile`].
#[target_feature(enable = "avx2")]
unsafe fn kernel<const MR: usize, const NR: usize, const PA: usize, const PB: usize>(t: &Tile) -> bool {
    if !t.fits(MR, NR, PA, PB, LANES) {
        return false;
    }
    let w = t.w; // in nibble words
                 // Nibble words per byte-accumulator block: 63·4 = 252 and 31·8 = 248 stay below 256.
    let block: usize = if PA == 2 && PB == 2 { 31 } else { 63 };
    #[rustfmt::skip]
    let lut = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
    );
    let zero = _mm256_setzero_si256();
    let kc = _mm256_set1_epi64x(t.kconst);
    let low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
    for j in 0..t.rows.div_ceil(MR) {
        let (out, rows) = t.block_out(j, MR);
        let mut tot = [[[zero; NR]; MR]; 3];
        // row i of the block: w words at t.row(j, MR, i)·w of each plane (`fits`: rows·w words)
        let mut ap: [[*const u64; MR]; PA] =
            std::array::from_fn(|pa| std::array::from_fn(|i| t.a[pa][t.row(j, MR, i) * w..].as_ptr()));
        let mut bp = t.b.as_ptr();
        let mut done = 0;
        while done < w {
            let len = (w - done).min(block);
            let mut accb = [[[zero; NR]; MR]; 3];
            for _ in 0..len {
                let mut bv = [[zero; NR]; PB];
                for (pb, vecs) in bv.iter_mut().enumerate() {
                    for (v, vec) in vecs.iter_mut().enumerate() {
                        // SAFETY: at word p, bp = b + p·PB·NR·4 and this reads words
                        // [(pb·NR + v)·4, +4) past it, all < (p + 1)·PB·NR·4 <= b.len() (`fits`).
                        *vec = unsafe { _mm256_loadu_si256(bp.add((pb * NR + v) * LANES).cast()) };
                    }
                }
                for i in 0..MR {
                    for pa in 0..PA {
                        // SAFETY: at word p, ap[pa][i] points p words into a row of w words.
                        let x = _mm256_set1_epi64x(unsafe { *ap[pa][i] } as i64);
                        for pb in 0..PB {
                            let e = (PA - 1 - pa) + (PB - 1 - pb);
                            for v in 0..NR {
                                // Every byte of x ^ b is below 16, so VPSHUFB looks it up directly.
                                let pop = _mm256_shuffle_epi8(lut, _mm256_xor_si256(x, bv[pb][v]));
                                accb[e][i][v] = _mm256_add_epi8(accb[e][i][v], pop);
                            }
                        }
                        // SAFETY: at most w increments: within or one past the end of the row slice.
                        ap[pa][i] = unsafe { ap[pa][i].add(1) };
                    }
                }
                // SAFETY: at most w increments of PB·NR·4 words: within or one past the end of the panel.
                bp = unsafe { bp.add(PB * NR * LANES) };
            }
            for e in 0..(PA + PB - 1) {
                for i in 0..MR {
                    for v in 0..NR {
                        tot[e][i][v] = _mm256_add_epi64(tot[e][i][v], _mm256_sad_epu8(accb[e][i][v], zero));
                    }
                }
            }
            done += len;
        }
        for i in 0..MR {
            if i >= rows {
                break;
            }
            for v in 0..NR {
                let c0 = v * LANES;
                if c0 >= t.cols {
                    break;
                }
                let mut s = tot[0][i][v];
                if PA + PB > 2 {
                    s = _mm256_add_epi64(s, _mm256_slli_epi64::<1>(tot[1][i][v]));
                }
                if PA + PB > 3 {
                    s = _mm256_add_epi64(s, _mm256_slli_epi64::<2>(tot[2][i][v]));
                }
                let r = _mm256_sub_epi64(kc, _mm256_slli_epi64::<1>(s));
                // |result| <= i32::MAX, so each 64-bit lane's low half is the int32 result: gather the
                // four low halves into one xmm and store the columns that exist.
                let r32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(r, low_halves));
                let valid = (t.cols - c0).min(LANES);
                // SAFETY: row i < rows and columns c0 .. c0 + valid <= cols: inside the tile's output
                // rectangle (caller's contract); the masked store writes no lane at or past `valid`.
                unsafe {
                    let dst = out.add(i * t.ld + c0);
                    if valid == LANES {
                        _mm_storeu_si128(dst.cast(), r32);
                    } else {
                        let mask = _mm_cmpgt_epi32(_mm_set1_epi32(valid as i32), _mm_setr_epi32(0, 1, 2, 3));
                        _mm_maskstore_epi32(dst, mask, r32);
                    }
                }
            }
        }
    }
    true
}
