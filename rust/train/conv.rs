//! conv2d on float32 NCHW arrays for training: the forward product and both backward products,
//! per image, so that nothing is transposed between layouts.
//!
//! One image at a time: its columns `cols` (K = C·kh·kw rows ordered (channel, i, j) like the
//! weight's, P = Ho·Wo columns) are written into a scratch matrix, then
//!
//! * forward:          y[n]  (O×P) = W (O×K) · cols_n
//! * input gradient:   dcols (K×P) = Wᵀ · g[n], scattered back (col2im, adding) into gx[n]
//! * weight gradient:  gW    (O×K) = Σ_n g[n] · cols_nᵀ
//!
//! Stride-1 convs take the direct path instead (`direct.rs`): no columns, a microkernel reads the
//! zero-padded image itself, and the input gradient is the forward of g with the kernel turned by
//! 180°. [`uses_direct`] says which path a shape takes.
//!
//! Images are split over threads (`threads::run_claimed_with`, one scratch matrix per thread). The
//! weight gradient sums images in fixed groups of [`GROUP`] and then the groups in order, so its bits
//! do not depend on the thread count. The NumPy twin is `Conv2dIm2col` in `apb_ref/ops/conv.py`.

use super::direct::{self, Family, Plan, OB, QB};
use super::matmul::{matmul, View};
use crate::conv::Window;
use crate::isa::Isa;
use crate::threads;
use std::sync::Mutex;

/// Images per partial sum of the weight gradient (fixed, so the result is the same on any number of
/// threads). 16 rather than 8: on 8×8 maps the microkernel's final lane sums then weigh half as much
/// (the AVX-512 weight gradient of ResNet-20's third stage ran 8 % faster, the others level).
pub const GROUP: usize = 16;

/// The sizes of one conv call: input (n, c, h, w), weight (o, c, kh, kw), output (n, o, ho, wo).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub ho: usize,
    pub wo: usize,
    pub win: Window,
}

impl Shape {
    /// Checks the window against the input and that every array size fits `usize`.
    pub fn new(n: usize, c: usize, h: usize, w: usize, o: usize, win: Window) -> Result<Self, String> {
        let (ho, wo) = win.output(h, w)?;
        let s = Shape {
            n,
            c,
            h,
            w,
            o,
            ho,
            wo,
            win,
        };
        let sizes = [
            n.checked_mul(c)
                .and_then(|v| v.checked_mul(h))
                .and_then(|v| v.checked_mul(w)),
            n.checked_mul(o)
                .and_then(|v| v.checked_mul(ho))
                .and_then(|v| v.checked_mul(wo)),
            c.checked_mul(win.kh)
                .and_then(|v| v.checked_mul(win.kw))
                .and_then(|k| k.checked_mul(ho.checked_mul(wo)?)),
            o.checked_mul(c)
                .and_then(|v| v.checked_mul(win.kh))
                .and_then(|v| v.checked_mul(win.kw)),
        ];
        if sizes
            .iter()
            .any(|v| v.is_none_or(|b| b > isize::MAX as usize / 4))
        {
            return Err(format!("the arrays of a conv of shape {s:?} are too large"));
        }
        Ok(s)
    }

    /// C·kh·kw, the rows of one image's columns.
    pub fn k(&self) -> usize {
        self.c * self.win.kh * self.win.kw
    }

    /// Ho·Wo, the output positions of one image.
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn image_in(&self) -> usize {
        self.c * self.h * self.w
    }

    fn image_out(&self) -> usize {
        self.o * self.p()
    }
}

/// The output positions `lo..hi` (of `count`) whose tap `t` lands inside `0..size`.
fn valid_range(win: &Window, count: usize, t: usize, size: usize) -> (usize, usize) {
    let first = win.padding.saturating_sub(t).div_ceil(win.stride);
    let end = (size + win.padding).saturating_sub(t).div_ceil(win.stride);
    (first.min(count), end.clamp(first.min(count), count))
}

