//! Batch normalisation of a training step on NCHW float32 maps, statistics over (N, H, W) per
//! channel. The NumPy twins are `BatchNormTrain.forward/backward` in `apb_ref/ops/norm_loss.py`.
//!
//! * forward: one pass for the channel's sum and sum of squares (in f64, so E[x²] − μ² keeps its
//!   digits: float32 data would need |μ|/σ above 2¹⁴ to lose any), one pass writing y = γ·x̂ + β,
//!   x̂ = (x − μ)/σ;
//! * backward: x̂ recomputed from x (not stored by the forward: one map written less), one pass for
//!   Σg and Σg·x̂ (f64), one writing dx = γ/σ·(g − Σg/m − x̂·Σg·x̂/m).
//!
//! Eval mode (`affine`) is one pass, (x − mean)·scale + β, as NumPy's `BatchNormEval` computes it.
//!
//! Channels are split over threads; a channel is the N slices of H·W floats at (n, c).

use super::elementwise::Act;
use super::vector::widest;
use crate::threads;

/// The sizes of a batch-norm call: `n` images, `c` channels of `hw` values each.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Dims {
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Values per channel (the statistics' count).
    fn count(&self) -> usize {
        self.n * self.hw
    }
}

/// Per channel statistics of the forward: the batch mean, the biased variance and 1/sqrt(var + eps).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Per channel, its N slices (of an NCHW array).
type PerChannel<T> = Vec<Vec<T>>;

/// The N slices of each channel of an NCHW array, grouped by channel.
fn by_channel<T>(chunks: impl Iterator<Item = T>, c: usize, n: usize) -> PerChannel<T> {
    let mut out: Vec<Vec<T>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
    for (i, chunk) in chunks.enumerate() {
        out[i % c].push(chunk);
    }
    out
}

fn check(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} elements, expected {want}"));
    }
    Ok(())
}

/// Running sums per lane in [`lane_sums`]: two AVX-512 vectors of f64, so that the additions of
/// neighbouring blocks do not wait on each other.
const LANES: usize = 16;

/// (Σa, Σa·b) over pairs of equal-length slices, in f64, kept as [`LANES`] running sums each (value
/// k of every block of LANES goes to lane k, a slice's tail to lanes 0, 1, ...; the lanes added at
/// the end), so that the additions run as vector code instead of waiting on one chain.
#[inline(always)]
fn lane_sums<'a>(pairs: impl Iterator<Item = (&'a [f32], &'a [f32])>) -> (f64, f64) {
    let (mut s, mut p) = ([0.0f64; LANES], [0.0f64; LANES]);
    for (a, b) in pairs {
        add_lanes(a, b, &mut s, &mut p);
    }
    (s.iter().sum(), p.iter().sum())
}

/// One pair of slices into the lanes of [`lane_sums`]: with AVX-512 (the compiler keeps 16 f64
/// lanes in scalar registers otherwise, three times slower), else portable; the same operations in
/// the same order (a multiply, then an add, never fused), so the same bits.
#[inline(always)]
fn add_lanes(a: &[f32], b: &[f32], s: &mut [f64; LANES], p: &mut [f64; LANES]) {
    let n = a.len().min(b.len());
    let blocks = n / LANES;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; blocks·LANES <= n floats of a and b are read.
        unsafe { add_blocks_avx512(&a[..blocks * LANES], &b[..blocks * LANES], s, p) };
        return add_tail(&a[blocks * LANES..n], &b[blocks * LANES..n], s, p);
    }
    add_lanes_portable(&a[..n], &b[..n], s, p);
}

/// [`add_lanes`] without SIMD: the definition the AVX-512 routine is held to.
#[inline(always)]
fn add_lanes_portable(a: &[f32], b: &[f32], s: &mut [f64; LANES], p: &mut [f64; LANES]) {
    let blocks = a.len() / LANES;
    for (x, y) in a[..blocks * LANES].chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            let v = x[k] as f64;
            s[k] += v;
            p[k] += v * y[k] as f64;
        }
    }
    add_tail(&a[blocks * LANES..], &b[blocks * LANES..], s, p);
}

