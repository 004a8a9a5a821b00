//! Max and average pooling of a training step, forward and backward, on NCHW float32 arrays, the
//! (N·C) planes over threads (`MaxPool2d`, `AvgPool2d` in `apb_ref/ops/conv.py`).
//!
//! A window is a k×k square of the input padded by `padding` on each side (−inf for max pooling, 0
//! for average pooling, the padding counted in the mean); its k² positions are numbered row by row,
//! `idx = i·k + j`. Max pooling's winner is NumPy's `argmax` over them: the first maximum, or the
//! first NaN. The backward passes repeat the NumPy scatter's additions in its order (every window
//! position in idx order, each adding its masked or shared gradient), so they agree bit for bit;
//! so does max pooling's forward. Average pooling's forward sums the window in idx order, which
//! need not be NumPy's order: the tests hold both to float32 rounding.

use super::elementwise::masked;
use crate::conv::Window;
use crate::threads;

/// The geometry of a pooling call: NCHW input sizes, the square window and the output size.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Pool {
    /// The geometry for `n·c` planes of h×w, or an error if the window does not fit.
    pub fn new(
        planes: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self, String> {
        let win = Window {
            kh: k,
            kw: k,
            stride,
            padding,
        };
        if padding > k / 2 || k.checked_mul(k).is_none() {
            return Err(format!(
                "need padding <= kernel/2 (and kernel² to fit), got kernel {k} and padding {padding}"
            ));
        }
        let (ho, wo) = win.output(h, w)?;
        Ok(Pool {
            planes,
            h,
            w,
            k,
            stride,
            padding,
            ho,
            wo,
        })
    }

    /// The input position (row, column) window position `idx` of output (oh, ow) reads, None in the
    /// padding.
    #[inline(always)]
    fn source(&self, oh: usize, ow: usize, idx: usize) -> Option<usize> {
        let (i, j) = (idx / self.k, idx % self.k);
        let row = (oh * self.stride + i).checked_sub(self.padding)?;
        let col = (ow * self.stride + j).checked_sub(self.padding)?;
        (row < self.h && col < self.w).then_some(row * self.w + col)
    }

    fn check(&self, what: &str, got: usize, per_plane: usize) -> Result<(), String> {
        if Some(got) != self.planes.checked_mul(per_plane) {
            return Err(format!(
                "{what} has {got} elements, expected {} planes of {per_plane}",
                self.planes
            ));
        }
        Ok(())
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }
}

/// Max pooling: y and the winner of each window (its idx, NumPy's argmax).
pub fn max_forward(
    p: &Pool,
    x: &[f32],
    y: &mut [f32],
    winner: &mut [i64],
    threads: usize,
) -> Result<(), String> {
    p.check("x", x.len(), p.in_plane())?;
    p.check("y", y.len(), p.out_plane())?;
    p.check("winner", winner.len(), p.out_plane())?;
    let items: Vec<_> = x
        .chunks(p.in_plane())
        .zip(y.chunks_mut(p.out_plane()))
        .zip(winner.chunks_mut(p.out_plane()))
        .collect();
    threads::run_claimed(threads, items, |((xs, ys), ws)| {
        for oh in 0..p.ho {
            for ow in 0..p.wo {
                let at = |idx| p.source(oh, ow, idx).map_or(f32::NEG_INFINITY, |s| xs[s]);
                let (mut best, mut win) = (at(0), 0);
                for idx in 1..p.k * p.k {
                    if best.is_nan() {
                        break;
                    }
                    let v = at(idx);
                    // NumPy's argmax: a later value wins only when it is larger or NaN
                    if v.is_nan() || v > best {
                        (best, win) = (v, idx);
                    }
                }
                ys[oh * p.wo + ow] = best;
                ws[oh * p.wo + ow] = win as i64;
            }
        }
        true
    })?;
    Ok(())
}

/// The input gradient of max pooling: each window position adds g·(winner == idx) (so a NaN or
/// infinite g reaches every position of its window, NaN·0 and inf·0 being NaN, as in NumPy).
pub fn max_backward(
    p: &Pool,
    g: &[f32],
    winner: &[i64],
    dx: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    p.check("g", g.len(), p.out_plane())?;
    p.check("winner", winner.len(), p.out_plane())?;
    p.check("dx", dx.len(), p.in_plane())?;
    scatter(p, g, dx, threads, winner, |g, w: i64, idx| {
        masked(g, w == idx as i64)
    })
}

/// Average pooling: the mean of each window, its padding counted as zeros.
pub fn avg_forward(p: &Pool, x: &[f32], y: &mut [f32], threads: usize) -> Result<(), String> {
    p.check("x", x.len(), p.in_plane())?;
    p.check("y", y.len(), p.out_plane())?;
    let count = (p.k * p.k) as f32;
    let items: Vec<_> = x.chunks(p.in_plane()).zip(y.chunks_mut(p.out_plane())).collect();
    threads::run_claimed(threads, items, |(xs, ys)| {
        for oh in 0..p.ho {
            for ow in 0..p.wo {
                let sum = (0..p.k * p.k)
                    .filter_map(|idx| p.source(oh, ow, idx))
                    .fold(0.0f32, |s, at| s + xs[at]);
                ys[oh * p.wo + ow] = sum / count;
            }
        }
        true
    })?;
    Ok(())
}

