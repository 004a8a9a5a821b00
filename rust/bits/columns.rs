//! Packing down the columns: a row-major `(k, n)` matrix — im2col's "columns" layout, one column per
//! output position — packs into `(n, words_for(k))` planes, the very words [`super::pack_planes`]
//! makes from its transpose, without ever writing the transposed copy.
//!
//! A block of `BLOCK` neighbouring columns walks down the k rows, reading `BLOCK` contiguous values
//! per row. Eight rows build one byte per column (a compare-and-shift over a row of bytes, which
//! vectorizes); each finished byte is OR-ed into its column's word. A block's words stay in L1, and
//! its output rows are contiguous, so blocks write disjoint slices and the code needs no `unsafe`
//! beyond entering the AVX2 build of the same loop.

use super::{family_or_err, first_invalid, split_planes, words_for, PackError, Source, Split, WORD_BITS};
use crate::isa::Isa;

/// Columns per block: 64 f32 columns are 256 contiguous bytes (four cache lines) of each row.
const BLOCK: usize = 64;

/// OR bit `bit` of every plane's byte for each value of one row segment into `bytes` (one byte per
/// column); returns whether a value is invalid. The compare-and-shift over the row vectorizes.
#[inline(always)]
fn or_row_bits<T: Source<P>, const P: usize>(row: &[T], bit: usize, bytes: &mut [[u8; BLOCK]; P]) -> bool {
    for (p, plane) in bytes.iter_mut().enumerate() {
        for (slot, &v) in plane.iter_mut().zip(row) {
            *slot |= u8::from(v.bits()[p]) << bit;
        }
    }
    row.iter().fold(false, |b, v| b | v.invalid())
}

/// Pack the columns `c0 .. c0 + width` (`width ≤ BLOCK`) of the `(k, n)` matrix `x` into `outs`,
/// the `width · words_for(k)` words of those output rows in each plane. Returns false if a value is
/// invalid. Slices that are too short are skipped (the driver checks every length first).
#[inline(always)]
fn pack_block<T: Source<P>, const P: usize>(
    x: &[T],
    (k, n): (usize, usize),
    (c0, width): (usize, usize),
    outs: &mut [&mut [u64]; P],
) -> bool {
    let words = words_for(k);
    let mut bad = false;
    for w in 0..words {
        let mut acc = [[0u64; BLOCK]; P];
        let rows_in_word = (k - WORD_BITS * w).min(WORD_BITS);
        for byte in 0..rows_in_word.div_ceil(8) {
            let mut bytes = [[0u8; BLOCK]; P];
            for bit in 0..(rows_in_word - 8 * byte).min(8) {
                let start = (WORD_BITS * w + 8 * byte + bit) * n + c0;
                if let Some(row) = x.get(start..start + width) {
                    bad |= or_row_bits(row, bit, &mut bytes);
                }
            }
            for (a, b) in acc.iter_mut().zip(&bytes) {
                for (word, &byte_bits) in a.iter_mut().zip(b) {
                    *word |= u64::from(byte_bits) << (8 * byte);
                }
            }
        }
        for (out, a) in outs.iter_mut().zip(&acc) {
            for (c, &word) in a[..width].iter().enumerate() {
                if let Some(dst) = out.get_mut(c * words + w) {
                    *dst = word;
                }
            }
        }
    }
    !bad
}

/// Every block of one task: columns `c0 ..` of `x`, as many as `outs` has rows.
#[inline(always)]
fn pack_task<T: Source<P>, const P: usize>(
    x: &[T],
    kn: (usize, usize),
    c0: usize,
    outs: [&mut [u64]; P],
) -> bool {
    let words = words_for(kn.0);
    let mut ok = true;
    for (b, mut block) in split_planes(outs, BLOCK * words).into_iter().enumerate() {
        let width = block[0].len() / words;
        ok &= pack_block(x, kn, (c0 + b * BLOCK, width), &mut block);
    }
    ok
}

/// The same loop compiled with AVX2 enabled, so the compares and shifts use 256-bit vectors.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_task_avx2<T: Source<P>, const P: usize>(
    x: &[T],
    kn: (usize, usize),
    c0: usize,
    outs: [&mut [u64]; P],
) -> bool {
    pack_task(x, kn, c0, outs)
}