/// A slice's last values (fewer than LANES) into lanes 0, 1, ...
#[inline(always)]
fn add_tail(a: &[f32], b: &[f32], s: &mut [f64; LANES], p: &mut [f64; LANES]) {
    for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
        s[k] += x as f64;
        p[k] += x as f64 * y as f64;
    }
}

/// # Safety
/// The CPU has AVX-512F; `a.len() == b.len()`, a multiple of LANES.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_blocks_avx512(a: &[f32], b: &[f32], s: &mut [f64; LANES], p: &mut [f64; LANES]) {
    use std::arch::x86_64::*;
    /// The 16 floats at `ptr` as two vectors of 8 f64 (values 0..8, 8..16).
    #[inline(always)]
    unsafe fn widen(ptr: *const f32) -> (__m512d, __m512d) {
        // SAFETY: the caller reads 16 floats at ptr.
        unsafe {
            let v = _mm512_loadu_ps(ptr);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            (_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi))
        }
    }
    // SAFETY: s and p hold 16 f64 each; block i reads floats 16i..16i + 16 < a.len() of a and b.
    unsafe {
        let (mut s0, mut s1) = (_mm512_loadu_pd(s.as_ptr()), _mm512_loadu_pd(s.as_ptr().add(8)));
        let (mut p0, mut p1) = (_mm512_loadu_pd(p.as_ptr()), _mm512_loadu_pd(p.as_ptr().add(8)));
        for i in 0..a.len() / LANES {
            let ((x0, x1), (y0, y1)) = (widen(a.as_ptr().add(LANES * i)), widen(b.as_ptr().add(LANES * i)));
            s0 = _mm512_add_pd(s0, x0);
            s1 = _mm512_add_pd(s1, x1);
            p0 = _mm512_add_pd(p0, _mm512_mul_pd(x0, y0));
            p1 = _mm512_add_pd(p1, _mm512_mul_pd(x1, y1));
        }
        _mm512_storeu_pd(s.as_mut_ptr(), s0);
        _mm512_storeu_pd(s.as_mut_ptr().add(8), s1);
        _mm512_storeu_pd(p.as_mut_ptr(), p0);
        _mm512_storeu_pd(p.as_mut_ptr().add(8), p1);
    }
}

/// What a fused forward does after the normalisation: y = act(γ·x̂ + β + residual), the operations
/// of the three NumPy ops in their order, in the same pass.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub residual: Option<&'a [f32]>,
    pub act: Act,
}

impl Epilogue<'_> {
    /// Batch normalisation alone.
    pub const NONE: Epilogue<'static> = Epilogue {
        residual: None,
        act: Act::Identity,
    };
}

/// y = γ·x̂ + β, x̂ = (x − μ)·inv_std with the batch statistics, which it returns (x̂ is not kept:
/// the backward recomputes it from x, one write of the whole map less); then `then`'s residual and
/// activation.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    d: Dims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    then: Epilogue,
    y: &mut [f32],
    threads: usize,
) -> Result<Stats, String> {
    check("x", x.len(), d.len())?;
    check("y", y.len(), d.len())?;
    if let Some(r) = then.residual {
        check("residual", r.len(), d.len())?;
    }
    check("gamma", gamma.len(), d.c)?;
    check("beta", beta.len(), d.c)?;
    if d.len() == 0 {
        return Err("batch norm needs at least one value per channel".into());
    }
    let xs = by_channel(x.chunks(d.hw), d.c, d.n);
    let ys = by_channel(y.chunks_mut(d.hw), d.c, d.n);
    let rs = match then.residual {
        Some(r) => by_channel(r.chunks(d.hw), d.c, d.n),
        None => (0..d.c).map(|_| vec![]).collect(),
    };
    let mut stats = vec![(0.0f32, 0.0f32, 0.0f32); d.c];
    let items: Vec<_> = xs
        .into_iter()
        .zip(rs)
        .zip(ys)
        .zip(stats.iter_mut())
        .enumerate()
        .collect();
    let m = d.count() as f64;
    threads::run_claimed(threads, items, |(ch, (((xc, rc), mut yc), st))| {
        let (sum, sq) = channel_sums(&xc);
        let mean = sum / m;
        // clamp the rounding's tiny negatives to 0, but keep a NaN (from NaN or ±inf data) as NumPy does
        let var = sq / m - mean * mean;
        let var = if var < 0.0 { 0.0 } else { var };
        let inv_std = (1.0 / (var + eps).sqrt()) as f32;
        let mu = mean as f32;
        normalise(&xc, &rc, &mut yc, [mu, inv_std, gamma[ch], beta[ch]], then.act);
        *st = (mu, var as f32, inv_std);
        true
    })?;
    Ok(Stats {
        mean: stats.iter().map(|s| s.0).collect(),
        var: stats.iter().map(|s| s.1).collect(),
        inv_std: stats.iter().map(|s| s.2).collect(),
    })
}

