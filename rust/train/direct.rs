//! Stride-1 convolution of one image straight from its zero-padded copy, without im2col.
//!
//! The padded image `xp` (C planes of Hp×Wp, `Plan::plane` floats apart) is read as flat rows: output
//! position q = y·Wp + t (t < Wp) of kernel tap (i, j) reads `xp[c·plane + q + i·Wp + j]`. So every
//! tap is one contiguous run of the plane, and the output is computed on the padded grid of
//! L = Ho·Wp positions; the columns t ≥ Wo (kw − 1 per row, junk) are dropped when the result is copied
//! out, and the grid is rounded up to whole blocks of `QB` positions, reading a zero margin past the
//! last plane.
//!
//! * forward: out[o, q] = Σ_{c,i,j} w[o, c, i, j] · xp[c, q + i·Wp + j], by a microkernel that holds
//!   an `OB`×`QB` block of out in registers (`OB` output channels × `QB` positions);
//! * the input gradient of a stride-1 conv is this same forward on g with the kernel turned by 180°
//!   and its channel axes swapped, padded by kh − 1 − padding (`conv.rs` does that);
//! * weight gradient: gw[o, c, i, j] = Σ_images Σ_q gp[o, q] · xp[c, q + i·Wp + j], g placed on
//!   the same grid (`gp`, zero at the junk positions), by a microkernel that holds `OB` channels × 3
//!   taps j of one (c, i) and runs down the whole grid of every image of a group ([`Group`]).
//!
//! Each has a portable routine and an AVX2 + FMA one (`x86`), picked as `isa.rs` describes; the
//! AVX-512 path has its own: the forward with three 16-float vectors per channel row (twelve
//! accumulators, the FMA units' latency covered), the weight gradient four input channels at once. All
//! add in the same order (c, i, j for the forward, one fused multiply-add each; q for the weight
//! gradient, per 8-float lane, lanes added last), so every path gives the same bits.

use crate::isa::{Isa, PerIsa};

/// Output channels per microkernel block.
pub const OB: usize = 4;
/// Output positions per forward block: two vectors of 8 floats (with three, the 4×3 accumulators, the
/// three input vectors and the broadcast weight need 16 ymm registers and one accumulator spilled to the
/// stack every step).
pub const QB: usize = 16;
/// Positions per step of the weight-gradient microkernel (one vector of 8 floats).
const GQ: usize = 8;
/// Taps j per weight-gradient block.
pub const TJ: usize = 3;

/// The geometry of a stride-1 conv of one image on the padded grid.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub h: usize,
    pub w: usize,
    pub padding: usize,
    /// padded height and width
    pub hp: usize,
    pub wp: usize,
    pub ho: usize,
    pub wo: usize,
    /// floats between two channel planes of `xp` (Hp·Wp)
    pub plane: usize,
    /// grid positions computed: Ho·Wp rounded up to whole blocks of QB
    pub grid: usize,
}

impl Plan {
    /// A stride-1 conv whose kernel fits the padded input (the caller checked the window).
    pub fn new(c: usize, h: usize, w: usize, kh: usize, kw: usize, padding: usize) -> Plan {
        let (hp, wp) = (h + 2 * padding, w + 2 * padding);
        let (ho, wo) = (hp + 1 - kh, wp + 1 - kw);
        Plan {
            c,
            kh,
            kw,
            h,
            w,
            padding,
            hp,
            wp,
            ho,
            wo,
            plane: hp * wp,
            grid: (ho * wp).div_ceil(QB) * QB,
        }
    }

    /// Floats of the padded image buffer: the planes plus a zero margin that the junk positions of
    /// the last blocks read (up to grid − 1 + (kh − 1)·Wp + kw − 1 + TJ past the last plane's start).
    pub fn padded_len(&self) -> usize {
        self.c * self.plane + self.grid + self.kh * self.wp + self.kw + TJ
    }
}

/// Write image `x` (C×H×W) into `xp` zero-padded (`xp.len() == plan.padded_len()`).
pub fn pad_image(plan: &Plan, x: &[f32], xp: &mut [f32]) {
    xp.fill(0.0);
    for c in 0..plan.c {
        for y in 0..plan.h {
            let from = &x[(c * plan.h + y) * plan.w..][..plan.w];
            let at = c * plan.plane + (y + plan.padding) * plan.wp + plan.padding;
            xp[at..at + plan.w].copy_from_slice(from);
        }
    }
}