/// Visit every (row of cols, output row y) with the input row it reads and the valid output
/// columns `lo..hi` and their first input column; `visit(row, y, src_row, lo, hi, x0)` where
/// `src_row` is None for a padding row.
fn for_each_tap_row(s: &Shape, mut visit: impl FnMut(usize, usize, Option<usize>, usize, usize, usize)) {
    let win = &s.win;
    for ch in 0..s.c {
        for i in 0..win.kh {
            for j in 0..win.kw {
                let row = (ch * win.kh + i) * win.kw + j;
                let (lo, hi) = valid_range(win, s.wo, j, s.w);
                let x0 = (lo * win.stride + j).saturating_sub(win.padding);
                for y in 0..s.ho {
                    let src = win.source(y, i, s.h).map(|sy| ch * s.h + sy);
                    visit(row, y, src, lo, hi, x0);
                }
            }
        }
    }
}

/// cols (K×P) of one image `x` (C×H×W): cols[(ch, i, j), (y, t)] = x[ch, y·s + i − pad, t·s + j − pad],
/// zero where that falls in the padding.
pub fn im2col(s: &Shape, x: &[f32], cols: &mut [f32]) {
    let (p, wo, w, stride) = (s.p(), s.wo, s.w, s.win.stride);
    for_each_tap_row(s, |row, y, src, lo, hi, x0| {
        let out = &mut cols[row * p + y * wo..][..wo];
        let Some(r) = src else {
            out.fill(0.0);
            return;
        };
        if lo >= hi {
            out.fill(0.0);
            return;
        }
        let input = &x[r * w..][..w];
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        if stride == 1 {
            out[lo..hi].copy_from_slice(&input[x0..x0 + (hi - lo)]);
        } else {
            for (v, &value) in out[lo..hi].iter_mut().zip(input[x0..].iter().step_by(stride)) {
                *v = value;
            }
        }
    });
}

/// The adjoint of [`im2col`]: add every column entry back onto the input pixel it was read from.
pub fn col2im_add(s: &Shape, cols: &[f32], gx: &mut [f32]) {
    let (p, wo, w, stride) = (s.p(), s.wo, s.w, s.win.stride);
    for_each_tap_row(s, |row, y, src, lo, hi, x0| {
        let Some(r) = src.filter(|_| lo < hi) else { return };
        let from = &cols[row * p + y * wo..][lo..hi];
        let into = &mut gx[r * w..][..w];
        if stride == 1 {
            for (d, &v) in into[x0..x0 + (hi - lo)].iter_mut().zip(from) {
                *d += v;
            }
        } else {
            for (d, &v) in into[x0..].iter_mut().step_by(stride).zip(from) {
                *d += v;
            }
        }
    });
}

fn check_lens(lens: &[(&str, usize, usize)]) -> Result<(), String> {
    match lens.iter().find(|(_, got, want)| got != want) {
        Some((what, got, want)) => Err(format!("{what} has {got} elements, the shape needs {want}")),
        None => Ok(()),
    }
}

