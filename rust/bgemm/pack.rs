//! Packing of B column panels for the microkernels.
//!
//! A panel holds `nc` consecutive columns (rows of the packed B operand) of every plane, interleaved so
//! that a microkernel streams it front to back: for each word index `p` in `0..w`, for each plane, the
//! `nc` words `b[plane][(c0 + c) * w + p]`, `c` in `0..nc`. Columns past the end of B are zero words
//! (their results are computed and thrown away). One vector load of `lanes` words then holds word `p`
//! of `lanes` neighbouring columns.

/// Words a panel of `nc` columns, `planes` planes and `w` words per column occupies.
pub fn panel_len(w: usize, planes: usize, nc: usize) -> usize {
    w * planes * nc
}

/// Pack columns `c0 .. c0 + cols` of `planes` (each row-major `(n, w)`) into `dst`, `nc >= cols`
/// columns wide, zero-filling columns `cols .. nc`. `dst` is resized to [`panel_len`].
///
/// Columns that fall outside a plane (a caller bug) are packed as zeros rather than read out of bounds.
pub fn pack_panel(planes: &[&[u64]], w: usize, c0: usize, cols: usize, nc: usize, dst: &mut Vec<u64>) {
    let np = planes.len();
    let stride = np * nc; // words between word p and word p + 1 of one column
    dst.clear();
    dst.resize(panel_len(w, np, nc), 0);
    if w == 0 {
        return;
    }
    for (pi, plane) in planes.iter().enumerate() {
        for c in 0..cols.min(nc) {
            let start = (c0 + c) * w;
            let Some(col) = plane.get(start..start + w) else {
                continue;
            };
            // Word p of this column goes to dst[p * stride + pi * nc + c]; the iterator visits exactly
            // those positions (w of them, since dst has w * stride words), so there is no indexing.
            for (d, &v) in dst[pi * nc + c..].iter_mut().step_by(stride).zip(col) {
                *d = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_zero_fill() {
        // Two planes of 3 columns, w = 2; panel of columns 1..3 padded to nc = 4.
        let hi: Vec<u64> = (0..6).collect(); // column c, word p = 2c + p
        let lo: Vec<u64> = (100..106).collect();
        let mut dst = Vec::new();
        pack_panel(&[&hi, &lo], 2, 1, 2, 4, &mut dst);
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
        let mut dst = vec![1; 3];
        pack_panel(&[&b], 2, 1, 3, 3, &mut dst);
        assert_eq!(dst, vec![7, 0, 0, 7, 0, 0]);
    }
}