/// The weights (O×C×kh×kw) in microkernel order: blocks of OB output channels, each (c, i, j, OB)
/// with the OB channels innermost; channels past O are zero.
pub fn pack_weights(w: &[f32], o: usize, taps: usize) -> Vec<f32> {
    let blocks = o.div_ceil(OB);
    let mut packed = vec![0.0; blocks * taps * OB];
    for oc in 0..o {
        let (b, ob) = (oc / OB, oc % OB);
        for t in 0..taps {
            packed[(b * taps + t) * OB + ob] = w[oc * taps + t];
        }
    }
    packed
}

/// See [`Family::forward`].
pub type ForwardFn = unsafe fn(&Plan, &[f32], &[f32], &mut [f32]);
/// Input channels per weight-gradient call (the AVX-512 routine runs four at once).
pub const CP: usize = 4;
/// A weight-gradient block: taps (jj < TJ) of output channels (ob < OB) for input channels k < CP.
pub type TapBlock = [[[f32; TJ]; OB]; CP];
/// See [`Family::weight_taps`].
pub type WeightTapsFn = unsafe fn(&Plan, &Group, usize, usize, usize, usize, &mut TapBlock);

/// The operands of the weight gradient for a group of images: image k's padded copy at
/// `xp[k·padded_len ..]`, and rows ob < OB of its g on the grid at `gp[k·g_image + g_block + ob·g_row ..]`
/// (each row read `grid` floats long, zero at the junk positions).
/// The microkernel runs down every image's grid before adding its lanes, so that short grids (8×8
/// maps) still amortise the final sums.
pub struct Group<'a> {
    pub xp: &'a [f32],
    pub gp: &'a [f32],
    pub images: usize,
    pub g_image: usize,
    pub g_block: usize,
    /// floats between two output channels' g rows (`grid` when g was placed on the grid; a padded
    /// plane when the rows are read from g's zero-padded copy, see `conv::backward`)
    pub g_row: usize,
}

impl Group<'_> {
    /// Where image n's row i of channel c starts in `xp`, at column j0, and its g block in `gp`.
    fn offsets(&self, plan: &Plan, n: usize, c: usize, i: usize, j0: usize) -> (usize, usize) {
        (
            n * plan.padded_len() + c * plan.plane + i * plan.wp + j0,
            n * self.g_image + self.g_block,
        )
    }
}

/// One ISA's microkernels.
#[derive(Clone, Copy)]
pub struct Family {
    /// One channel block: rows `OB` of `out` (each `plan.grid` long) at every grid position, from
    /// `wpk` (one channel block of [`pack_weights`]).
    ///
    /// # Safety
    /// The CPU runs the family's ISA; `xp.len() == plan.padded_len()`, `wpk.len() >= plan.c·kh·kw·OB`,
    /// `out.len() >= OB·plan.grid`.
    pub forward: ForwardFn,
    /// `weight_taps(plan, group, c0, count, i, j0, acc)`: for the `count` (1 to [`CP`]) input
    /// channels c = c0 + k, acc[k][ob][jj] += Σ_n Σ_{q < grid} g_n[ob, q] · xp_n[c·plane + i·Wp + j0 +
    /// jj + q] over the group's images n ([`Group`]).
    ///
    /// # Safety
    /// The CPU runs the family's ISA; `xp.len() >= images·padded_len`, `gp.len() >= (images − 1)·g_image
    /// + g_block + (OB − 1)·g_row + grid`, `c0 + count <= plan.c`, `1 <= count <= CP`, `i < plan.kh`,
    /// `j0 < plan.kw`.
    pub weight_taps: WeightTapsFn,
}

const PORTABLE: Family = Family {
    forward: forward_portable,
    weight_taps: each_channel_portable,
};

/// The microkernels of `isa`, or None if this build or CPU lacks it. The AVX2 and AVX-512 routines also
/// need FMA (the AVX-512 weight gradient falls back to the AVX2 one); without it they run the portable ones.
pub fn family(isa: Isa) -> Option<Family> {
    #[cfg(target_arch = "x86_64")]
    let avx2 = if std::arch::is_x86_feature_detected!("fma") {
        x86::AVX2
    } else {
        PORTABLE
    };
    #[cfg(target_arch = "x86_64")]
    let avx512 = if std::arch::is_x86_feature_detected!("fma") {
        x86::AVX512
    } else {
        PORTABLE
    };
    PerIsa {
        scalar: PORTABLE,
        #[cfg(target_arch = "x86_64")]
        avx2,
        #[cfg(target_arch = "x86_64")]
        avx512,
    }
    .pick(isa)
}