/// y (N×O×Ho×Wo) = conv2d(x (N×C×H×W), w (O×C×kh×kw)).
pub fn forward(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<(), String> {
    let out = s.n * s.image_out();
    check_lens(&[
        ("x", x.len(), s.n * s.image_in()),
        ("w", w.len(), s.o * s.k()),
        ("y", y.len(), out),
    ])?;
    if out == 0 {
        return Ok(());
    }
    if uses_direct(s) {
        return forward_direct(s, x, w, y, family(isa)?, threads);
    }
    let weights = View::rows_major(w, s.o, s.k());
    let scratch = || vec![0.0f32; s.k() * s.p()];
    per_image(
        threads,
        (x, s.image_in()),
        (y, s.image_out()),
        scratch,
        |cols, xi, yi| {
            im2col(s, xi, cols);
            matmul(yi, weights, View::rows_major(cols, s.k(), s.p()), false)
        },
    )
}

/// gx (N×C×H×W), the gradient of conv2d's input, from g (N×O×Ho×Wo) and w.
pub fn backward_input(
    s: &Shape,
    g: &[f32],
    w: &[f32],
    gx: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<(), String> {
    let out = s.n * s.image_in();
    check_lens(&[
        ("g", g.len(), s.n * s.image_out()),
        ("w", w.len(), s.o * s.k()),
        ("gx", gx.len(), out),
    ])?;
    if out == 0 {
        return Ok(());
    }
    if let Some(turned) = turned_around(s) {
        return forward_direct(&turned, g, &turn_weights(s, w), gx, family(isa)?, threads);
    }
    let weights_t = View::rows_major(w, s.o, s.k()).t();
    let scratch = || vec![0.0f32; s.k() * s.p()];
    per_image(
        threads,
        (g, s.image_out()),
        (gx, s.image_in()),
        scratch,
        |dcols, gi, gxi| {
            matmul(dcols, weights_t, View::rows_major(gi, s.o, s.p()), false)?;
            gxi.fill(0.0);
            col2im_add(s, dcols, gxi);
            Ok(())
        },
    )
}

/// gw (O×C×kh×kw), the gradient of conv2d's weight, from x and g.
pub fn backward_weight(
    s: &Shape,
    x: &[f32],
    g: &[f32],
    gw: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<(), String> {
    let (xi, oi) = (s.image_in(), s.image_out());
    check_lens(&[
        ("x", x.len(), s.n * xi),
        ("g", g.len(), s.n * oi),
        ("gw", gw.len(), s.o * s.k()),
    ])?;
    gw.fill(0.0);
    if s.n == 0 || gw.is_empty() {
        return Ok(());
    }
    if uses_direct(s) {
        return backward_weight_direct(s, x, g, gw, family(isa)?, threads);
    }
    let scratch = || vec![0.0f32; s.k() * s.p()];
    per_group(s, gw, threads, scratch, |cols, images, sum| {
        let first = images.start;
        for n in images {
            im2col(s, &x[n * xi..][..xi], cols);
            let gn = View::rows_major(&g[n * oi..][..oi], s.o, s.p());
            matmul(sum, gn, View::rows_major(cols, s.k(), s.p()).t(), n > first)?;
        }
        Ok(())
    })
}

/// gx and gw together, bit for bit [`backward_input`] and [`backward_weight`]. On the direct path with
/// "same" padding (kh − 1 − padding = padding) each image of g is padded once for both: the
/// turned-around conv's zero-padded copy of g, read from padding·Wp + padding on, is the weight
/// gradient's g grid (rows Wp apart, zero at the junk columns, which land on the padding), so only the
/// distance between two channels' rows differs (`Group::g_row`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &Shape,
    x: &[f32],
    g: &[f32],
    w: &[f32],
    gx: &mut [f32],
    gw: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<(), String> {
    check_lens(&[
        ("x", x.len(), s.n * s.image_in()),
        ("g", g.len(), s.n * s.image_out()),
        ("w", w.len(), s.o * s.k()),
        ("gx", gx.len(), s.n * s.image_in()),
        ("gw", gw.len(), s.o * s.k()),
    ])?;
    match shared_g(s) {
        Some(t) if s.n > 0 && !gw.is_empty() => {
            gw.fill(0.0);
            backward_both_direct(s, &t, (x, g, w), gx, gw, family(isa)?, threads)
        }
        _ => {
            backward_input(s, g, w, gx, isa, threads)?;
            backward_weight(s, x, g, gw, isa, threads)
        }
    }
}

/// The turned-around conv of `s` when its padded copy of g can serve the weight gradient too: the
/// same padding, so the same row width and plane; whole blocks of OB output channels (the weight
/// kernels read OB rows a block); and more padding below a channel's last row and above the next one's
/// first than the QB positions by which the grid may run past the rows (they must read zeros).
fn shared_g(s: &Shape) -> Option<Shape> {
    let t = turned_around(s)?;
    let (px, pg) = (plan_of(s), plan_of(&t));
    let p = s.win.padding;
    (t.win.padding == p
        && px.wp == pg.wp
        && px.plane == pg.plane
        && s.o.is_multiple_of(OB)
        && 2 * p * pg.wp > QB)
        .then_some(t)
}

/// [`backward`] on the direct path: per group of images, g padded once (the input gradient's forward
/// reads it, then the weight gradient) and x padded for the weight gradient.
fn backward_both_direct(
    s: &Shape,
    t: &Shape,
    (x, g, w): (&[f32], &[f32], &[f32]),
    gx: &mut [f32],
    gw: &mut [f32],
    fam: Family,
    threads: usize,
) -> Result<(), String> {
    let (px, pg) = (plan_of(s), plan_of(t));
    let turned = direct::pack_weights(&turn_weights(s, w), t.o, t.k());
    let (xl, gl, xi, oi) = (px.padded_len(), pg.padded_len(), s.image_in(), s.image_out());
    let shift = s.win.padding * pg.wp + s.win.padding;
    let scratch = || {
        (
            vec![0.0f32; GROUP * xl],
            vec![0.0f32; GROUP * gl],
            vec![0.0f32; t.o.div_ceil(OB) * OB * pg.grid],
        )
    };
    per_group_out(
        s,
        gw,
        (gx, xi),
        threads,
        scratch,
        |(xp, gp, out), images, gxs, sum| {
            let count = images.len();
            for (k, n) in images.enumerate() {
                let gk = &mut gp[k * gl..][..gl];
                direct::pad_image(&pg, &g[n * oi..][..oi], gk);
                forward_image(t, &pg, gk, &turned, out, &mut gxs[k * xi..][..xi], fam);
                direct::pad_image(&px, &x[n * xi..][..xi], &mut xp[k * xl..][..xl]);
            }
            let (xp, gp) = (&*xp, &*gp);
            let group = |b: usize| direct::Group {
                xp,
                gp,
                images: count,
                g_image: gl,
                g_block: b * OB * pg.plane + shift,
                g_row: pg.plane,
            };
            weight_blocks(s, &px, group, sum, fam);
            Ok(())
        },
    )
}

/// Run `f(scratch, input image, output image)` for every image on `threads` threads, each with its
/// own scratch from `scratch`; the first error wins.
fn per_image<S>(
    threads: usize,
    (input, in_len): (&[f32], usize),
    (output, out_len): (&mut [f32], usize),
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &[f32], &mut [f32]) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let items: Vec<_> = input
        .chunks(in_len.max(1))
        .zip(output.chunks_mut(out_len.max(1)))
        .collect();
    let error = Mutex::new(None);
    threads::run_claimed_with(threads, items, scratch, |sc, (i, o)| record(&error, f(sc, i, o)))?;
    take(error)
}

/// The weight gradient gw = Σ of `f(scratch, images, partial)` over fixed groups of [`GROUP`]
/// images: each group sums into its own zeroed partial on whichever thread, the partials are then
/// added in group order, so the bits do not depend on the thread count.
fn per_group<S>(
    s: &Shape,
    gw: &mut [f32],
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, std::ops::Range<usize>, &mut [f32]) -> Result<(), String> + Sync,
) -> Result<(), String> {
    per_group_out(s, gw, (&mut [], 0), threads, scratch, |sc, images, _, sum| {
        f(sc, images, sum)
    })
}

/// [`per_group`] that also hands each group its images' part of `out` (`out_len` floats an image).
fn per_group_out<S>(
    s: &Shape,
    gw: &mut [f32],
    (out, out_len): (&mut [f32], usize),
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, std::ops::Range<usize>, &mut [f32], &mut [f32]) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let len = gw.len();
    let groups = s.n.div_ceil(GROUP);
    let mut partial = vec![0.0f32; groups * len];
    let outs: Vec<&mut [f32]> = if out_len == 0 {
        (0..groups).map(|_| <&mut [f32]>::default()).collect()
    } else {
        out.chunks_mut(GROUP * out_len).collect()
    };
    let items: Vec<_> = partial.chunks_mut(len).zip(outs).enumerate().collect();
    let error = Mutex::new(None);
    threads::run_claimed_with(threads, items, scratch, |sc, (group, (sum, out))| {
        record(
            &error,
            f(sc, group * GROUP..((group + 1) * GROUP).min(s.n), out, sum),
        )
    })?;
    take(error)?;
    for sum in partial.chunks(len) {
        for (d, &v) in gw.iter_mut().zip(sum) {
            *d += v;
        }
    }
    Ok(())
}

