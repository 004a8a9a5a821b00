//! Optimizer steps in place (`SGD.step`, `Adam.step`, AdamW's decoupled decay in `apb_ref/nn/optim.py`),
//! over chunks of the flat parameter on several threads, in the widest vectors the CPU has.
//!
//! Each element goes through the NumPy step's float32 operations in the NumPy step's order: NumPy 2
//! rounds a Python float hyper-parameter to float32 and computes in float32, one rounding per
//! operation, and Rust never fuses a multiply and an add. So the two agree bit for bit. The
//! hyper-parameters arrive already rounded (the Python floats the NumPy step would use, cast with
//! `as f32`, which rounds to nearest as NumPy's cast does).

use super::vector::widest;
use crate::threads;

/// Elements per task, as in `elementwise`.
const CHUNK: usize = 1 << 16;

/// SGD's hyper-parameters, each as float32.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f32,
    /// λ; None when λ = 0: NumPy then adds no term (g + 0·p would turn an infinite p into NaN).
    pub weight_decay: Option<f32>,
    /// μ (the buffer is updated only when it is given).
    pub momentum: f32,
    /// 1 − τ; None when τ = 0: the gradient is then added as is.
    pub dampening: Option<f32>,
    pub nesterov: bool,
}

/// The momentum buffer of an SGD step.
pub enum Buffer<'a> {
    /// μ = 0: no buffer.
    None,
    /// The first step: the buffer becomes the (decayed) gradient.
    First(&'a mut [f32]),
    /// Later steps: b = μ·b + (1 − τ)·d.
    Next(&'a mut [f32]),
}

/// Adam's hyper-parameters for one step, each as float32 (the scalars the NumPy step computes).
#[derive(Clone, Copy, Debug)]
pub struct Adam {
    /// λ of the L2 term g + λ·p (Adam), None when absent.
    pub l2: Option<f32>,
    /// 1 − lr·λ of the decoupled decay p·(1 − lr·λ) (AdamW), None when absent.
    pub decay: Option<f32>,
    pub beta1: f32,
    /// 1 − β1
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// 1 − β2
    pub one_minus_beta2: f32,
    /// √(1 − β2^t)
    pub bias2_sqrt: f32,
    pub eps: f32,
    /// lr / (1 − β1^t)
    pub step_size: f32,
}

fn check(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} elements, expected {want}"));
    }
    Ok(())
}

/// One SGD step: p −= lr·d with d the gradient after weight decay and momentum (see [`Sgd`]).
pub fn sgd_step(h: &Sgd, p: &mut [f32], g: &[f32], buf: Buffer<'_>, threads: usize) -> Result<(), String> {
    check("g", g.len(), p.len())?;
    let (first, buf) = match buf {
        Buffer::None => (false, None),
        Buffer::First(b) => (true, Some(b)),
        Buffer::Next(b) => (false, Some(b)),
    };
    let bufs: Vec<Option<&mut [f32]>> = match buf {
        Some(b) => {
            check("the momentum buffer", b.len(), p.len())?;
            b.chunks_mut(CHUNK).map(Some).collect()
        }
        None => p.chunks(CHUNK).map(|_| None).collect(),
    };
    let items: Vec<_> = p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(bufs).collect();
    threads::run_claimed(threads, items, |((ps, gs), bs)| {
        match bs {
            Some(bs) if first => sgd_first(h, ps, gs, bs),
            Some(bs) => sgd_momentum(h, ps, gs, bs),
            None => sgd_plain(h, ps, gs),
        }
        true
    })?;
    Ok(())
}

/// g + λ·p, or g when λ = 0.
#[inline(always)]
fn decayed(wd: Option<f32>, p: f32, g: f32) -> f32 {
    match wd {
        Some(wd) => g + wd * p,
        None => g,
    }
}

/// The step from the updated buffer b: d + μ·b (Nesterov) or b.
#[inline(always)]
fn sgd_direction(h: &Sgd, d: f32, b: f32) -> f32 {
    if h.nesterov {
        d + h.momentum * b
    } else {
        b
    }
}

widest! {
    fn sgd_plain(h: &Sgd, p: &mut [f32], g: &[f32]) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= h.lr * decayed(h.weight_decay, *p, g);
        }
    }
}

widest! {
    fn sgd_first(h: &Sgd, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = decayed(h.weight_decay, *p, g);
            *b = d;
            *p -= h.lr * sgd_direction(h, d, d);
        }
    }
}

widest! {
    fn sgd_momentum(h: &Sgd, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = decayed(h.weight_decay, *p, g);
            *b *= h.momentum;
            *b += match h.dampening {
                Some(k) => k * d,
                None => d,
            };
            *p -= h.lr * sgd_direction(h, d, *b);
        }
    }
}

/// One Adam (or AdamW) step on p and its moments m, v (see [`Adam`]).
pub fn adam_step(
    h: &Adam,
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    threads: usize,
) -> Result<(), String> {
    check("exp_avg", m.len(), p.len())?;
    check("exp_avg_sq", v.len(), p.len())?;
    check("g", g.len(), p.len())?;
    let items: Vec<_> = p
        .chunks_mut(CHUNK)
        .zip(m.chunks_mut(CHUNK))
        .zip(v.chunks_mut(CHUNK))
        .zip(g.chunks(CHUNK))
        .collect();
    threads::run_claimed(threads, items, |(((ps, ms), vs), gs)| {
        adam_slice(h, ps, ms, vs, gs);
        true
    })?;
    Ok(())
}