/// # Safety
/// None beyond the slice bounds (checked); `unsafe` only to share the [`Family`] signature.
unsafe fn forward_portable(plan: &Plan, xp: &[f32], wpk: &[f32], out: &mut [f32]) {
    for q0 in (0..plan.grid).step_by(QB) {
        let mut acc = [[0.0f32; QB]; OB];
        let mut t = 0;
        for c in 0..plan.c {
            for i in 0..plan.kh {
                for j in 0..plan.kw {
                    let x = &xp[c * plan.plane + q0 + i * plan.wp + j..][..QB];
                    let wv = &wpk[t * OB..][..OB];
                    for ob in 0..OB {
                        for v in 0..QB {
                            acc[ob][v] = wv[ob].mul_add(x[v], acc[ob][v]);
                        }
                    }
                    t += 1;
                }
            }
        }
        for ob in 0..OB {
            out[ob * plan.grid + q0..][..QB].copy_from_slice(&acc[ob]);
        }
    }
}

/// # Safety
/// None beyond the slice bounds (checked); `unsafe` only to share the [`Family`] signature.
unsafe fn each_channel_portable(
    plan: &Plan,
    group: &Group,
    c0: usize,
    count: usize,
    i: usize,
    j0: usize,
    acc: &mut TapBlock,
) {
    for (k, block) in acc.iter_mut().enumerate().take(count) {
        weight_taps_portable(plan, group, c0 + k, i, j0, block);
    }
}

/// One input channel of [`Family::weight_taps`].
fn weight_taps_portable(
    plan: &Plan,
    group: &Group,
    c: usize,
    i: usize,
    j0: usize,
    acc: &mut [[f32; TJ]; OB],
) {
    // per-lane partial sums, added last, as the vector routine does
    let mut lanes = [[[0.0f32; GQ]; TJ]; OB];
    for k in 0..group.images {
        let (base, g_base) = group.offsets(plan, k, c, i, j0);
        for q in (0..plan.grid).step_by(GQ) {
            for ob in 0..OB {
                let g = &group.gp[g_base + ob * group.g_row + q..][..GQ];
                for jj in 0..TJ {
                    let x = &group.xp[base + jj + q..][..GQ];
                    for v in 0..GQ {
                        lanes[ob][jj][v] = g[v].mul_add(x[v], lanes[ob][jj][v]);
                    }
                }
            }
        }
    }
    for ob in 0..OB {
        for jj in 0..TJ {
            acc[ob][jj] += lane_sum(&lanes[ob][jj]);
        }
    }
}