/// Output width from which a stride-1 conv takes the direct path: narrower maps waste too much of it
/// on the padded grid's junk columns (kw − 1 of every Wo + kw − 1). At 8 wide (ResNet-20's third
/// stage) the direct forward still ran at 1.3x the GEMM's speed and the weight gradient at 1.15x.
pub const DIRECT_MIN_WIDTH: usize = 8;

/// Whether `s` runs on the direct path (stride 1, output at least [`DIRECT_MIN_WIDTH`] wide).
pub fn uses_direct(s: &Shape) -> bool {
    s.win.stride == 1 && s.wo >= DIRECT_MIN_WIDTH
}

fn family(isa: Isa) -> Result<Family, String> {
    direct::family(isa).ok_or_else(|| format!("this CPU cannot run the {isa} path"))
}

/// The conv whose forward is `s`'s input gradient, when the direct path can run it: g (N×O×Ho×Wo)
/// convolved with the kernel turned by 180° and its channel axes swapped, padded by kh − 1 − padding
/// (a square kernel, padding < kh, so that this padding is one non-negative number).
fn turned_around(s: &Shape) -> Option<Shape> {
    let (k, p) = (s.win.kh, s.win.padding);
    if !uses_direct(s) || s.win.kw != k || p >= k {
        return None;
    }
    let win = Window {
        kh: k,
        kw: k,
        stride: 1,
        padding: k - 1 - p,
    };
    Shape::new(s.n, s.o, s.ho, s.wo, s.c, win)
        .ok()
        .filter(|t| (t.ho, t.wo) == (s.h, s.w))
}