/// Eval mode: y = (x − mean)·scale + beta per channel (scale = γ/sqrt(var + eps) from the caller),
/// the float32 operations of NumPy's `(x - shift) * scale + beta`, so the bits agree.
#[allow(clippy::too_many_arguments)]
pub fn affine(
    d: Dims,
    x: &[f32],
    mean: &[f32],
    scale: &[f32],
    beta: &[f32],
    y: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    check("x", x.len(), d.len())?;
    check("y", y.len(), d.len())?;
    for (what, v) in [("mean", mean), ("scale", scale), ("beta", beta)] {
        check(what, v.len(), d.c)?;
    }
    let hw = d.hw.max(1);
    // tasks of whole (image, channel) slices, about 2^16 values each
    let per_task = ((1usize << 16) / hw).max(1);
    let items: Vec<_> = x
        .chunks(hw * per_task)
        .zip(y.chunks_mut(hw * per_task))
        .enumerate()
        .collect();
    threads::run_claimed(threads, items, |(t, (xs, ys))| {
        for (k, (xi, yi)) in xs.chunks(hw).zip(ys.chunks_mut(hw)).enumerate() {
            let ch = (t * per_task + k) % d.c;
            shift_scale(xi, yi, mean[ch], scale[ch], beta[ch]);
        }
        true
    })?;
    Ok(())
}

/// x̂ of one value, the same float32 operations in the forward and the backward.
#[inline(always)]
fn normalised(v: f32, mean: f32, inv_std: f32) -> f32 {
    (v - mean) * inv_std
}

/// The activation of a fused forward, seen from its backward: its output `y`, and where the
/// gradient behind it (g through the activation, which is also the residual's gradient) goes.
pub struct ActGrad<'a> {
    pub act: Act,
    pub y: &'a [f32],
    pub g_act: &'a mut [f32],
}

