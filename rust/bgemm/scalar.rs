//! Portable microkernels: one u64 word per "vector" (`lanes = 1`), `u64::count_ones`.
//!
//! This path exists on every target and is the reference the SIMD paths are tested against. The
//! register block is `mr × nr` outputs of u64 popcount sums per weight class.

use super::{Family, Kind, Tile};
use crate::isa::Isa;

/// The scalar microkernels.
pub(super) const FAMILY: Family = Family {
    isa: Isa::Scalar,
    lanes: 1,
    nibbles: false,
    geometry,
    tile,
    fill: super::panel::fill_panel,
    dot: None, // one lane: no remainder
};

microkernels! { kernel, 1;
    B1x1 => 4, [1, 2, 3, 4];
    B1x2 => 2, [1, 2, 3, 4];
    B2x1 => 2, [1, 2, 3, 4];
    B2x2 => 2, [1, 2];
}

/// `MR × NR` outputs per row block, A with `PA` planes, B with `PB` planes, over the whole of K.
/// (The tests also run it as an 8-lane family, `NR` = 8 × the AVX-512 kernels' vectors, on their panel layout.)
///
/// # Safety
/// The tile's output rectangle is valid and unshared (see [`Tile`]).
#[inline(always)]
pub(super) unsafe fn kernel<const MR: usize, const NR: usize, const PA: usize, const PB: usize>(
    t: &Tile,
) -> bool {
    if !t.fits(MR, NR, PA, PB, 1) {
        return false;
    }
    let w = t.w;
    for j in 0..t.rows.div_ceil(MR) {
        let (out, rows) = t.block_out(j, MR);
        let mut acc = [[[0u64; NR]; MR]; 3];
        // `fits` checked every A row holds >= w words and the panel >= w·PB·NR words.
        let a: [[&[u64]; MR]; PA] =
            std::array::from_fn(|pa| std::array::from_fn(|i| &t.a[pa][t.row(j, MR, i) * w..][..w]));
        for (p, bw) in t.b[..w * PB * NR].chunks_exact(PB * NR).enumerate() {
            for i in 0..MR {
                for pa in 0..PA {
                    // SAFETY: p < w (there are exactly w chunks) and a[pa][i] has length w.
                    let x = unsafe { *a[pa][i].get_unchecked(p) };
                    for pb in 0..PB {
                        let e = (PA - 1 - pa) + (PB - 1 - pb);
                        for v in 0..NR {
                            acc[e][i][v] += u64::from((x ^ bw[pb * NR + v]).count_ones());
                        }
                    }
                }
            }
        }
        for i in 0..rows {
            for v in 0..NR.min(t.cols) {
                let s = acc[0][i][v] + (acc[1][i][v] << 1) + (acc[2][i][v] << 2);
                // |result| <= weight_sum·K <= i32::MAX (checked by the driver), so the cast is exact.
                let r = t.kconst - 2 * s as i64;
                // SAFETY: i < the block's rows and v < cols: inside the tile's output rectangle
                // (caller's contract).
                unsafe { *out.add(i * t.ld + v) = r as i32 };
            }
        }
    }
    true
}
