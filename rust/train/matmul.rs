//! The one dense float32 product of the training kernels: `gemm::gemm` (sarah-quinones/gemm) on
//! strided views. Chosen over `matrixmultiply` because it measured as fast or faster on every conv
//! shape of ResNet-20 here, most of all with 16 output channels (M = 16: 1.5x), and it picks its
//! AVX2/AVX-512 kernels at run time. It runs single-threaded: the callers split work over images.

use gemm::Parallelism;

/// A float32 matrix view: element (r, c) is `data[r·rs + c·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major contiguous (rows, cols) matrix.
    pub fn rows_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .zip((self.cols - 1).checked_mul(self.cs))
            .and_then(|(a, b)| a.checked_add(b));
        matches!(last, Some(l) if l < self.data.len() && self.rs <= isize::MAX as usize && self.cs <= isize::MAX as usize)
    }
}

/// `dst = a·b`, or `dst += a·b` with `accumulate`; `dst` is row-major (a.rows, b.cols).
pub fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) -> Result<(), String> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || m.checked_mul(n) != Some(dst.len()) || !a.fits() || !b.fits() {
        return Err(format!(
            "matmul: shapes do not match: ({m}, {k}) x ({}, {n}) into {} elements",
            b.rows,
            dst.len()
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: every element of a, b (checked by `fits`) and dst (m·n contiguous) is in bounds; the
    // strides fit isize (checked by `fits`); dst does not alias a or b (a &mut and two & borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View, b: View) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    out[i * b.cols + j] +=
                        a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (16, 9, 33), (17, 40, 5)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            let (va, vb) = (View::rows_major(&a, m, k), View::rows_major(&b, k, n));
            let want = naive(va, vb);
            let mut got = vec![1.0; m * n];
            matmul(&mut got, va, vb, false).unwrap();
            assert!(got.iter().zip(&want).all(|(g, w)| *g as f64 == *w), "{m}x{k}x{n}");
            // (bᵀ aᵀ)ᵀ = a b, through transposed views; accumulation adds to what is there
            let mut twice = got.clone();
            let mut t = vec![0.0; n * m];
            matmul(&mut t, vb.t(), va.t(), false).unwrap();
            matmul(&mut twice, va, vb, true).unwrap();
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(t[j * m + i] as f64, want[i * n + j]);
                    assert_eq!(twice[i * n + j] as f64, 2.0 * want[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes_and_views_out_of_bounds() {
        let a = vec![0.0; 6];
        let mut d = vec![0.0; 4];
        assert!(matmul(
            &mut d,
            View::rows_major(&a, 2, 3),
            View::rows_major(&a, 2, 3),
            false
        )
        .is_err());
        let big = View {
            data: &a,
            rows: 2,
            cols: 3,
            rs: 4,
            cs: 1,
        };
        assert!(matmul(&mut d, big, View::rows_major(&a, 3, 2), false).is_err());
    }
}