/// Σg and Σg·x̂ per channel (the gradients of β and γ), and dx into `gx` when given; x̂ recomputed
/// from x and the forward's mean and inv_std. With `through`, g is first taken back through the
/// fused activation (into `through.g_act`, in the pass that sums it).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: Dims,
    g: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    through: Option<ActGrad>,
    gx: Option<&mut [f32]>,
    threads: usize,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    check("g", g.len(), d.len())?;
    check("x", x.len(), d.len())?;
    for (what, v) in [("gamma", gamma), ("mean", mean), ("inv_std", inv_std)] {
        check(what, v.len(), d.c)?;
    }
    let hw = d.hw.max(1);
    let gs = by_channel(g.chunks(hw), d.c, d.n);
    let xs = by_channel(x.chunks(hw), d.c, d.n);
    let (act, ys, g_acts): (Act, PerChannel<&[f32]>, PerChannel<&mut [f32]>) = match through {
        Some(t) => {
            check("y", t.y.len(), d.len())?;
            check("g_act", t.g_act.len(), d.len())?;
            let ys = by_channel(t.y.chunks(hw), d.c, d.n);
            (t.act, ys, by_channel(t.g_act.chunks_mut(hw), d.c, d.n))
        }
        None => (
            Act::Identity,
            (0..d.c).map(|_| vec![]).collect(),
            (0..d.c).map(|_| vec![]).collect(),
        ),
    };
    let outs: Vec<Option<Vec<&mut [f32]>>> = match gx {
        Some(gx) => {
            check("gx", gx.len(), d.len())?;
            by_channel(gx.chunks_mut(hw), d.c, d.n)
                .into_iter()
                .map(Some)
                .collect()
        }
        None => (0..d.c).map(|_| None).collect(),
    };
    let mut sums = vec![(0.0f32, 0.0f32); d.c];
    let items: Vec<_> = gs
        .into_iter()
        .zip(xs)
        .zip(ys.into_iter().zip(g_acts))
        .zip(outs)
        .zip(sums.iter_mut())
        .enumerate()
        .collect();
    let m = d.count() as f64;
    threads::run_claimed_with(
        threads,
        items,
        || vec![0.0f32; hw],
        |xhat, (ch, ((((gc, xc), (yc, mut gac)), out), st))| {
            let (mu, s) = (mean[ch], inv_std[ch]);
            // g behind the activation (if fused): written, slice by slice, by the pass that sums it
            let (g_sum, gh_sum) = gradient_sums(&gc, &xc, (&yc, &mut gac, act), xhat, mu, s);
            let gc: Vec<&[f32]> = if gac.is_empty() {
                gc
            } else {
                gac.iter().map(|s| &s[..]).collect()
            };
            if let Some(mut out) = out {
                let (g_mean, gh_mean) = ((g_sum / m) as f32, (gh_sum / m) as f32);
                input_gradient(&gc, &xc, &mut out, [mu, s, g_mean, gh_mean, gamma[ch] * s]);
            }
            *st = (g_sum as f32, gh_sum as f32);
            true
        },
    )?;
    Ok((
        sums.iter().map(|s| s.0).collect(),
        sums.iter().map(|s| s.1).collect(),
    ))
}

widest! {
    /// Σx and Σx² over a channel's slices, in f64 ([`lane_sums`]).
    fn channel_sums(xc: &[&[f32]]) -> (f64, f64) {
        lane_sums(xc.iter().map(|s| (*s, *s)))
    }
}

widest! {
    /// y = act(x̂·γ + β [+ r]) over a channel's slices (`rc` empty: no residual); `k` = [μ, 1/σ, γ, β].
    fn normalise(xc: &[&[f32]], rc: &[&[f32]], yc: &mut [&mut [f32]], k: [f32; 4], act: Act) {
        // one loop per activation (a `match` per value would keep the loop scalar)
        match act {
            Act::Identity => normalise_then(xc, rc, yc, k, |v| Act::Identity.apply(v)),
            Act::Relu => normalise_then(xc, rc, yc, k, |v| Act::Relu.apply(v)),
            Act::Clip { lo, hi } => normalise_then(xc, rc, yc, k, |v| Act::Clip { lo, hi }.apply(v)),
        }
    }
}

/// [`normalise`] with the activation `f`.
#[inline(always)]
fn normalise_then(xc: &[&[f32]], rc: &[&[f32]], yc: &mut [&mut [f32]], k: [f32; 4], f: impl Fn(f32) -> f32) {
    let [mu, inv_std, gamma, beta] = k;
    for (n, (xi, yi)) in xc.iter().zip(yc.iter_mut()).enumerate() {
        match rc.get(n) {
            Some(ri) => {
                for ((&v, &r), yv) in xi.iter().zip(ri.iter()).zip(yi.iter_mut()) {
                    *yv = f(normalised(v, mu, inv_std) * gamma + beta + r);
                }
            }
            None => {
                for (&v, yv) in xi.iter().zip(yi.iter_mut()) {
                    *yv = f(normalised(v, mu, inv_std) * gamma + beta);
                }
            }
        }
    }
}

widest! {
    /// y = (x − mean)·scale + beta over one slice.
    fn shift_scale(x: &[f32], y: &mut [f32], mean: f32, scale: f32, beta: f32) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = (v - mean) * scale + beta;
        }
    }
}

