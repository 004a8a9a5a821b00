//! APB's sparse term S·x of one conv, read straight from the gathered windows: per output position,
//! Σ v·x over the row's non-zeros in CSR order, x the tap's sign (±1), or 0 on the padding — the
//! same products summed in the same order as `bconv_1bit`'s (crate::bconv), so the same bits.

use crate::bconv::Csr;

/// S as (tap, input channel, value) per non-zero, row by row in CSR order.
pub(crate) struct Sparse {
    starts: Vec<usize>,
    taps: Vec<(usize, u32, f32)>,
}

impl Sparse {
    /// S of a conv with `o` rows and columns in the window's (tap, channel) order over `c` channels
    /// (k = taps·c columns).
    pub(crate) fn new(csr: Csr, o: usize, k: usize, c: usize) -> Result<Sparse, String> {
        let rows = crate::spmm::validate(csr.indptr, csr.indices, csr.data.len(), k)
            .map_err(|e| format!("csr: {e}"))?;
        if rows != o {
            return Err(format!(
                "csr has {rows} rows (len(indptr) - 1), but the weights have O = {o}"
            ));
        }
        if csr.data.iter().any(|v| !v.is_finite()) {
            return Err("csr data must be finite".into());
        }
        // validate(): indptr runs from 0 to nnz without decreasing, every column is in [0, k)
        let taps = csr
            .indices
            .iter()
            .zip(csr.data)
            .map(|(&col, &v)| (col as usize / c, (col as usize % c) as u32, v));
        Ok(Sparse {
            starts: csr.indptr.iter().map(|&s| s as usize).collect(),
            taps: taps.collect(),
        })
    }

    /// The non-zeros of output channel `o`.
    #[inline(always)]
    pub(crate) fn row(&self, o: usize) -> &[(usize, u32, f32)] {
        &self.taps[self.starts[o]..self.starts[o + 1]]
    }
}