/// w (O×C×kh×kw) turned by 180° with its channel axes swapped: (C×O×kh×kw).
fn turn_weights(s: &Shape, w: &[f32]) -> Vec<f32> {
    let (kh, kw) = (s.win.kh, s.win.kw);
    let mut turned = vec![0.0; w.len()];
    for o in 0..s.o {
        for c in 0..s.c {
            for i in 0..kh {
                for j in 0..kw {
                    turned[((c * s.o + o) * kh + kh - 1 - i) * kw + kw - 1 - j] =
                        w[((o * s.c + c) * kh + i) * kw + j];
                }
            }
        }
    }
    turned
}

fn plan_of(s: &Shape) -> Plan {
    Plan::new(s.c, s.h, s.w, s.win.kh, s.win.kw, s.win.padding)
}

/// The direct forward: each image padded once, then every block of OB channels over the whole grid
/// by the microkernel, then the valid positions copied out.
fn forward_direct(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    fam: Family,
    threads: usize,
) -> Result<(), String> {
    let plan = plan_of(s);
    let taps = s.k();
    let packed = direct::pack_weights(w, s.o, taps);
    let blocks = s.o.div_ceil(OB);
    let scratch = || {
        (
            vec![0.0f32; plan.padded_len()],
            vec![0.0f32; blocks * OB * plan.grid],
        )
    };
    per_image(
        threads,
        (x, s.image_in()),
        (y, s.image_out()),
        scratch,
        |(xp, out), xi, yi| {
            direct::pad_image(&plan, xi, xp);
            forward_image(s, &plan, xp, &packed, out, yi, fam);
            Ok(())
        },
    )
}

/// One image of the direct forward from its padded copy `xp`: every block of OB channels over the
/// whole grid into `out` (scratch of blocks·OB·grid floats), then the valid positions into `yi`.
fn forward_image(
    s: &Shape,
    plan: &Plan,
    xp: &[f32],
    packed: &[f32],
    out: &mut [f32],
    yi: &mut [f32],
    fam: Family,
) {
    let taps = s.k();
    for b in 0..s.o.div_ceil(OB) {
        let rows = &mut out[b * OB * plan.grid..][..OB * plan.grid];
        let wb = &packed[b * taps * OB..][..taps * OB];
        // SAFETY: `fam` came from `direct::family`; xp is padded_len long, wb holds taps·OB floats
        // and rows OB·grid.
        unsafe { (fam.forward)(plan, xp, wb, rows) };
    }
    for o in 0..s.o {
        for r in 0..s.ho {
            yi[(o * s.ho + r) * s.wo..][..s.wo].copy_from_slice(&out[o * plan.grid + r * plan.wp..][..s.wo]);
        }
    }
}