widest! {
    /// Σg and Σg·x̂ over a channel's slices (f64), x̂ recomputed slice by slice into `xhat`. With a
    /// fused activation (`through` = its outputs, where g behind it goes, the activation; empty slices
    /// when none), each slice of g is first taken back through it, and that is what is summed.
    fn gradient_sums(
        gc: &[&[f32]],
        xc: &[&[f32]],
        through: (&[&[f32]], &mut [&mut [f32]], Act),
        xhat: &mut [f32],
        mu: f32,
        inv_std: f32,
    ) -> (f64, f64) {
        let (yc, g_act, act) = through;
        let (mut g_sum, mut gh_sum) = (0.0f64, 0.0f64);
        for (n, (&gi, xi)) in gc.iter().zip(xc).enumerate() {
            for (h, &v) in xhat.iter_mut().zip(xi.iter()) {
                *h = normalised(v, mu, inv_std);
            }
            let gi: &[f32] = match (yc.get(n), g_act.get_mut(n)) {
                (Some(yi), Some(oi)) => {
                    // one loop per activation (a `match` per value would keep the loop scalar)
                    match act {
                        Act::Identity => map_pairs(gi, yi, oi, |g, y| Act::Identity.gradient(g, y)),
                        Act::Relu => map_pairs(gi, yi, oi, |g, y| Act::Relu.gradient(g, y)),
                        Act::Clip { lo, hi } => map_pairs(gi, yi, oi, |g, y| Act::Clip { lo, hi }.gradient(g, y)),
                    }
                    oi
                }
                _ => gi,
            };
            let (a, b) = lane_sums(std::iter::once((gi, &xhat[..gi.len()])));
            g_sum += a;
            gh_sum += b;
        }
        (g_sum, gh_sum)
    }
}

/// out = f(g, y) elementwise.
#[inline(always)]
fn map_pairs(g: &[f32], y: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for ((&g, &y), o) in g.iter().zip(y).zip(out.iter_mut()) {
        *o = f(g, y);
    }
}

