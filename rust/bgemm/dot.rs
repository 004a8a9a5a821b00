//! The last few columns by dot products along K, for a family whose vectors run across columns.
//!
//! A microkernel vector holds word `p` of `lanes` neighbouring columns. When N leaves a remainder of
//! `r` columns past the last full vector, that vector still costs a whole XOR + popcount + add per
//! row and word, for `r` useful lanes: at N = 25 on AVX-512 (lanes = 8) a quarter of the work is
//! wasted. Here those `r` columns go another way: a vector holds 8 consecutive words of one A row
//! (or B column), both read in place (no panel), and each output ends with a horizontal sum. Per row
//! and column that is `⌈w / lanes⌉` vector triples plus the sum, against `w` triples for the wasted
//! vector: cheaper when `r·(⌈w / lanes⌉ + SUM_COST) < w`, which [`columns`] decides.

use super::{Kind, OutPtr};

/// A horizontal sum of a vector of 8 u64, in the vector triples (XOR, popcount, add) it costs
/// about: three shuffles and three adds with their latency.
const SUM_COST: usize = 3;

/// How many of the last columns of `n` to compute by dot products: the remainder past the last whole
/// vector when that is cheaper (see the module doc), else 0.
pub(super) fn columns(n: usize, lanes: usize, w: usize) -> usize {
    let r = n % lanes;
    if lanes > 1 && r > 0 && r * (w.div_ceil(lanes) + SUM_COST) < w {
        r
    } else {
        0
    }
}

/// One dot-product call: rows `rows` of A against columns `cols` of B, all of K.
///
/// The driver establishes: `a` holds PA planes of at least `rows.end · w` words, `b` PB planes of at
/// least `cols.end · w` (the kernel re-checks these and computes nothing, returning false, if they
/// fail); `out + i·ld + j` for `i` in `rows`, `j` in `cols` are valid, writable `i32`s that no other
/// thread touches during the call.
pub(crate) struct DotTile<'a> {
    pub a: &'a [&'a [u64]],
    pub b: &'a [&'a [u64]],
    pub w: usize,
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
    pub out: OutPtr,
    pub ld: usize,
    /// `weight_sum · K`: `out = kconst − 2·S`.
    pub kconst: i64,
}

impl DotTile<'_> {
    /// Whether the slice invariants hold for `pa` and `pb` planes.
    pub(crate) fn fits(&self, pa: usize, pb: usize) -> bool {
        let enough = |planes: &[&[u64]], n: usize, end: usize| {
            planes.len() >= n
                && planes[..n]
                    .iter()
                    .all(|p| end.checked_mul(self.w).is_some_and(|e| p.len() >= e))
        };
        enough(self.a, pa, self.rows.end) && enough(self.b, pb, self.cols.end)
    }
}

/// A family's dot-product kernel: [`DotTile`]'s contract, for the planes of `kind`.
///
/// # Safety
/// The CPU supports the family's ISA, and the tile's output is valid as documented on [`DotTile`].
pub(crate) type Dot = unsafe fn(Kind, &DotTile) -> bool;

/// The portable dot products (the tests drive the AVX-512 geometry with it).
///
/// # Safety
/// As for [`Dot`].
#[cfg(test)]
pub(super) unsafe fn portable(kind: Kind, t: &DotTile) -> bool {
    let (pa, pb) = kind.planes();
    if !t.fits(pa, pb) {
        return false;
    }
    for i in t.rows.clone() {
        for j in t.cols.clone() {
            let s = super::reference_sum(&t.a[..pa], &t.b[..pb], t.w, i, j);
            // SAFETY: i in rows, j in cols: inside the tile's output (caller's contract).
            unsafe { *t.out.get().add(i * t.ld + j) = (t.kconst - 2 * s) as i32 };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::columns;

    #[test]
    fn the_remainder_goes_to_dot_products_only_when_cheaper() {
        assert_eq!(columns(25, 8, 72), 1); // the paper's 512 x 4608 x 25: 1·(9 + 3) < 72
        assert_eq!(columns(29, 8, 72), 5); // 5·12 = 60 < 72
        assert_eq!(columns(30, 8, 72), 0); // 6·12 = 72: not cheaper
        assert_eq!(columns(24, 8, 72), 0); // no remainder
        assert_eq!(columns(25, 8, 9), 1); // 1·(2 + 3) < 9
        assert_eq!(columns(2916, 8, 9), 0); // 4·5 = 20 >= 9
        assert_eq!(columns(25, 1, 72), 0); // one lane: never
    }
}