/// The direct weight gradient: per group of images, each image padded and its g placed on the grid
/// (zero at the junk positions), then every (block of OB channels, c, i, TJ taps j) run down the
/// grids of the whole group.
fn backward_weight_direct(
    s: &Shape,
    x: &[f32],
    g: &[f32],
    gw: &mut [f32],
    fam: Family,
    threads: usize,
) -> Result<(), String> {
    let plan = plan_of(s);
    let blocks = s.o.div_ceil(OB);
    let g_image = blocks * OB * plan.grid;
    let scratch = || {
        (
            vec![0.0f32; GROUP * plan.padded_len()],
            vec![0.0f32; GROUP * g_image],
        )
    };
    per_group(s, gw, threads, scratch, |(xp, gp), images, sum| {
        let count = images.len();
        for (k, n) in images.enumerate() {
            direct::pad_image(
                &plan,
                &x[n * s.image_in()..][..s.image_in()],
                &mut xp[k * plan.padded_len()..][..plan.padded_len()],
            );
            let (gk, gn) = (
                &mut gp[k * g_image..][..g_image],
                &g[n * s.image_out()..][..s.image_out()],
            );
            gk.fill(0.0);
            for o in 0..s.o {
                for r in 0..s.ho {
                    gk[o * plan.grid + r * plan.wp..][..s.wo]
                        .copy_from_slice(&gn[(o * s.ho + r) * s.wo..][..s.wo]);
                }
            }
        }
        let group = |b: usize| direct::Group {
            xp,
            gp,
            images: count,
            g_image,
            g_block: b * OB * plan.grid,
            g_row: plan.grid,
        };
        weight_blocks(s, &plan, group, sum, fam);
        Ok(())
    })
}