widest! {
    /// dx = (g − mean(g) − x̂·mean(g·x̂))·γ/σ over a channel's slices; `k` = [μ, 1/σ, mean(g),
    /// mean(g·x̂), γ/σ].
    fn input_gradient(gc: &[&[f32]], xc: &[&[f32]], out: &mut [&mut [f32]], k: [f32; 5]) {
        let [mu, inv_std, g_mean, gh_mean, scale] = k;
        for ((gi, xi), oi) in gc.iter().zip(xc).zip(out.iter_mut()) {
            for ((&gv, &v), o) in gi.iter().zip(xi.iter()).zip(oi.iter_mut()) {
                *o = (gv - g_mean - normalised(v, mu, inv_std) * gh_mean) * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    #[test]
    fn normalises_each_channel_and_the_gradient_sums_to_zero() {
        let mut rng = Rng(9);
        let d = Dims { n: 3, c: 4, hw: 5 };
        let x: Vec<f32> = (0..d.len()).map(|i| rng.f() * 3.0 + (i % 4) as f32).collect();
        let (gamma, beta) = (vec![1.0, 2.0, 0.5, -1.0], vec![0.0, 1.0, -2.0, 0.25]);
        let mut y = vec![0.0; d.len()];
        let stats = forward(d, &x, &gamma, &beta, 1e-5, Epilogue::NONE, &mut y, 2).unwrap();
        let xhat: Vec<f32> = (0..d.len())
            .map(|i| {
                normalised(
                    x[i],
                    stats.mean[(i / d.hw) % d.c],
                    stats.inv_std[(i / d.hw) % d.c],
                )
            })
            .collect();
        for ch in 0..d.c {
            let vals: Vec<f64> = (0..d.n)
                .flat_map(|n| xhat[(n * d.c + ch) * d.hw..][..d.hw].to_vec())
                .map(|v| v as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3,
                "{ch}: {mean} {var}"
            );
            assert!(stats.inv_std[ch] > 0.0);
        }
        // dx is orthogonal to 1 and to x̂ per channel (the normalisation removes both directions)
        let g: Vec<f32> = (0..d.len()).map(|_| rng.f()).collect();
        let mut gx = vec![0.0; d.len()];
        backward(
            d,
            &g,
            &x,
            &gamma,
            &stats.mean,
            &stats.inv_std,
            None,
            Some(&mut gx),
            2,
        )
        .unwrap();
        for ch in 0..d.c {
            let idx = (0..d.n).flat_map(|n| (0..d.hw).map(move |k| (n * d.c + ch) * d.hw + k));
            let (s, sh) = idx.fold((0.0f64, 0.0f64), |(s, sh), i| {
                (s + gx[i] as f64, sh + (gx[i] * xhat[i]) as f64)
            });
            assert!(s.abs() < 1e-5 && sh.abs() < 1e-5, "{ch}: {s} {sh}");
        }
    }

    #[test]
    fn the_fused_activation_and_residual_give_the_separate_steps_bits() {
        let mut rng = Rng(4);
        let d = Dims { n: 3, c: 2, hw: 7 };
        let x: Vec<f32> = (0..d.len()).map(|_| rng.f() * 2.0).collect();
        let r: Vec<f32> = (0..d.len()).map(|_| rng.f()).collect();
        let g: Vec<f32> = (0..d.len()).map(|_| rng.f()).collect();
        let (gamma, beta) = (vec![0.7, -1.3], vec![0.1, 0.2]);
        for act in [Act::Identity, Act::Relu, Act::Clip { lo: -0.5, hi: 0.75 }] {
            for residual in [None, Some(&r[..])] {
                let mut y = vec![0.0; d.len()];
                let stats = forward(d, &x, &gamma, &beta, 1e-5, Epilogue::NONE, &mut y, 1).unwrap();
                for (k, v) in y.iter_mut().enumerate() {
                    *v = act.apply(*v + residual.map_or(0.0, |r| r[k]));
                }
                let mut fused = vec![0.0; d.len()];
                let then = Epilogue { residual, act };
                forward(d, &x, &gamma, &beta, 1e-5, then, &mut fused, 2).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                // (+0.0 added for no residual keeps every value's bits but −0.0's: compare values then)
                assert!(
                    y.iter().zip(&fused).all(|(a, b)| a == b),
                    "{act:?} {}",
                    residual.is_some()
                );
                let g_act: Vec<f32> = g.iter().zip(&fused).map(|(&g, &y)| act.gradient(g, y)).collect();
                let mut want = vec![0.0; d.len()];
                let sums = backward(
                    d,
                    &g_act,
                    &x,
                    &gamma,
                    &stats.mean,
                    &stats.inv_std,
                    None,
                    Some(&mut want),
                    1,
                );
                let (mut got, mut got_act) = (vec![0.0; d.len()], vec![0.0; d.len()]);
                let through = Some(ActGrad {
                    act,
                    y: &fused,
                    g_act: &mut got_act,
                });
                let fused_sums = backward(
                    d,
                    &g,
                    &x,
                    &gamma,
                    &stats.mean,
                    &stats.inv_std,
                    through,
                    Some(&mut got),
                    2,
                );
                assert_eq!(bits(&got), bits(&want), "{act:?}");
                assert_eq!(bits(&got_act), bits(&g_act), "{act:?}");
                assert_eq!(sums.unwrap(), fused_sums.unwrap(), "{act:?}");
            }
        }
    }

    #[test]
    fn the_vector_lane_sums_give_the_portable_bits() {
        let mut rng = Rng(6);
        for len in [0, 1, 15, 16, 17, 33, 100, 1031] {
            let a: Vec<f32> = (0..len).map(|_| rng.f() * 1e3).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.f()).collect();
            let (mut s, mut p) = ([0.5f64; LANES], [0.25f64; LANES]);
            let (mut s2, mut p2) = (s, p);
            add_lanes(&a, &b, &mut s, &mut p);
            add_lanes_portable(&a, &b, &mut s2, &mut p2);
            assert_eq!((s, p), (s2, p2), "{len}");
        }
    }
}
