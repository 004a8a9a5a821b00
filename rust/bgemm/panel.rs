//! B column panels for the microkernels: the sign-bit words of B, reordered.
//!
//! A panel holds `nc` consecutive columns (rows of the bit-packed B operand) of every plane, interleaved
//! so that a microkernel streams it front to back: for each word index `p` in `0..w`, for each plane, the
//! `nc` words `b[plane][(c0 + c) * w + p]`, `c` in `0..nc`. Columns past the end of B are zero words
//! (their results are computed and thrown away). One vector load of `lanes` words then holds word `p`
//! of `lanes` neighbouring columns.
//!
//! A family without a vector popcount (AVX2) asks for [`nibbles`]: every word is stored as two
//! words, its low and its high nibbles, so `w` becomes `2·w` and the panel and A rows alike hold
//! nibble words, whose every byte is a value in 0..16 (one table lookup from its popcount).

/// Low nibble of every byte.
const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;

/// A word as its (low, high) nibble words: `popcount(x ^ y)` is the sum of the popcounts of the
/// XORs of the halves, and every byte of a half is below 16.
#[inline]
pub(super) fn nibbles(v: u64) -> [u64; 2] {
    [v & LOW_NIBBLES, (v >> 4) & LOW_NIBBLES]
}

/// A whole operand plane in nibble words (`2·len` words, row layout kept: row `r` of `w` words
/// becomes row `r` of `2·w`).
pub(super) fn split_nibbles(plane: &[u64]) -> Vec<u64> {
    let mut out = vec![0u64; 2 * plane.len()];
    // Row `r`'s word `p` becomes words 2p and 2p + 1 of row `r`: pairs in order.
    for (pair, &v) in out.chunks_exact_mut(2).zip(plane) {
        pair.copy_from_slice(&nibbles(v));
    }
    out
}

/// A panel filler: [`fill_panel`] or an ISA's own with its contract (`unsafe`: it may need the ISA).
pub(super) type Fill = unsafe fn(&[&[u64]], usize, usize, usize, usize, bool, &mut [u64]) -> bool;

/// Words a panel of `nc` columns, `planes` planes and `w` words per column occupies.
pub(super) fn panel_len(w: usize, planes: usize, nc: usize) -> usize {
    w * planes * nc
}

/// Copy columns `c0 .. c0 + cols` of `planes` (each row-major `(n, w)`) into `dst`, `nc >= cols`
/// columns wide, zero-filling columns `cols .. nc`. `dst` holds [`panel_len`] words (of `2·w` if
/// `split`, which stores every word as its two [`nibbles`]); a shorter one is a caller bug: nothing
/// is written and the result is false.
///
/// Columns that fall outside a plane (a caller bug) are filled with zeros rather than read out of bounds.
pub(super) fn fill_panel(
    planes: &[&[u64]],
    w: usize,
    c0: usize,
    cols: usize,
    nc: usize,
    split: bool,
    dst: &mut [u64],
) -> bool {
    let np = planes.len();
    let stride = np * nc; // words between word p and word p + 1 of one column
    let len = panel_len(if split { 2 * w } else { w }, np, nc);
    if dst.len() < len {
        return false;
    }
    if w == 0 {
        return true;
    }
    let dst = &mut dst[..len];
    dst.fill(0);
    let cols = cols.min(nc);
    for (pi, plane) in planes.iter().enumerate() {
        // The columns' words; columns past the plane's end (a caller bug) stay zero.
        let have = (plane.len() / w).saturating_sub(c0).min(cols);
        let src = plane.get(c0 * w..(c0 + have) * w).unwrap_or(&[]);
        let cols = src.len() / w;
        // dst is word-major: the `nc` slots of (word p, plane pi) are dst[p·stride + pi·nc ..][..nc];
        // fill them word by word, so writes are contiguous and reads stride through the columns.
        if split {
            for (p, out) in dst.chunks_exact_mut(2 * stride).enumerate() {
                let (lo, hi) = out.split_at_mut(stride);
                for c in 0..cols {
                    let [l, h] = nibbles(src[c * w + p]);
                    lo[pi * nc + c] = l;
                    hi[pi * nc + c] = h;
                }
            }
        } else {
            for (p, out) in dst.chunks_exact_mut(stride).enumerate() {
                for c in 0..cols {
                    out[pi * nc + c] = src[c * w + p];
                }
            }
        }
    }
    true
}

/// Panel storage that starts on a cache line, so that a microkernel's vector loads (whole multiples
/// of 8 words from the start) never straddle two lines.
pub(super) type Words = crate::lines::OnLines<u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_zero_fill() {
        // Two planes of 3 columns, w = 2; panel of columns 1..3 padded to nc = 4.
        let hi: Vec<u64> = (0..6).collect(); // column c, word p = 2c + p
        let lo: Vec<u64> = (100..106).collect();
        let mut dst = vec![9; 16];
        assert!(fill_panel(&[&hi, &lo], 2, 1, 2, 4, false, &mut dst));
        #[rustfmt::skip]
        let want = vec![
            2, 4, 0, 0, /* lo */ 102, 104, 0, 0, // p = 0
            3, 5, 0, 0, /* lo */ 103, 105, 0, 0, // p = 1
        ];
        assert_eq!(dst, want);
    }

    #[test]
    fn out_of_range_columns_are_zero_not_a_panic() {
        let b = vec![7u64; 4];
        let mut dst = vec![1; 6];
        assert!(fill_panel(&[&b], 2, 1, 3, 3, false, &mut dst));
        assert_eq!(dst, vec![7, 0, 0, 7, 0, 0]);
        // a panel buffer too short for the panel: refused, untouched
        let mut short = vec![1; 5];
        assert!(!fill_panel(&[&b], 2, 1, 3, 3, false, &mut short));
        assert_eq!(short, vec![1; 5]);
    }

    #[test]
    fn nibble_split_panels_hold_both_halves_of_each_word() {
        let b: Vec<u64> = vec![0xabcd, u64::MAX, 0x0102_0304_0506_0708, 0]; // 2 columns, w = 2
        let mut dst = vec![9; 12];
        assert!(fill_panel(&[&b], 2, 0, 2, 3, true, &mut dst));
        #[rustfmt::skip]
        let want = vec![
            0x0b0d, 0x0102_0304_0506_0708, 0, // word 0, low nibbles
            0x0a0c, 0, 0,                     // word 0, high nibbles
            LOW_NIBBLES, 0, 0,                // word 1, low
            LOW_NIBBLES, 0, 0,                // word 1, high
        ];
        assert_eq!(dst, want);
        assert_eq!(
            split_nibbles(&b[..2]),
            vec![0x0b0d, 0x0a0c, LOW_NIBBLES, LOW_NIBBLES]
        );
        for v in [0u64, 1, 0xf0, u64::MAX, 0x8000_0000_0000_0001] {
            let [lo, hi] = nibbles(v);
            assert_eq!(lo.count_ones() + hi.count_ones(), v.count_ones());
            assert_eq!((lo | hi) & !LOW_NIBBLES, 0);
        }
    }
}
