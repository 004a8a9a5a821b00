//! Cross-entropy with label smoothing (`CrossEntropy` in `apb_ref/ops/norm_loss.py`), forward and
//! backward, rows over threads.
//!
//! The targets are t = (1 − ε)·onehot(y) + ε/K, formed in float32 as NumPy forms them: ε/K rounded
//! to float32 everywhere, (1 − ε) rounded to float32 and added at the label. The shifts x − max(x)
//! are NumPy's bit for bit; exp and log come from the system's libm, not NumPy's SIMD routines, and
//! the row sums of exp(x − max) and the loss's sum of t·log p run in f64, so the results agree with
//! NumPy's within a few ulps (the tests derive the bound).

use crate::threads;

/// Elements per task (whole rows).
const CHUNK: usize = 1 << 14;

/// The smoothed targets' two values, as float32.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    /// ε/K, the target of every class but the label
    pub off: f32,
    /// ε/K + (1 − ε), the label's target
    pub on: f32,
}

impl Targets {
    /// From the Python floats ε/K and 1 − ε: `np.full(.., ε/K, float32)`, then `t[label] += 1 − ε`.
    pub fn new(off: f64, on: f64) -> Self {
        let off = off as f32;
        Targets {
            off,
            on: off + on as f32,
        }
    }

    #[inline(always)]
    fn of(&self, class: usize, label: usize) -> f32 {
        if class == label {
            self.on
        } else {
            self.off
        }
    }
}

/// The labels as indices below k, or an error naming the first bad one.
fn labels(target: &[i64], k: usize) -> Result<Vec<usize>, String> {
    target
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            usize::try_from(y)
                .ok()
                .filter(|&y| y < k)
                .ok_or_else(|| format!("target[{i}] = {y} is not a class in [0, {k})"))
        })
        .collect()
}

fn rows_per_task(k: usize) -> usize {
    (CHUNK / k.max(1)).max(1)
}