/// Pack `batch` row-major `(k, n)` matrices, one after another in `x` (a `(batch, k, n)` array, e.g. a
/// batch of NCHW maps with `k` = channels and `n` = pixels), down their columns into `P` row-major
/// `(batch·n, words_for(k))` planes: each matrix's `n` packed rows, one matrix after another. The
/// [`super::Family`] of `isa` picks the build of the loop (AVX2 for the avx2 and avx512 families,
/// portable otherwise; the bits are the same). Threads take column ranges of about `split.task_bytes` of input within each matrix when
/// there are at least `split.min_bytes`. Errors instead of panicking on lengths that disagree or an
/// invalid value (reported at row `b·k + t`, column `j`; `outs` are then unspecified).
pub fn pack_columns<T: Source<P>, const P: usize>(
    x: &[T],
    batch: usize,
    k: usize,
    outs: [&mut [u64]; P],
    threads: usize,
    isa: Isa,
    split: Split,
) -> Result<(), PackError> {
    let fam = family_or_err(isa)?;
    let words = words_for(k);
    let n = x.len().checked_div(k.saturating_mul(batch)).unwrap_or(0);
    let expected = (n * k).checked_mul(batch);
    if ((k == 0 || batch == 0) && !x.is_empty())
        || expected != Some(x.len())
        || outs
            .iter()
            .any(|o| Some(o.len()) != (n * words).checked_mul(batch))
    {
        return Err(PackError::Length(format!(
            "x has {} values ({batch} matrices of k = {k} rows), outputs have {:?} words; expected {} words each",
            x.len(),
            outs.iter().map(|o| o.len()).collect::<Vec<_>>(),
            n.saturating_mul(words).saturating_mul(batch)
        )));
    }
    if n == 0 || batch == 0 {
        return Ok(());
    }
    // The family asks for the AVX2 build; AVX2 itself is checked too, as that build requires it.
    let simd = fam.columns_avx2 && Isa::Avx2.is_available();
    let run = |(b, c0, os): (usize, usize, [&mut [u64]; P])| -> bool {
        let x = &x[b * k * n..(b + 1) * k * n];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` holds only if the CPU has AVX2 (checked just above), the function's one
            // requirement; it bounds-checks every slice itself.
            return unsafe { pack_task_avx2(x, (k, n), c0, os) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        pack_task(x, (k, n), c0, os)
    };
    // Tasks: column ranges of about split.task_bytes of input within each matrix.
    let col_bytes = k * size_of::<T>();
    let cols_per_task = (split.task_bytes / col_bytes).div_ceil(BLOCK).max(1) * BLOCK;
    let mut tasks = Vec::new();
    for (b, matrix_outs) in split_planes(outs, n * words).into_iter().enumerate() {
        let ranges = (0..n)
            .step_by(cols_per_task)
            .zip(split_planes(matrix_outs, cols_per_task * words));
        tasks.extend(ranges.map(|(c0, os)| (b, c0, os)));
    }
    let no_bad = if threads > 1 && tasks.len() > 1 && size_of_val(x) >= split.min_bytes {
        crate::threads::run_claimed(threads, tasks, run).map_err(PackError::Threads)?
    } else {
        tasks.into_iter().fold(true, |ok, task| run(task) & ok)
    };
    if no_bad {
        return Ok(());
    }
    Err(first_invalid(x, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::{pack_planes_split, SPLIT};
    use crate::test_rng::Rng;

    fn transpose<T: Copy>(x: &[T], k: usize, n: usize) -> Vec<T> {
        (0..n).flat_map(|j| (0..k).map(move |t| x[t * n + j])).collect()
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        // Signs, zeros and -0.0 in no particular order.
        let mut rng = Rng(seed | 1);
        (0..len)
            .map(|_| rng.pick(&[0.0, -0.0, -2.5e-3, -1.5e-3, -0.5e-3, 0.5e-3, 1.5e-3, 2.5e-3]))
            .collect()
    }

    #[test]
    fn columns_pack_like_the_transposed_rows() {
        let small = Split {
            min_bytes: 0,
            task_bytes: 64,
        };
        for &(k, n) in &[
            (1, 1),
            (1, 200),
            (63, 5),
            (64, 64),
            (65, 130),
            (577, 67),
            (144, 1),
        ] {
            let x = values(k * n, (k * 1000 + n) as u64);
            let xt = transpose(&x, k, n);
            let mut want = vec![0u64; n * words_for(k)];
            pack_planes_split::<f32, 1>(&xt, k, [&mut want], 1, Isa::Scalar, SPLIT).unwrap();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                if !isa.is_available() {
                    continue;
                }
                for (threads, split) in [(1, SPLIT), (3, small)] {
                    let mut got = vec![u64::MAX; n * words_for(k)];
                    pack_columns::<f32, 1>(&x, 1, k, [&mut got], threads, isa, split).unwrap();
                    assert_eq!(got, want, "k = {k}, n = {n}, {isa}, {threads} threads");
                }
            }
            let v: Vec<i8> = x
                .iter()
                .map(|&f| {
                    if f < 0.0 {
                        -3
                    } else if f == 0.0 {
                        1
                    } else {
                        3
                    }
                })
                .collect();
            let (mut hi, mut lo) = (vec![0u64; n * words_for(k)], vec![0u64; n * words_for(k)]);
            pack_planes_split::<i8, 2>(&transpose(&v, k, n), k, [&mut hi, &mut lo], 1, Isa::Scalar, SPLIT)
                .unwrap();
            let (mut hi2, mut lo2) = (vec![0u64; hi.len()], vec![0u64; lo.len()]);
            pack_columns::<i8, 2>(&v, 1, k, [&mut hi2, &mut lo2], 2, Isa::Scalar, small).unwrap();
            assert_eq!((hi2, lo2), (hi, lo), "2-bit, k = {k}, n = {n}");
        }
    }

    #[test]
    fn a_batch_packs_like_its_matrices_one_by_one() {
        let small = Split {
            min_bytes: 0,
            task_bytes: 64,
        };
        for &(batch, k, n) in &[(1, 16, 1024), (3, 1, 5), (4, 65, 70), (2, 64, 1), (5, 3, 129)] {
            let x = values(batch * k * n, (batch * 7 + k * 1000 + n) as u64);
            let words = words_for(k);
            let mut want = vec![0u64; batch * n * words];
            for (xb, wb) in x.chunks(k * n).zip(want.chunks_mut(n * words)) {
                pack_columns::<f32, 1>(xb, 1, k, [wb], 1, Isa::Scalar, SPLIT).unwrap();
            }
            for isa in crate::isa::available() {
                for (threads, split) in [(1, SPLIT), (3, small)] {
                    let mut got = vec![u64::MAX; batch * n * words];
                    pack_columns::<f32, 1>(&x, batch, k, [&mut got], threads, isa, split).unwrap();
                    assert_eq!(
                        got, want,
                        "batch = {batch}, k = {k}, n = {n}, {isa}, {threads} threads"
                    );
                }
            }
        }
        // An invalid value in matrix b, row t, column j is reported at row b·k + t.
        let mut x = vec![1.0f32; 3 * 4 * 10];
        x[(2 * 4 + 1) * 10 + 7] = f32::NAN;
        let mut out = vec![0u64; 3 * 10];
        let err = pack_columns::<f32, 1>(&x, 3, 4, [&mut out], 2, Isa::Scalar, small).unwrap_err();
        assert_eq!(err, PackError::Invalid { row: 9, col: 7 });
        let mut short = vec![0u64; 3 * 10 - 1];
        assert!(pack_columns::<f32, 1>(&x, 3, 4, [&mut short], 1, Isa::Scalar, SPLIT).is_err());
        assert!(pack_columns::<f32, 1>(&x, 0, 4, [&mut out], 1, Isa::Scalar, SPLIT).is_err());
    }

    #[test]
    fn errors_name_the_first_bad_value_and_bad_lengths() {
        let mut x = vec![1.0f32; 3 * 70];
        x[2 * 70 + 5] = f32::NAN;
        let mut out = vec![0u64; 70];
        let err = pack_columns::<f32, 1>(&x, 1, 3, [&mut out], 1, Isa::Scalar, SPLIT).unwrap_err();
        assert_eq!(err, PackError::Invalid { row: 2, col: 5 });
        let err = pack_columns::<f32, 1>(&x[1..], 1, 3, [&mut out], 1, Isa::Scalar, SPLIT).unwrap_err();
        assert!(matches!(err, PackError::Length(_)));
        // The flag also comes back from worker threads.
        let big_split = Split {
            min_bytes: 0,
            task_bytes: 64,
        };
        let mut out3 = vec![0u64; 70];
        let err = pack_columns::<f32, 1>(&x, 1, 3, [&mut out3], 3, Isa::Scalar, big_split).unwrap_err();
        assert_eq!(err, PackError::Invalid { row: 2, col: 5 });
        let mut short = vec![0u64; 69];
        assert!(pack_columns::<f32, 1>(&x, 1, 3, [&mut short], 1, Isa::Scalar, SPLIT).is_err());
    }
}
