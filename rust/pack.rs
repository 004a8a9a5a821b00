//! Bit packing of ±1 and 2-bit matrices (pure Rust, no Python).
//!
//! Element `k` of a row goes to word `k / 64`, bit `k % 64`; padding bits past K stay 0.
//!
//! * 1-bit (`pack_rows`): the bit is 1 when the value is < 0 (so +0.0 and -0.0 both give bit 0, i.e.
//!   +1). Works on float32 (NaN is refused) and int8.
//! * masks (`pack_mask_rows`): bytes of a boolean array, packed as they are (non-zero -> bit 1).
//! * 2-bit (`pack_2bit_rows`): v in {-3, -1, 1, 3} is v = 2·hi + lo with hi, lo in {±1}; bit 1 = -1, so
//!   hi bit = 1[v < 0] and lo bit = 1[v ∈ {1, -3}]. Any other value is refused.

use rayon::prelude::*;

/// Bits per packed word.
pub const WORD_BITS: usize = 64;

/// Below this many input elements threading costs more than it saves; also the size of one task.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// Number of u64 words that hold `k` bits.
pub fn words_for(k: usize) -> usize {
    k.div_ceil(WORD_BITS)
}

/// Mask of the bits of the last word of a row that hold real elements (all ones when 64 | k).
pub fn last_word_mask(k: usize) -> u64 {
    match k % WORD_BITS {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

/// First row (of a row-major `(rows, words_for(k))` packed matrix) whose padding bits are not all 0.
pub fn first_bad_padding(packed: &[u64], k: usize) -> Option<usize> {
    let words = words_for(k);
    let pad = !last_word_mask(k);
    if pad == 0 || words == 0 {
        return None;
    }
    packed
        .chunks_exact(words)
        .position(|row| row.last().is_some_and(|&w| w & pad != 0))
}

/// Why a packing routine refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// `x` holds a value the packing cannot represent (NaN for 1-bit, a value outside {-3, -1, 1, 3}
    /// for 2-bit); `(row, col)` is the first one.
    Invalid { row: usize, col: usize },
    /// `x`, `k` and `out` do not describe the same matrix.
    Length(String),
}

/// An element type that packs to `P` bit planes.
///
/// `bits` gives the bit of each plane; `invalid` flags a value that has no packing.
pub trait Source<const P: usize>: Copy + Send + Sync {
    fn bits(self) -> [bool; P];
    fn invalid(self) -> bool;
}

impl Source<1> for f32 {
    #[inline(always)]
    fn bits(self) -> [bool; 1] {
        [self < 0.0] // -0.0 < 0.0 is false: -0.0 packs as +1
    }
    #[inline(always)]
    fn invalid(self) -> bool {
        self.is_nan()
    }
}

impl Source<1> for i8 {
    #[inline(always)]
    fn bits(self) -> [bool; 1] {
        [self < 0]
    }
    #[inline(always)]
    fn invalid(self) -> bool {
        false
    }
}

/// A byte of a NumPy boolean array: non-zero is True, packed as bit 1.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct MaskByte(pub u8);

impl Source<1> for MaskByte {
    #[inline(always)]
    fn bits(self) -> [bool; 1] {
        [self.0 != 0]
    }
    #[inline(always)]
    fn invalid(self) -> bool {
        false
    }
}

macro_rules! two_bit_source {
    ($($t:ty => $three:expr, $one:expr;)*) => {$(
        impl Source<2> for $t {
            #[inline(always)]
            fn bits(self) -> [bool; 2] {
                // hi = sign(v); lo = sign(v - 2 hi): v = 3 -> (+,+), 1 -> (+,-), -1 -> (-,+), -3 -> (-,-).
                [self < (0 as $t), self == $one || self == -$three]
            }
            #[inline(always)]
            fn invalid(self) -> bool {
                !(self == $three || self == $one || self == -$one || self == -$three)
            }
        }
    )*};
}

two_bit_source! {
    f32 => 3.0, 1.0;
    f64 => 3.0, 1.0;
    i8 => 3, 1;
    i16 => 3, 1;
    i32 => 3, 1;
    i64 => 3, 1;
}

/// Bits of up to 64 values (the short last word of a row), and whether any of them is invalid.
#[inline(always)]
fn pack_tail<T: Source<P>, const P: usize>(values: &[T]) -> ([u64; P], bool) {
    let (mut words, mut bad) = ([0u64; P], false);
    for (bit, &v) in values.iter().enumerate() {
        let b = v.bits();
        for (w, set) in words.iter_mut().zip(b) {
            *w |= u64::from(set) << bit;
        }
        bad |= v.invalid();
    }
    (words, bad)
}

/// Bits of exactly 64 values, and whether any of them is invalid.
///
/// Built a byte at a time: LLVM vectorizes the 8-lane compare-and-shift; measured about 3x faster
/// than one 64-bit shift per value.
#[inline(always)]
fn pack_word<T: Source<P>, const P: usize>(values: &[T; WORD_BITS]) -> ([u64; P], bool) {
    let (mut words, mut bad) = ([0u64; P], false);
    for (byte, lanes) in values.as_chunks::<8>().0.iter().enumerate() {
        let mut masks = [0u8; P];
        for (bit, &v) in lanes.iter().enumerate() {
            let b = v.bits();
            for (m, set) in masks.iter_mut().zip(b) {
                *m |= u8::from(set) << bit;
            }
            bad |= v.invalid();
        }
        for (w, m) in words.iter_mut().zip(masks) {
            *w |= u64::from(m) << (8 * byte);
        }
    }
    (words, bad)
}

/// Pack one row into `P` planes of `words_for(row.len())` words; returns false if the row holds an
/// invalid value. Planes shorter than that are filled as far as they go.
fn pack_row_planes<T: Source<P>, const P: usize>(row: &[T], out: &mut [&mut [u64]; P]) -> bool {
    // Whole words as fixed-size chunks, so the compiler sees 64 iterations and vectorizes them.
    let (full, tail) = row.as_chunks::<WORD_BITS>();
    let mut bad = false;
    for (w, chunk) in full.iter().enumerate() {
        let (words, b) = pack_word(chunk);
        for (plane, word) in out.iter_mut().zip(words) {
            if let Some(dst) = plane.get_mut(w) {
                *dst = word;
            }
        }
        bad |= b;
    }
    if !tail.is_empty() {
        let (words, b) = pack_tail(tail);
        for (plane, word) in out.iter_mut().zip(words) {
            if let Some(dst) = plane.get_mut(full.len()) {
                *dst = word;
            }
        }
        bad |= b;
    }
    !bad
}

/// Pack one f32 row into `words_for(row.len())` words; returns false if the row holds a NaN.
pub fn pack_row(row: &[f32], out: &mut [u64]) -> bool {
    debug_assert_eq!(out.len(), words_for(row.len()));
    pack_row_planes::<f32, 1>(row, &mut [out])
}

/// Pack a row-major `(rows, k)` matrix `x` into `P` row-major `(rows, words_for(k))` planes.
///
/// Rows are split into blocks of about `PARALLEL_MIN_ELEMS` values that run in parallel when
/// `parallel` is set (the caller runs this inside the chosen rayon pool). Returns an error instead of
/// panicking when the lengths disagree or `x` holds an invalid value (`outs` are then unspecified).
pub fn pack_planes<T: Source<P>, const P: usize>(
    x: &[T],
    k: usize,
    outs: [&mut [u64]; P],
    parallel: bool,
) -> Result<(), PackError> {
    let words = words_for(k);
    if k == 0 {
        return if x.is_empty() && outs.iter().all(|o| o.is_empty()) {
            Ok(())
        } else {
            Err(PackError::Length("k == 0 needs empty x and outputs".into()))
        };
    }
    let rows = x.len() / k;
    if !x.len().is_multiple_of(k) || outs.iter().any(|o| o.len() != rows * words) {
        return Err(PackError::Length(format!(
            "x has {} values (k = {k}), outputs have {:?} words; expected {} words each",
            x.len(),
            outs.iter().map(|o| o.len()).collect::<Vec<_>>(),
            rows * words
        )));
    }
    let rows_per_task = (PARALLEL_MIN_ELEMS / k).max(1);
    // Serial over rows inside a block; blocks in parallel. (Per-row rayon tasks measured over 2x
    // slower than even one thread, so rows are not tasks.)
    let pack_block = |xs: &[T], mut os: [&mut [u64]; P]| -> bool {
        let mut ok = true;
        for (r, row) in xs.chunks_exact(k).enumerate() {
            let mut planes = os.each_mut().map(|o| {
                let start = (r * words).min(o.len());
                let end = ((r + 1) * words).min(o.len());
                &mut o[start..end]
            });
            ok &= pack_row_planes(row, &mut planes);
        }
        ok
    };
    let no_bad = if parallel && x.len() >= 2 * PARALLEL_MIN_ELEMS {
        // Split every plane into the same row blocks, then hand each block to a task.
        let mut per_plane: Vec<std::slice::ChunksMut<'_, u64>> = outs
            .into_iter()
            .map(|o| o.chunks_mut(rows_per_task * words))
            .collect();
        let blocks: Vec<(&[T], [&mut [u64]; P])> = x
            .chunks(rows_per_task * k)
            .filter_map(|xs| {
                let mut got: [Option<&mut [u64]>; P] = std::array::from_fn(|_| None);
                for (slot, it) in got.iter_mut().zip(per_plane.iter_mut()) {
                    *slot = it.next();
                }
                // Every plane has exactly as many blocks as x (same row counts), so all are Some.
                let got: Option<Vec<&mut [u64]>> = got.into_iter().collect();
                let arr: [&mut [u64]; P] = got?.try_into().ok()?;
                Some((xs, arr))
            })
            .collect();
        blocks
            .into_par_iter()
            .map(|(xs, os)| pack_block(xs, os))
            .reduce(|| true, |a, b| a & b)
    } else {
        pack_block(x, outs)
    };
    if no_bad {
        return Ok(());
    }
    // Rare error path: a second, serial scan finds the first invalid value for the message.
    let i = x.iter().position(|v| v.invalid()).unwrap_or_default();
    Err(PackError::Invalid {
        row: i / k,
        col: i % k,
    })
}

/// Pack the signs of a row-major `(rows, k)` f32 matrix (bit 1 = negative); NaN is an error.
pub fn pack_rows(x: &[f32], k: usize, out: &mut [u64], parallel: bool) -> Result<(), PackError> {
    pack_planes::<f32, 1>(x, k, [out], parallel)
}

/// Position `(row, col)` of the first NaN in a row-major matrix with `k` columns, if any.
pub fn first_nan(x: &[f32], k: usize) -> Option<(usize, usize)> {
    let i = x.iter().position(|v| v.is_nan())?;
    Some((i / k.max(1), i % k.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(x: &[f32], k: usize) -> Vec<u64> {
        let mut out = vec![0u64; (x.len() / k.max(1)) * words_for(k)];
        pack_rows(x, k, &mut out, false).unwrap();
        out
    }

    fn pack2<T: Source<2>>(x: &[T], k: usize, parallel: bool) -> Result<(Vec<u64>, Vec<u64>), PackError> {
        let n = (x.len() / k) * words_for(k);
        let (mut hi, mut lo) = (vec![0u64; n], vec![0u64; n]);
        pack_planes::<T, 2>(x, k, [&mut hi, &mut lo], parallel)?;
        Ok((hi, lo))
    }

    #[test]
    fn words_for_rounds_up() {
        assert_eq!(
            [0, 1, 63, 64, 65, 128, 577].map(words_for),
            [0, 1, 1, 1, 2, 2, 10]
        );
    }

    #[test]
    fn padding_masks() {
        assert_eq!(last_word_mask(64), u64::MAX);
        assert_eq!(last_word_mask(65), 1);
        assert_eq!(last_word_mask(3), 0b111);
        assert_eq!(first_bad_padding(&[u64::MAX, 1, 0, 3], 65), Some(1));
        assert_eq!(first_bad_padding(&[u64::MAX, 1, 0, 1], 65), None);
        assert_eq!(first_bad_padding(&[u64::MAX; 4], 128), None);
    }

    #[test]
    fn little_endian_bit_order_and_sign_of_zero() {
        // k = 0 -> bit 0, k = 1 -> bit 1, ...; +0.0 and -0.0 are +1 (bit 0).
        let x = [
            -1.0,
            2.0,
            -0.5,
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -1e-45,
        ];
        assert_eq!(pack(&x, x.len()), vec![0b1010_0101]);
    }

    #[test]
    fn padding_bits_are_zero() {
        for k in [1, 63, 64, 65, 577] {
            let out = pack(&vec![-1.0; 3 * k], k);
            let words = words_for(k);
            for row in out.chunks(words) {
                let full = row[..words - 1].iter().all(|&w| w == u64::MAX);
                assert!(full && row[words - 1] == last_word_mask(k), "k = {k}: {row:x?}");
            }
        }
    }

    #[test]
    fn word_boundary_bits() {
        let mut x = vec![1.0f32; 130];
        x[63] = -1.0;
        x[64] = -1.0;
        x[129] = -1.0;
        assert_eq!(pack(&x, 130), vec![1 << 63, 1, 1 << 1]);
    }

    #[test]
    fn parallel_path_matches_serial() {
        let (rows, k) = (300, 577); // > 2 * PARALLEL_MIN_ELEMS elements
        let x: Vec<f32> = (0..rows * k)
            .map(|i| if (i * 7919) % 13 < 6 { -1.0 } else { 1.0 })
            .collect();
        let mut par = vec![0u64; rows * words_for(k)];
        pack_rows(&x, k, &mut par, true).unwrap();
        assert_eq!(par, pack(&x, k));
        for (r, row) in x.chunks(k).enumerate() {
            let mut want = vec![0u64; words_for(k)];
            assert!(pack_row(row, &mut want));
            assert_eq!(&par[r * want.len()..(r + 1) * want.len()], &want[..]);
        }
    }

    #[test]
    fn int8_and_mask_sources() {
        let x: Vec<i8> = vec![-3, 0, 2, -128, 127, -1];
        let mut out = vec![0u64; 1];
        pack_planes::<i8, 1>(&x, 6, [&mut out], false).unwrap();
        assert_eq!(out, vec![0b101001]);
        let m: Vec<MaskByte> = [1u8, 0, 0, 2, 0, 255].map(MaskByte).to_vec();
        pack_planes::<MaskByte, 1>(&m, 6, [&mut out], false).unwrap();
        assert_eq!(out, vec![0b101001]);
    }

    #[test]
    fn two_bit_planes() {
        // v = 2 hi + lo: 3 = (+,+), 1 = (+,-), -1 = (-,+), -3 = (-,-); bit 1 means -1.
        let (hi, lo) = pack2(&[3i32, 1, -1, -3], 4, false).unwrap();
        assert_eq!((hi, lo), (vec![0b1100], vec![0b1010]));
        let (hi, lo) = pack2(&[3.0f32, 1.0, -1.0, -3.0], 4, false).unwrap();
        assert_eq!((hi, lo), (vec![0b1100], vec![0b1010]));
        assert_eq!(
            pack2(&[3i8, 1, 0, 1, 1, 1], 3, false),
            Err(PackError::Invalid { row: 0, col: 2 })
        );
        assert_eq!(
            pack2(&[3.0f64, 1.0, 1.0, f64::NAN, 2.0, 1.0], 3, false),
            Err(PackError::Invalid { row: 1, col: 0 })
        );
    }

    #[test]
    fn two_bit_parallel_matches_serial_and_finds_first_bad() {
        let (rows, k) = (257, 577);
        let vals = [3i64, 1, -1, -3];
        let mut x: Vec<i64> = (0..rows * k).map(|i| vals[(i * 7919) % 4]).collect();
        let serial = pack2(&x, k, false).unwrap();
        assert_eq!(pack2(&x, k, true).unwrap(), serial);
        x[200 * k + 5] = 0;
        x[250 * k + 1] = 2;
        assert_eq!(pack2(&x, k, true), Err(PackError::Invalid { row: 200, col: 5 }));
    }

    #[test]
    fn dot_product_identity() {
        let k = 70;
        let a: Vec<f32> = (0..k)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let b: Vec<f32> = (0..k)
            .map(|i| if i % 5 == 0 { -1.0 } else { 1.0 })
            .collect();
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let diff: u32 = pack(&a, k)
            .iter()
            .zip(pack(&b, k))
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(k as i64 - 2 * diff as i64, dot as i64);
    }

    #[test]
    fn mismatched_lengths_are_errors_not_panics() {
        assert!(pack_rows(&[1.0; 5], 2, &mut [0; 2], false).is_err());
        assert!(pack_rows(&[1.0; 4], 2, &mut [0; 3], true).is_err());
        assert!(pack_rows(&[1.0; 1], 0, &mut [], false).is_err());
        assert!(pack_rows(&[], 0, &mut [], false).is_ok());
        let (mut hi, mut lo) = (vec![0u64; 2], vec![0u64; 1]);
        assert!(pack_planes::<i8, 2>(&[1; 4], 2, [&mut hi, &mut lo], false).is_err());
    }

    #[test]
    fn nan_is_an_error_naming_its_position() {
        let mut x = vec![1.0f32; 3 * 70];
        x[70 + 66] = f32::NAN;
        x[2 * 70 + 1] = f32::NAN;
        let mut out = vec![0u64; 3 * 2];
        assert_eq!(
            pack_rows(&x, 70, &mut out, false),
            Err(PackError::Invalid { row: 1, col: 66 })
        );
    }

    #[test]
    fn finds_first_nan() {
        assert_eq!(first_nan(&[1.0, 2.0, 3.0, f32::NAN], 2), Some((1, 1)));
        assert_eq!(first_nan(&[1.0, -0.0], 2), None);
    }
}