/// NumPy's `max`: NaN if the row has one, else the largest value.
fn row_max(row: &[f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &v in row {
        if v.is_nan() {
            return v;
        }
        if v > m {
            m = v;
        }
    }
    m
}

/// One row: logp = (x − max) − log Σ exp(x − max); returns Σ t·logp (f64).
fn forward_row(x: &[f32], label: usize, t: &Targets, logp: &mut [f32]) -> f64 {
    let m = row_max(x);
    let sum: f64 = x.iter().map(|&v| f64::from((v - m).exp())).sum();
    let lse = sum.ln() as f32;
    let mut total = 0.0f64;
    for (j, (o, &v)) in logp.iter_mut().zip(x).enumerate() {
        *o = (v - m) - lse;
        total += f64::from(t.of(j, label) * *o);
    }
    total
}

/// The forward pass over (n, k) logits `x`: fills `logp` and returns Σ_ij t_ij·logp_ij (the loss is
/// −that/n).
pub fn forward(
    x: &[f32],
    k: usize,
    target: &[i64],
    t: &Targets,
    logp: &mut [f32],
    threads: usize,
) -> Result<f64, String> {
    let n = target.len();
    if k == 0 || Some(x.len()) != n.checked_mul(k) || logp.len() != x.len() {
        return Err(format!(
            "logits have {} elements and logp {}, expected {n} rows of k = {k} >= 1",
            x.len(),
            logp.len()
        ));
    }
    let labels = labels(target, k)?;
    let rows = rows_per_task(k);
    let mut partial = vec![0.0f64; n.div_ceil(rows)];
    let items: Vec<_> = x
        .chunks(rows * k)
        .zip(logp.chunks_mut(rows * k))
        .zip(labels.chunks(rows))
        .zip(partial.iter_mut())
        .collect();
    threads::run_claimed(threads, items, |(((xs, ls), ys), out)| {
        *out = xs
            .chunks(k)
            .zip(ls.chunks_mut(k))
            .zip(ys)
            .map(|((xr, lr), &y)| forward_row(xr, y, t, lr))
            .sum();
        true
    })?;
    Ok(partial.iter().sum())
}

/// The gradient g·(exp(logp) − t)/n over (n, k) `logp`, each element as NumPy orders it.
pub fn backward(
    g: f32,
    logp: &[f32],
    k: usize,
    target: &[i64],
    t: &Targets,
    out: &mut [f32],
    threads: usize,
) -> Result<(), String> {
    let n = target.len();
    if k == 0 || Some(logp.len()) != n.checked_mul(k) || out.len() != logp.len() {
        return Err(format!(
            "logp has {} elements, expected {n} rows of k = {k} >= 1",
            logp.len()
        ));
    }
    let labels = labels(target, k)?;
    let rows = rows_per_task(k);
    let n_div = n as f32;
    let items: Vec<_> = logp
        .chunks(rows * k)
        .zip(out.chunks_mut(rows * k))
        .zip(labels.chunks(rows))
        .collect();
    threads::run_claimed(threads, items, |((ls, os), ys)| {
        for ((lr, or), &y) in ls.chunks(k).zip(os.chunks_mut(k)).zip(ys) {
            for (j, (o, &l)) in or.iter_mut().zip(lr).enumerate() {
                *o = g * (l.exp() - t.of(j, y)) / n_div;
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
    fn a_row_of_equal_logits_is_uniform() {
        let t = Targets::new(0.0, 1.0);
        let mut logp = [0.0f32; 4];
        let s = forward(&[3.0; 4], 4, &[2], &t, &mut logp, 1).unwrap();
        assert!(logp.iter().all(|&l| l == -(4.0f64.ln() as f32)));
        assert_eq!(s, f64::from(logp[2]));
        let mut gx = [0.0f32; 4];
        backward(1.0, &logp, 4, &[2], &t, &mut gx, 1).unwrap();
        assert!((gx[2] + 0.75).abs() < 1e-6 && (gx[0] - 0.25).abs() < 1e-6);
    }

    #[test]
    fn edge_values_behave_as_numpy() {
        let t = Targets::new(0.1 / 3.0, 0.9);
        assert_eq!(t.on, (0.1f64 / 3.0) as f32 + 0.9f32);
        let mut logp = [0.0f32; 6];
        // a NaN row is NaN throughout (max is NaN); +inf makes inf − inf = NaN; −inf is a zero probability
        let s = forward(
            &[0.0, f32::NAN, 1.0, 2.0, f32::NEG_INFINITY, 0.0],
            3,
            &[0, 0],
            &t,
            &mut logp,
            1,
        )
        .unwrap();
        assert!(logp[..3].iter().all(|l| l.is_nan()) && s.is_nan());
        assert_eq!(logp[4], f32::NEG_INFINITY);
        let mut row = [0.0f32; 3];
        forward(&[f32::INFINITY, 0.0, 0.0], 3, &[1], &t, &mut row, 1).unwrap();
        assert!(row[0].is_nan());
        assert!(forward(&[0.0; 3], 3, &[3], &t, &mut row, 1).is_err());
        assert!(forward(&[0.0; 3], 3, &[-1], &t, &mut row, 1).is_err());
        assert!(backward(1.0, &[0.0; 3], 3, &[0, 0], &t, &mut row, 1).is_err());
    }

    #[test]
    fn rows_are_the_same_on_any_thread_count() {
        let (n, k) = (3000, 10);
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
        let y: Vec<i64> = (0..n as i64).map(|i| i % k as i64).collect();
        let t = Targets::new(0.01, 0.9);
        let mut one = vec![0.0f32; n * k];
        let s1 = forward(&x, k, &y, &t, &mut one, 1).unwrap();
        for threads in [2, 3] {
            let mut got = vec![0.0f32; n * k];
            assert_eq!(
                forward(&x, k, &y, &t, &mut got, threads).unwrap().to_bits(),
                s1.to_bits()
            );
            assert_eq!(got, one);
        }
    }
}