/// The 8 lanes added pairwise in the order the AVX2 routine adds them: (0+4, 1+5, 2+6, 3+7), then
/// (a+c, b+d), then the two.
fn lane_sum(l: &[f32; GQ]) -> f32 {
    let (a, b, c, d) = (l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]);
    let (e, f) = (a + c, b + d);
    e + f
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Family, Group, Plan, TapBlock, GQ, OB, QB, TJ};

    pub(super) const AVX2: Family = Family {
        forward: forward_avx2,
        weight_taps: each_channel_avx2,
    };

    /// The AVX-512 family: its own forward and weight gradient.
    pub(super) const AVX512: Family = Family {
        forward: forward_avx512,
        weight_taps: weight_taps_avx512,
    };

    /// # Safety
    /// See [`Family::forward`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(plan: &Plan, xp: &[f32], wpk: &[f32], out: &mut [f32]) {
        for q0 in (0..plan.grid).step_by(QB) {
            // SAFETY: q0 + QB <= grid (a multiple of QB); the rest is the caller's contract.
            unsafe { forward_block_avx2(plan, xp, wpk, out, q0) };
        }
    }

    /// Positions q0..q0 + QB of one channel block.
    ///
    /// # Safety
    /// As [`Family::forward`], and q0 + QB <= plan.grid: every load lies in `xp` and `wpk`, every
    /// store in `out`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_block_avx2(plan: &Plan, xp: &[f32], wpk: &[f32], out: &mut [f32], q0: usize) {
        let mut acc = [[_mm256_setzero_ps(); QB / 8]; OB];
        let (xp, mut w) = (xp.as_ptr(), wpk.as_ptr());
        for c in 0..plan.c {
            for i in 0..plan.kh {
                // SAFETY: q0 + i·Wp + j + QB − 1 < c·plane + padded margin (Plan::padded_len).
                let row = unsafe { xp.add(c * plan.plane + q0 + i * plan.wp) };
                for j in 0..plan.kw {
                    // SAFETY: as above; w walks wpk's c·kh·kw·OB floats in order.
                    unsafe {
                        let x = [_mm256_loadu_ps(row.add(j)), _mm256_loadu_ps(row.add(j + 8))];
                        for ob in 0..OB {
                            let wv = _mm256_broadcast_ss(&*w.add(ob));
                            for v in 0..QB / 8 {
                                acc[ob][v] = _mm256_fmadd_ps(wv, x[v], acc[ob][v]);
                            }
                        }
                        w = w.add(OB);
                    }
                }
            }
        }
        for ob in 0..OB {
            for v in 0..QB / 8 {
                // SAFETY: (OB − 1)·grid + q0 + QB <= out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(ob * plan.grid + q0 + 8 * v), acc[ob][v]) };
            }
        }
    }

    /// # Safety
    /// See [`Family::forward`].
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_avx512(plan: &Plan, xp: &[f32], wpk: &[f32], out: &mut [f32]) {
        // grid is a multiple of QB = 16: blocks of 48 positions, then one of 32 or 16
        debug_assert!(plan.grid.is_multiple_of(QB), "the grid is whole blocks of QB");
        let mut q0 = 0;
        // SAFETY (all three): q0 + V·16 <= grid; the rest is the caller's contract.
        while q0 + 48 <= plan.grid {
            unsafe { forward_block_avx512::<3>(plan, xp, wpk, out, q0) };
            q0 += 48;
        }
        match plan.grid - q0 {
            32 => unsafe { forward_block_avx512::<2>(plan, xp, wpk, out, q0) },
            16 => unsafe { forward_block_avx512::<1>(plan, xp, wpk, out, q0) },
            _ => {}
        }
    }

    /// Positions q0..q0 + 16·V of one channel block: OB × V accumulators of 16 floats.
    ///
    /// # Safety
    /// As [`Family::forward`], and q0 + 16·V <= plan.grid (so the loads stay in `xp`'s margin, see
    /// [`Plan::padded_len`]): every load lies in `xp` and `wpk`, every store in `out`.
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_block_avx512<const V: usize>(
        plan: &Plan,
        xp: &[f32],
        wpk: &[f32],
        out: &mut [f32],
        q0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; OB];
        let (xp, mut w) = (xp.as_ptr(), wpk.as_ptr());
        for c in 0..plan.c {
            for i in 0..plan.kh {
                // SAFETY: as forward_block_avx2's, with 16·V positions.
                let row = unsafe { xp.add(c * plan.plane + q0 + i * plan.wp) };
                for j in 0..plan.kw {
                    // SAFETY: as above; w walks wpk's c·kh·kw·OB floats in order.
                    unsafe {
                        let x: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(row.add(j + 16 * v)));
                        for ob in 0..OB {
                            let wv = _mm512_set1_ps(*w.add(ob));
                            for v in 0..V {
                                acc[ob][v] = _mm512_fmadd_ps(wv, x[v], acc[ob][v]);
                            }
                        }
                        w = w.add(OB);
                    }
                }
            }
        }
        for ob in 0..OB {
            for v in 0..V {
                // SAFETY: (OB − 1)·grid + q0 + 16·V <= out.len().
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(ob * plan.grid + q0 + 16 * v), acc[ob][v]) };
            }
        }
    }

    /// # Safety
    /// See [`Family::weight_taps`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn each_channel_avx2(
        plan: &Plan,
        group: &Group,
        c0: usize,
        count: usize,
        i: usize,
        j0: usize,
        acc: &mut TapBlock,
    ) {
        for (k, block) in acc.iter_mut().enumerate().take(count) {
            // SAFETY: c0 + k < plan.c; the rest is the caller's contract.
            unsafe { weight_taps_avx2(plan, group, c0 + k, i, j0, block) };
        }
    }

    /// One input channel of [`Family::weight_taps`].
    ///
    /// # Safety
    /// See [`Family::weight_taps`] (with c < plan.c): every load lies in the group's `xp` and `gp`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weight_taps_avx2(
        plan: &Plan,
        group: &Group,
        c: usize,
        i: usize,
        j0: usize,
        acc: &mut [[f32; TJ]; OB],
    ) {
        let mut lanes = [[_mm256_setzero_ps(); TJ]; OB];
        for k in 0..group.images {
            // SAFETY: image k's padded copy starts at k·padded_len; base + TJ − 1 + grid − 1 stays
            // inside it (Plan::padded_len's margin), and its g rows inside gp (the caller's bound).
            let (xo, go) = group.offsets(plan, k, c, i, j0);
            let (x, g) = unsafe { (group.xp.as_ptr().add(xo), group.gp.as_ptr().add(go)) };
            for q in (0..plan.grid).step_by(GQ) {
                // SAFETY: q + 8 <= grid, ob·g_row + grid is inside gp (the caller's bound); x as above.
                unsafe {
                    let xv = [
                        _mm256_loadu_ps(x.add(q)),
                        _mm256_loadu_ps(x.add(q + 1)),
                        _mm256_loadu_ps(x.add(q + 2)),
                    ];
                    for ob in 0..OB {
                        let gv = _mm256_loadu_ps(g.add(ob * group.g_row + q));
                        for jj in 0..TJ {
                            lanes[ob][jj] = _mm256_fmadd_ps(gv, xv[jj], lanes[ob][jj]);
                        }
                    }
                }
            }
        }
        for ob in 0..OB {
            for jj in 0..TJ {
                acc[ob][jj] += lane_sum(lanes[ob][jj]);
            }
        }
    }

    /// Up to [`CP`] input channels: four at once when there are four, else two, the last one alone
    /// by the AVX2 routine.
    ///
    /// # Safety
    /// See [`Family::weight_taps`].
    #[target_feature(enable = "avx512f")]
    unsafe fn weight_taps_avx512(
        plan: &Plan,
        group: &Group,
        c0: usize,
        count: usize,
        i: usize,
        j0: usize,
        acc: &mut TapBlock,
    ) {
        let mut k = 0;
        // SAFETY (all three): c0 + k + channels <= c0 + count <= plan.c; the rest is the caller's
        // contract, and AVX-512F CPUs run AVX2 and FMA.
        if count == 4 {
            unsafe { channels_avx512::<4>(plan, group, c0, i, j0, acc) };
            k = 4;
        }
        if count - k >= 2 {
            unsafe { channels_avx512::<2>(plan, group, c0 + k, i, j0, &mut acc[k..]) };
            k += 2;
        }
        if count > k {
            unsafe { weight_taps_avx2(plan, group, c0 + k, i, j0, &mut acc[k]) };
        }
    }

    /// `CH` input channels at once, two output channels per 16-float vector (ob = 2p in the low
    /// half, 2p + 1 in the high half), so each half holds the AVX2 routine's 8 lanes and adds them in
    /// its order: OB/2 pairs × CH channels × TJ taps accumulators (24 for CH = 4).
    ///
    /// # Safety
    /// See [`Family::weight_taps`] with channels c0..c0 + CH <= plan.c and `acc.len() >= CH`: every
    /// load lies in the group's `xp` and `gp`.
    #[target_feature(enable = "avx512f")]
    unsafe fn channels_avx512<const CH: usize>(
        plan: &Plan,
        group: &Group,
        c0: usize,
        i: usize,
        j0: usize,
        acc: &mut [[[f32; TJ]; OB]],
    ) {
        const PAIRS: usize = OB / 2;
        let mut lanes = [[[_mm512_setzero_ps(); TJ]; CH]; PAIRS];
        for n in 0..group.images {
            // SAFETY: as weight_taps_avx2's, for channels c0..c0 + CH <= plan.c.
            let (xo, go) = group.offsets(plan, n, c0, i, j0);
            let (x, g) = unsafe { (group.xp.as_ptr().add(xo), group.gp.as_ptr().add(go)) };
            for q in (0..plan.grid).step_by(GQ) {
                // SAFETY: q + 8 <= grid; rows ob < OB of g; x + k·plane is channel c0 + k's row.
                unsafe {
                    let gv: [__m512; PAIRS] = std::array::from_fn(|p| {
                        let lo = _mm512_castps256_ps512(_mm256_loadu_ps(g.add(2 * p * group.g_row + q)));
                        let hi = _mm256_loadu_ps(g.add((2 * p + 1) * group.g_row + q));
                        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                            _mm512_castps_pd(lo),
                            _mm256_castps_pd(hi),
                        ))
                    });
                    for k in 0..CH {
                        for jj in 0..TJ {
                            let xs = _mm256_loadu_ps(x.add(k * plan.plane + q + jj));
                            let xv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(xs)));
                            for p in 0..PAIRS {
                                lanes[p][k][jj] = _mm512_fmadd_ps(gv[p], xv, lanes[p][k][jj]);
                            }
                        }
                    }
                }
            }
        }
        for (p, pair) in lanes.iter().enumerate() {
            for (k, taps) in pair.iter().enumerate() {
                for (jj, &v) in taps.iter().enumerate() {
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                    acc[k][2 * p][jj] += lane_sum(_mm512_castps512_ps256(v));
                    acc[k][2 * p + 1][jj] += lane_sum(hi);
                }
            }
        }
    }

    /// [`super::lane_sum`] of a vector: (0+4, 1+5, 2+6, 3+7), then (a+c, b+d), then the two.
    #[target_feature(enable = "avx2")]
    fn lane_sum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps::<1>(quarter, quarter)))
    }
}
