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
//! Images are split over threads (`threads::run_claimed_with`, one scratch matrix per thread). The
//! weight gradient sums images in fixed groups of [`GROUP`] and then the groups in order, so its bits
//! do not depend on the thread count. The NumPy twin is `Conv2dIm2col` in `apb_ref/ops/conv.py`.

use super::matmul::{matmul, View};
use crate::conv::Window;
use crate::threads;

/// Images per partial sum of the weight gradient (fixed, so the result is the same on any number of
/// threads).
pub const GROUP: usize = 8;

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

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} elements, the shape needs {want}"));
    }
    Ok(())
}

/// y (N×O×Ho×Wo) = conv2d(x (N×C×H×W), w (O×C×kh×kw)).
pub fn forward(s: &Shape, x: &[f32], w: &[f32], y: &mut [f32], threads: usize) -> Result<(), String> {
    check_len("x", x.len(), s.n * s.image_in())?;
    check_len("w", w.len(), s.o * s.k())?;
    check_len("y", y.len(), s.n * s.image_out())?;
    if s.n == 0 || s.image_out() == 0 {
        return Ok(());
    }
    let weights = View::rows_major(w, s.o, s.k());
    let items: Vec<_> = x
        .chunks(s.image_in().max(1))
        .zip(y.chunks_mut(s.image_out()))
        .collect();
    let error = std::sync::Mutex::new(None);
    threads::run_claimed_with(
        threads,
        items,
        || vec![0.0f32; s.k() * s.p()],
        |cols, (xi, yi)| {
            im2col(s, xi, cols);
            record(
                &error,
                matmul(yi, weights, View::rows_major(cols, s.k(), s.p()), false),
            )
        },
    )?;
    take(error)
}

/// gx (N×C×H×W), the gradient of conv2d's input, from g (N×O×Ho×Wo) and w.
pub fn backward_input(s: &Shape, g: &[f32], w: &[f32], gx: &mut [f32], threads: usize) -> Result<(), String> {
    check_len("g", g.len(), s.n * s.image_out())?;
    check_len("w", w.len(), s.o * s.k())?;
    check_len("gx", gx.len(), s.n * s.image_in())?;
    if s.n == 0 || s.image_in() == 0 {
        return Ok(());
    }
    let weights_t = View::rows_major(w, s.o, s.k()).t();
    let items: Vec<_> = g
        .chunks(s.image_out().max(1))
        .zip(gx.chunks_mut(s.image_in()))
        .collect();
    let error = std::sync::Mutex::new(None);
    threads::run_claimed_with(
        threads,
        items,
        || vec![0.0f32; s.k() * s.p()],
        |dcols, (gi, gxi)| {
            let done = matmul(dcols, weights_t, View::rows_major(gi, s.o, s.p()), false);
            gxi.fill(0.0);
            if done.is_ok() {
                col2im_add(s, dcols, gxi);
            }
            record(&error, done)
        },
    )?;
    take(error)
}

/// gw (O×C×kh×kw), the gradient of conv2d's weight, from x and g.
pub fn backward_weight(
    s: &Shape,
    x: &[f32],
    g: &[f32],
    gw: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    check_len("x", x.len(), s.n * s.image_in())?;
    check_len("g", g.len(), s.n * s.image_out())?;
    check_len("gw", gw.len(), s.o * s.k())?;
    gw.fill(0.0);
    if s.n == 0 || gw.is_empty() {
        return Ok(());
    }
    let (ok, oi) = (s.o * s.k(), s.image_out());
    let groups = s.n.div_ceil(GROUP);
    let mut partial = vec![0.0f32; groups * ok];
    let items: Vec<_> = partial.chunks_mut(ok).enumerate().collect();
    let error = std::sync::Mutex::new(None);
    threads::run_claimed_with(
        threads,
        items,
        || vec![0.0f32; s.k() * s.p()],
        |cols, (group, sum)| {
            let mut done = Ok(());
            for n in group * GROUP..((group + 1) * GROUP).min(s.n) {
                im2col(s, &x[n * s.image_in()..][..s.image_in()], cols);
                let gn = View::rows_major(&g[n * oi..][..oi], s.o, s.p());
                done = done.and(matmul(
                    sum,
                    gn,
                    View::rows_major(cols, s.k(), s.p()).t(),
                    n > group * GROUP,
                ));
            }
            record(&error, done)
        },
    )?;
    take(error)?;
    for sum in partial.chunks(ok) {
        for (d, &v) in gw.iter_mut().zip(sum) {
            *d += v;
        }
    }
    Ok(())
}

/// Keep the first error of a task (a task reports success as its return value).
fn record(slot: &std::sync::Mutex<Option<String>>, r: Result<(), String>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            false
        }
    }
}

fn take(slot: std::sync::Mutex<Option<String>>) -> Result<(), String> {
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
            forward(&s, &x, &w, &mut y, 2).unwrap();
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
            backward_input(&s, &g, &w, &mut gx, 2).unwrap();
            backward_weight(&s, &x, &g, &mut gw, 2).unwrap();
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
        backward_weight(&s, &x, &g, &mut one, 1).unwrap();
        backward_weight(&s, &x, &g, &mut two, 2).unwrap();
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
        assert!(forward(&s, &[0.0; 8], &[0.0; 9], &mut y, 1).is_err());
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