/// Every (block b of OB output channels, input channels c0.., row i, TJ taps j0..) of the direct
/// weight gradient over a group of images (`group(b)`: the operands of block b), added into `sum`.
fn weight_blocks<'a>(
    s: &Shape,
    plan: &Plan,
    group: impl Fn(usize) -> direct::Group<'a>,
    sum: &mut [f32],
    fam: Family,
) {
    let (kh, kw) = (s.win.kh, s.win.kw);
    for b in 0..s.o.div_ceil(OB) {
        let group = group(b);
        for c0 in (0..s.c).step_by(direct::CP) {
            let channels = direct::CP.min(s.c - c0);
            for i in 0..kh {
                for j0 in (0..kw).step_by(direct::TJ) {
                    let mut acc = [[[0.0f32; direct::TJ]; OB]; direct::CP];
                    // SAFETY: `fam` came from `direct::family`; the group holds its padded images
                    // and their g rows (the callers size them); c0 + channels <= C, i < kh, j0 < kw.
                    unsafe { (fam.weight_taps)(plan, &group, c0, channels, i, j0, &mut acc) };
                    for (k, block) in acc.iter().enumerate().take(channels) {
                        for (ob, row) in block.iter().enumerate().filter(|(ob, _)| b * OB + ob < s.o) {
                            for (jj, &v) in row.iter().enumerate().filter(|(jj, _)| j0 + jj < kw) {
                                sum[(((b * OB + ob) * s.c + c0 + k) * kh + i) * kw + j0 + jj] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Keep the first error of a task (a task reports success as its return value).
fn record(slot: &Mutex<Option<String>>, r: Result<(), String>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            false
        }
    }
}

fn take(slot: Mutex<Option<String>>) -> Result<(), String> {
    match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// conv2d by its definition, in f64.
    fn naive(s: &Shape, x: &[f32], w: &[f32]) -> Vec<f64> {
        let mut y = vec![0.0; s.n * s.o * s.p()];
        for n in 0..s.n {
            for o in 0..s.o {
                for yy in 0..s.ho {
                    for t in 0..s.wo {
                        let mut acc = 0.0;
                        for c in 0..s.c {
                            for i in 0..s.win.kh {
                                for j in 0..s.win.kw {
                                    if let (Some(r), Some(q)) =
                                        (s.win.source(yy, i, s.h), s.win.source(t, j, s.w))
                                    {
                                        acc += x[((n * s.c + c) * s.h + r) * s.w + q] as f64
                                            * w[((o * s.c + c) * s.win.kh + i) * s.win.kw + j] as f64;
                                    }
                                }
                            }
                        }
                        y[((n * s.o + o) * s.ho + yy) * s.wo + t] = acc;
                    }
                }
            }
        }
        y
    }

    fn shapes() -> Vec<Shape> {
        let mut out = vec![];
        for &(n, c, h, w, o, kh, kw, stride, padding) in &[
            (2, 3, 5, 7, 4, 3, 3, 1, 1),
            (3, 2, 8, 6, 5, 3, 3, 2, 1),
            (1, 1, 4, 4, 1, 1, 1, 1, 0),
            (GROUP + 3, 2, 5, 5, 3, 2, 3, 2, 0),
            (2, 4, 3, 3, 2, 3, 3, 3, 2),
            // the direct path: stride 1, output at least DIRECT_MIN_WIDTH wide
            (2, 3, 5, 18, 5, 3, 3, 1, 1),
            (2, 3, 5, 9, 5, 3, 3, 1, 1),
            (GROUP + 1, 2, 4, 16, 6, 3, 3, 1, 1),
            (1, 2, 6, 19, 3, 2, 3, 1, 0),
            (2, 3, 7, 16, 5, 5, 5, 1, 2),
            (1, 2, 3, 18, 3, 1, 1, 1, 0),
            // 7 input channels: the AVX-512 weight gradient's groups of four, two and one
            (2, 7, 5, 12, 9, 3, 3, 1, 1),
        ] {
            out.push(
                Shape::new(
                    n,
                    c,
                    h,
                    w,
                    o,
                    Window {
                        kh,
                        kw,
                        stride,
                        padding,
                    },
                )
                .unwrap(),
            );
        }
        out
    }

    #[test]
    fn forward_matches_the_definition() {
        let mut rng = Rng(3);
        for s in shapes() {
            let x: Vec<f32> = (0..s.n * s.image_in()).map(|_| rng.f()).collect();
            let w: Vec<f32> = (0..s.o * s.k()).map(|_| rng.f()).collect();
            let mut y = vec![f32::NAN; s.n * s.image_out()];
            forward(&s, &x, &w, &mut y, Isa::Scalar, 2).unwrap();
            for (got, want) in y.iter().zip(naive(&s, &x, &w)) {
                assert!(
                    (*got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{s:?}: {got} vs {want}"
                );
            }
        }
    }

    /// ⟨conv(x, w), g⟩ = ⟨x, gx⟩ = ⟨w, gw⟩: both backward products are the adjoints of the forward.
    #[test]
    fn backward_products_are_the_adjoints() {
        let mut rng = Rng(5);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum::<f64>();
        for s in shapes() {
            let x: Vec<f32> = (0..s.n * s.image_in()).map(|_| rng.f()).collect();
            let w: Vec<f32> = (0..s.o * s.k()).map(|_| rng.f()).collect();
            let g: Vec<f32> = (0..s.n * s.image_out()).map(|_| rng.f()).collect();
            let y: Vec<f32> = naive(&s, &x, &w).into_iter().map(|v| v as f32).collect();
            let (mut gx, mut gw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
            backward_input(&s, &g, &w, &mut gx, Isa::Scalar, 2).unwrap();
            backward_weight(&s, &x, &g, &mut gw, Isa::Scalar, 2).unwrap();
            let want = dot(&y, &g);
            for got in [dot(&x, &gx), dot(&w, &gw)] {
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{s:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn every_isa_gives_the_portable_bits() {
        let mut rng = Rng(11);
        for s in shapes() {
            let x: Vec<f32> = (0..s.n * s.image_in()).map(|_| rng.f()).collect();
            let w: Vec<f32> = (0..s.o * s.k()).map(|_| rng.f()).collect();
            let g: Vec<f32> = (0..s.n * s.image_out()).map(|_| rng.f()).collect();
            let run = |isa| {
                let (mut y, mut gx, mut gw) = (vec![0.0; g.len()], vec![0.0; x.len()], vec![0.0; w.len()]);
                forward(&s, &x, &w, &mut y, isa, 1).unwrap();
                backward_input(&s, &g, &w, &mut gx, isa, 1).unwrap();
                backward_weight(&s, &x, &g, &mut gw, isa, 1).unwrap();
                (y, gx, gw)
            };
            let portable = run(Isa::Scalar);
            for isa in crate::isa::available() {
                assert!(run(isa) == portable, "{isa} differs from scalar on {s:?}");
            }
        }
    }

    #[test]
    fn both_gradients_at_once_give_each_ones_bits() {
        let mut rng = Rng(12);
        let mut cases = shapes();
        // shapes that share the padded g: "same" padding, whole blocks of OB output channels
        for (n, c, h, w, o) in [(GROUP + 3, 3, 5, 9, 4), (2, 5, 8, 16, 8), (1, 2, 3, 20, 12)] {
            let win = Window {
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            };
            let s = Shape::new(n, c, h, w, o, win).unwrap();
            assert!(shared_g(&s).is_some(), "{s:?}");
            cases.push(s);
        }
        for s in cases {
            let x: Vec<f32> = (0..s.n * s.image_in()).map(|_| rng.f()).collect();
            let w: Vec<f32> = (0..s.o * s.k()).map(|_| rng.f()).collect();
            let g: Vec<f32> = (0..s.n * s.image_out()).map(|_| rng.f()).collect();
            for isa in crate::isa::available() {
                for threads in [1, 2] {
                    let (mut gx, mut gw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
                    backward(&s, &x, &g, &w, &mut gx, &mut gw, isa, threads).unwrap();
                    let (mut gx1, mut gw1) = (vec![0.0; x.len()], vec![0.0; w.len()]);
                    backward_input(&s, &g, &w, &mut gx1, isa, threads).unwrap();
                    backward_weight(&s, &x, &g, &mut gw1, isa, threads).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&gx), bits(&gx1), "{isa} {threads} {s:?}");
                    assert_eq!(bits(&gw), bits(&gw1), "{isa} {threads} {s:?}");
                }
            }
        }
    }

    #[test]
    fn weight_gradient_bits_do_not_depend_on_threads() {
        let mut rng = Rng(7);
        let s = Shape::new(
            3 * GROUP + 1,
            3,
            6,
            6,
            4,
            Window {
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let x: Vec<f32> = (0..s.n * s.image_in()).map(|_| rng.f()).collect();
        let g: Vec<f32> = (0..s.n * s.image_out()).map(|_| rng.f()).collect();
        let (mut one, mut two) = (vec![0.0; s.o * s.k()], vec![0.0; s.o * s.k()]);
        backward_weight(&s, &x, &g, &mut one, Isa::Scalar, 1).unwrap();
        backward_weight(&s, &x, &g, &mut two, Isa::Scalar, 2).unwrap();
        assert_eq!(one, two);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let s = Shape::new(
            1,
            1,
            3,
            3,
            1,
            Window {
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 1,
            },
        )
        .unwrap();
        let mut y = vec![0.0; 9];
        assert!(forward(&s, &[0.0; 8], &[0.0; 9], &mut y, Isa::Scalar, 1).is_err());
        assert!(Shape::new(
            1,
            1,
            2,
            2,
            1,
            Window {
                kh: 3,
                kw: 3,
                stride: 1,
                padding: 0
            }
        )
        .is_err());
    }
}
