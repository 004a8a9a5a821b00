//! APB's sparse term S·x of one conv, read straight from the gathered windows: per output position,
//! Σ v·x over the row's non-zeros in CSR order, x the tap's sign (±1), or 0 on the padding — the
//! same products summed in the same order as `bconv_1bit`'s (crate::bconv), so the same bits.

use crate::bconv::Csr;

/// S per non-zero, row by row in CSR order.
pub(crate) struct Sparse {
    starts: Vec<usize>,
    taps: Vec<Tap>,
}

/// A non-zero of S, as the kernel reads it: its tap, the 32-bit half of the window word that holds
/// its input channel (2·tap + channel / 32), the shift that brings the channel's bit to the sign
/// bit, and the value's bits.
#[derive(Clone, Copy)]
pub(crate) struct Tap {
    pub tap: usize,
    pub half: usize,
    pub up: u32,
    pub v: u32,
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
        let taps = csr.indices.iter().zip(csr.data).map(|(&col, &v)| {
            let (tap, ch) = (col as usize / c, col as usize % c);
            Tap {
                tap,
                half: 2 * tap + ch / 32,
                up: 31 - (ch % 32) as u32,
                v: v.to_bits(),
            }
        });
        Ok(Sparse {
            starts: csr.indptr.iter().map(|&s| s as usize).collect(),
            taps: taps.collect(),
        })
    }

    /// The non-zeros of output channel `o`.
    #[inline(always)]
    pub(crate) fn row(&self, o: usize) -> &[Tap] {
        &self.taps[self.starts[o]..self.starts[o + 1]]
    }
}