/// One element of the Adam step, in the NumPy step's order.
#[inline(always)]
pub fn adam_one(h: &Adam, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
    let g = decayed(h.l2, *p, g);
    if let Some(k) = h.decay {
        *p *= k;
    }
    *m *= h.beta1;
    *m += h.one_minus_beta1 * g;
    *v *= h.beta2;
    *v += h.one_minus_beta2 * g * g;
    let denom = v.sqrt() / h.bias2_sqrt + h.eps;
    *p -= h.step_size * (*m / denom);
}

widest! {
    fn adam_slice(h: &Adam, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            adam_one(h, p, m, v, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGD: Sgd = Sgd {
        lr: 0.1,
        weight_decay: None,
        momentum: 0.9,
        dampening: None,
        nesterov: false,
    };

    fn adam(l2: Option<f32>, decay: Option<f32>) -> Adam {
        Adam {
            l2,
            decay,
            beta1: 0.9,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            bias2_sqrt: 0.001f64.sqrt() as f32,
            eps: 1e-8,
            step_size: 0.01,
        }
    }

    #[test]
    fn sgd_follows_the_numpy_order_step_by_step() {
        let h = Sgd {
            weight_decay: Some(0.5),
            dampening: Some(0.75),
            ..SGD
        };
        let (mut p, g, mut b) = (vec![1.0f32, -2.0], vec![0.25f32, 3.0], vec![0.0f32; 2]);
        sgd_step(&h, &mut p, &g, Buffer::First(&mut b), 1).unwrap();
        // d = g + 0.5·p; the buffer is d; p −= 0.1·d
        let d: Vec<f32> = [(0.25f32, 1.0f32), (3.0, -2.0)]
            .iter()
            .map(|&(g, p)| g + 0.5 * p)
            .collect();
        assert_eq!(b, d);
        let p1: Vec<f32> = [1.0f32, -2.0]
            .iter()
            .zip(&d)
            .map(|(&p, &d)| p - 0.1 * d)
            .collect();
        assert_eq!(p, p1);
        sgd_step(&h, &mut p, &g, Buffer::Next(&mut b), 2).unwrap();
        for i in 0..2 {
            let d2 = g[i] + 0.5 * p1[i];
            let mut b2 = d[i] * 0.9;
            b2 += 0.75 * d2;
            assert_eq!(b[i].to_bits(), b2.to_bits());
            assert_eq!(p[i].to_bits(), (p1[i] - 0.1 * b2).to_bits());
        }
    }

    #[test]
    fn sgd_edge_values_behave_as_numpy() {
        // no decay term when λ = 0: an infinite weight minus a finite step stays infinite
        let (mut p, g) = (vec![f32::INFINITY, -0.0, 1.0], vec![1.0f32, 0.0, f32::NAN]);
        sgd_step(&SGD, &mut p, &g, Buffer::None, 1).unwrap();
        assert_eq!(p[0], f32::INFINITY);
        assert_eq!(p[1].to_bits(), (-0.0f32).to_bits()); // −0 − 0.1·0 = −0
        assert!(p[2].is_nan());
        // with a decay term, 0·inf is NaN, as in NumPy
        let h = Sgd {
            weight_decay: Some(0.0),
            ..SGD
        };
        let mut p = vec![f32::INFINITY];
        sgd_step(&h, &mut p, &[1.0], Buffer::None, 1).unwrap();
        assert!(p[0].is_nan());
    }

    #[test]
    fn adam_edge_values_behave_as_numpy() {
        let (mut p, mut m, mut v) = (vec![-0.0f32, 1.0, 2.0], vec![0.0f32; 3], vec![0.0f32; 3]);
        adam_step(
            &adam(None, None),
            &mut p,
            &mut m,
            &mut v,
            &[0.0, f32::NAN, f32::INFINITY],
            1,
        )
        .unwrap();
        // a zero gradient: m = v = 0, m/denom = 0/eps = 0 and −0 − 0 = −0
        assert_eq!(p[0].to_bits(), (-0.0f32).to_bits());
        assert!(p[1].is_nan() && m[1].is_nan() && v[1].is_nan());
        // an infinite gradient: m/denom = inf/inf = NaN
        assert_eq!(v[2], f32::INFINITY);
        assert!(p[2].is_nan());
        let mut p = vec![3.0f32];
        adam_step(&adam(None, Some(0.5)), &mut p, &mut [0.0], &mut [0.0], &[0.0], 1).unwrap();
        assert_eq!(p[0], 1.5);
    }

    #[test]
    fn chunks_cover_the_array_on_any_thread_count() {
        let n = 2 * CHUNK + 7;
        let g: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let mut want = None;
        for threads in [1, 2, 3] {
            let (mut p, mut m, mut v) = (vec![1.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            adam_step(&adam(Some(0.01), None), &mut p, &mut m, &mut v, &g, threads).unwrap();
            let mut one = (1.0f32, 0.0f32, 0.0f32);
            adam_one(
                &adam(Some(0.01), None),
                &mut one.0,
                &mut one.1,
                &mut one.2,
                g[n - 1],
            );
            assert_eq!(p[n - 1].to_bits(), one.0.to_bits());
            let got = (p, m, v);
            assert!(want.get_or_insert_with(|| got.clone()) == &got);
        }
        assert!(adam_step(
            &adam(None, None),
            &mut [0.0; 2],
            &mut [0.0; 2],
            &mut [0.0; 1],
            &[0.0; 2],
            1
        )
        .is_err());
    }
}