/// The input gradient of average pooling: each window position adds g / k² (k² rounded to float32).
pub fn avg_backward(p: &Pool, g: &[f32], dx: &mut [f32], threads: usize) -> Result<(), String> {
    p.check("g", g.len(), p.out_plane())?;
    p.check("dx", dx.len(), p.in_plane())?;
    let count = (p.k * p.k) as f32;
    let none = vec![(); g.len()];
    scatter(p, g, dx, threads, &none, |g, (), _| g / count)
}

/// dx = 0, then for every window position idx in order and every output, dx[source] += share(g,
/// tag, idx), as NumPy's loop over the k² shifted slices adds.
fn scatter<T: Copy + Sync>(
    p: &Pool,
    g: &[f32],
    dx: &mut [f32],
    threads: usize,
    tags: &[T],
    share: impl Fn(f32, T, usize) -> f32 + Sync,
) -> Result<(), String> {
    let items: Vec<_> = g
        .chunks(p.out_plane())
        .zip(tags.chunks(p.out_plane()))
        .zip(dx.chunks_mut(p.in_plane()))
        .collect();
    threads::run_claimed(threads, items, |((gs, ts), ds)| {
        ds.fill(0.0);
        for idx in 0..p.k * p.k {
            for oh in 0..p.ho {
                for ow in 0..p.wo {
                    if let Some(at) = p.source(oh, ow, idx) {
                        let o = oh * p.wo + ow;
                        ds[at] += share(gs[o], ts[o], idx);
                    }
                }
            }
        }
        true
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pooling_picks_numpys_argmax() {
        // one 2x4 plane, 2x2 windows, stride 2: [1, NaN | 5, 5] over [NaN, 7 | -0, 0]
        let p = Pool::new(1, 2, 4, 2, 2, 0).unwrap();
        let x = [1.0, f32::NAN, 5.0, 5.0, f32::NAN, 7.0, -0.0, 0.0];
        let (mut y, mut win) = ([0.0f32; 2], [9i64; 2]);
        max_forward(&p, &x, &mut y, &mut win, 1).unwrap();
        assert!(y[0].is_nan() && win[0] == 1); // the first NaN
        assert_eq!((y[1], win[1]), (5.0, 0)); // the first of equal maxima
        let x = [
            -0.0,
            0.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            -1.0,
        ];
        max_forward(&p, &x, &mut y, &mut win, 1).unwrap();
        assert_eq!((y[0].to_bits(), win[0]), ((-0.0f32).to_bits(), 0)); // −0 == 0: the first
        assert_eq!((y[1], win[1]), (-1.0, 3));
    }

    #[test]
    fn padding_is_minus_infinity_and_gradients_scatter_in_order() {
        // a 1x1 plane padded by 1 under a 3x3 window, stride 1: one window, x at idx 4
        let p = Pool::new(1, 1, 1, 3, 1, 1).unwrap();
        let (mut y, mut win) = ([0.0f32; 1], [0i64; 1]);
        max_forward(&p, &[f32::NEG_INFINITY], &mut y, &mut win, 1).unwrap();
        assert_eq!((y[0], win[0]), (f32::NEG_INFINITY, 0)); // all −inf: the first, in the padding
        let mut dx = [1.0f32];
        max_backward(&p, &[2.0], &win, &mut dx, 1).unwrap();
        assert_eq!(dx[0], 0.0); // the gradient went to the padding
        max_backward(&p, &[f32::INFINITY], &[0], &mut dx, 1).unwrap();
        assert!(dx[0].is_nan()); // inf·0
        avg_forward(&p, &[9.0], &mut y, 1).unwrap();
        assert_eq!(y[0], 1.0);
        avg_backward(&p, &[-0.0], &mut dx, 1).unwrap();
        assert_eq!(dx[0].to_bits(), 0.0f32.to_bits()); // 0 + (−0/9) = +0
    }

    #[test]
    fn overlapping_windows_add_up() {
        // 1x3 plane, 1x... a 2x2 window needs two rows: 2x3 plane, stride 1 -> 1x2 outputs
        let p = Pool::new(2, 2, 3, 2, 1, 0).unwrap();
        let x = [0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let (mut y, mut win) = ([0.0f32; 4], [0i64; 4]);
        max_forward(&p, &x, &mut y, &mut win, 2).unwrap();
        assert_eq!((y, win), ([3.0, 3.0, 5.0, 6.0], [1, 0, 3, 3]));
        let mut dx = [0.0f32; 12];
        max_backward(&p, &[1.0, 10.0, 1.0, 1.0], &win, &mut dx, 2).unwrap();
        assert_eq!(dx, [0.0, 11.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        assert!(max_backward(&p, &[1.0; 3], &win, &mut dx, 1).is_err());
        assert!(Pool::new(1, 1, 1, 3, 1, 0).is_err());
    }
}
