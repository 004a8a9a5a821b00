//! Sign-bit packing of ±1 and 2-bit matrices (pure Rust, no Python): values in, bit planes out.
//!
//! Element `k` of a row goes to word `k / 64`, bit `k % 64`; padding bits past K stay 0.
//!
//! * 1-bit (`Source<1>`): the bit is 1 when the value is < 0 (so +0.0 and -0.0 both give bit 0,
//!   i.e. +1). Works on float32 (NaN is refused) and int8.
//! * masks ([`MaskByte`]): bytes of a boolean array, packed as they are (non-zero -> bit 1).
//! * 2-bit (`Source<2>`): v in {-3, -1, 1, 3} is v = 2·hi + lo with hi, lo in {±1}; bit 1 = -1, so
//!   hi bit = 1[v < 0] and lo bit = 1[v ∈ {1, -3}]. Any other value is refused.
//!
//! # Code paths
//!
//! This file is the driver (argument checks, row blocks, threads, the error scan) and the portable
//! packer. `bits/avx512.rs` and `bits/avx2.rs` hold per-word SIMD compares for the hot element types
//! (f32 and i8, 1 and 2 planes, and mask bytes), from which [`simd_family!`] builds each ISA's block
//! packers and its [`Family`]. A call picks its family once with [`family`] (the dispatch idiom of
//! every kernel, see `isa.rs`) and [`Source::kernel`] takes the type's packer from it, or none (the
//! portable packer then runs). `bits/columns.rs` packs a `(k, n)` matrix down its columns (im2col's
//! layout) into the same words as its transpose would give. Every path computes the same bits and
//! the same "some value was invalid" flag; the position of the first invalid value is always found
//! afterwards by the same serial scan, so error messages do not depend on the path.

/// The SIMD block packers of one ISA and its `FAMILY`, from the ISA file's word functions
/// (`word_sign_f32`, `word_sign_i8`, `word_mask_u8`, `word_two_bit_f32`, `word_two_bit_i8`) and two
/// adapters: `$full!(word_fn, T, E, c)` packs a whole word `c: &[T; 64]` and `$tail!(word_fn, T, E,
/// P, t)` the short last word `t: &[T]` of a row, the elements read as `E` (f32 as f32; i8 and the
/// `repr(transparent)` [`MaskByte`] as i8). The adapters hold the `unsafe` calls and their SAFETY
/// arguments; each packer is compiled with `$features` and is reachable only through the `FAMILY`
/// of `$isa`, which [`family`] hands out after `$isa.is_available()`.
macro_rules! simd_family {
    ($isa:expr, $features:literal, $full:ident, $tail:ident) => {
        simd_family!(@packer $features, $full, $tail, sign_f32, f32, f32, 1, word_sign_f32);
        simd_family!(@packer $features, $full, $tail, sign_i8, i8, i8, 1, word_sign_i8);
        simd_family!(@packer $features, $full, $tail, mask_u8, MaskByte, i8, 1, word_mask_u8);
        simd_family!(@packer $features, $full, $tail, two_bit_f32, f32, f32, 2, word_two_bit_f32);
        simd_family!(@packer $features, $full, $tail, two_bit_i8, i8, i8, 2, word_two_bit_i8);

        /// This ISA's block packers; the column packer runs its AVX2 build.
        pub(super) const FAMILY: super::Family = super::Family {
            isa: $isa,
            sign_f32: Some(sign_f32),
            sign_i8: Some(sign_i8),
            mask_u8: Some(mask_u8),
            two_bit_f32: Some(two_bit_f32),
            two_bit_i8: Some(two_bit_i8),
            columns_avx2: true,
        };
    };
    (@packer $features:literal, $full:ident, $tail:ident, $name:ident, $t:ty, $e:ty, $p:literal, $word:ident) => {
        /// A block packer (see [`super::BlockFn`]) for `$t` into `$p` planes.
        ///
        /// # Safety
        /// The CPU supports the features this function is compiled with (its family's ISA is
        /// available).
        #[target_feature(enable = $features)]
        unsafe fn $name(xs: &[$t], k: usize, outs: &mut [&mut [u64]; $p]) -> bool {
            super::pack_rows_with(
                xs,
                k,
                outs,
                |c: &[$t; super::WORD_BITS]| $full!($word, $t, $e, c),
                |t: &[$t]| $tail!($word, $t, $e, $p, t),
            )
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod columns;

use std::fmt;

use crate::isa::{Isa, PerIsa};

/// Bits per packed word.
pub const WORD_BITS: usize = 64;

/// How [`pack_planes`] splits its input among threads.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    /// Inputs smaller than this many bytes are packed on the calling thread alone.
    pub min_bytes: usize,
    /// Bytes of input per task (whole rows, at least one).
    pub task_bytes: usize,
}

/// The split used by the bindings. The SIMD packers run at 30-70 GB/s on one thread, so 4 MiB is
/// some 60-130 µs of work; waking a pool thread measured up to ~40 µs in a VM, which made 2 threads
/// slower than 1 at 2.3 MB. Tasks of 128 KiB (about 2-4 µs each) keep the threads balanced when one
/// of them starts late.
pub const SPLIT: Split = Split {
    min_bytes: 4 << 20,
    task_bytes: 128 << 10,
};

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
    /// The requested instruction set is not available on this CPU.
    Isa(String),
    /// The thread pool could not be started.
    Threads(String),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Invalid { row, col } => write!(f, "invalid value at row {row}, column {col}"),
            PackError::Length(msg) | PackError::Isa(msg) | PackError::Threads(msg) => f.write_str(msg),
        }
    }
}

/// A SIMD block packer: packs the row-major `(rows, k)` block `xs` into `P` planes of
/// `rows · words_for(k)` words (planes shorter than that are filled as far as they go, like
/// [`pack_block_scalar`]); returns false if the block holds an invalid value.
///
/// # Safety
/// The CPU supports the ISA of the [`Family`] the packer came from.
pub type BlockFn<T, const P: usize> = unsafe fn(xs: &[T], k: usize, outs: &mut [&mut [u64]; P]) -> bool;

/// One ISA's sign-bit packers: a block packer for each hot element type (None: the portable packer
/// runs), and the build of the column packer's loop.
#[derive(Clone, Copy)]
pub struct Family {
    pub isa: Isa,
    pub sign_f32: Option<BlockFn<f32, 1>>,
    pub sign_i8: Option<BlockFn<i8, 1>>,
    pub mask_u8: Option<BlockFn<MaskByte, 1>>,
    pub two_bit_f32: Option<BlockFn<f32, 2>>,
    pub two_bit_i8: Option<BlockFn<i8, 2>>,
    /// `columns.rs` runs its loop compiled with AVX2 (on a CPU that has AVX2).
    pub columns_avx2: bool,
}

/// The portable packers: no SIMD block packer, the portable column loop.
const PORTABLE: Family = Family {
    isa: Isa::Scalar,
    sign_f32: None,
    sign_i8: None,
    mask_u8: None,
    two_bit_f32: None,
    two_bit_i8: None,
    columns_avx2: false,
};

const FAMILIES: PerIsa<Family> = PerIsa {
    scalar: PORTABLE,
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::FAMILY,
    #[cfg(target_arch = "x86_64")]
    avx512: avx512::FAMILY,
};

/// The packers of `isa`, or None if this build or CPU lacks it.
pub fn family(isa: Isa) -> Option<Family> {
    FAMILIES.pick(isa)
}

/// [`family`], or the error every packer returns for an ISA this CPU lacks.
pub(crate) fn family_or_err(isa: Isa) -> Result<Family, PackError> {
    family(isa).ok_or_else(|| PackError::Isa(format!("isa {isa} is not available on this CPU")))
}

/// An element type that packs to `P` bit planes.
///
/// `bits` gives the bit of each plane; `invalid` flags a value that has no packing. `kernel` takes
/// this type's SIMD block packer from a [`Family`] when it has one (the default: none, the portable
/// packer is used).
pub trait Source<const P: usize>: Copy + Send + Sync + 'static {
    fn bits(self) -> [bool; P];
    fn invalid(self) -> bool;
    /// The block packer of `fam` for this type, if it has one; it computes exactly what
    /// [`pack_block_scalar`] computes.
    fn kernel(fam: &Family) -> Option<BlockFn<Self, P>> {
        let _ = fam;
        None
    }
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
    fn kernel(fam: &Family) -> Option<BlockFn<Self, 1>> {
        fam.sign_f32
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
    fn kernel(fam: &Family) -> Option<BlockFn<Self, 1>> {
        fam.sign_i8
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
    fn kernel(fam: &Family) -> Option<BlockFn<Self, 1>> {
        fam.mask_u8
    }
}

macro_rules! two_bit_source {
    ($($t:ty => $three:expr, $one:expr $(, $simd:ident)?;)*) => {$(
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
            $(
            fn kernel(fam: &Family) -> Option<BlockFn<Self, 2>> {
                fam.$simd
            }
            )?
        }
    )*};
}

two_bit_source! {
    f32 => 3.0, 1.0, two_bit_f32;
    f64 => 3.0, 1.0;
    i8 => 3, 1, two_bit_i8;
    i16 => 3, 1;
    i32 => 3, 1;
    i64 => 3, 1;
}

/// Bits of up to 64 values (the short last word of a row), and whether any of them is invalid.
#[inline(always)]
pub(crate) fn pack_tail<T: Source<P>, const P: usize>(values: &[T]) -> ([u64; P], bool) {
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

/// Pack the row-major `(rows, k)` block `xs` into `P` planes of `rows · words_for(k)` words, with
/// `full` packing each whole word of 64 values and `tail` the short last word of a row (1 to 63
/// values); returns false if either reported an invalid value. Planes shorter than that are filled as
/// far as they go (the driver always passes exact lengths; this only keeps the code panic-free).
///
/// `#[inline(always)]` so that, called from a `#[target_feature]` packer, `full` and `tail` are
/// compiled with that packer's features and inlined into one loop.
#[inline(always)]
pub(crate) fn pack_rows_with<T, const P: usize>(
    xs: &[T],
    k: usize,
    outs: &mut [&mut [u64]; P],
    mut full: impl FnMut(&[T; WORD_BITS]) -> ([u64; P], bool),
    mut tail: impl FnMut(&[T]) -> ([u64; P], bool),
) -> bool {
    if k == 0 {
        return true;
    }
    let words = words_for(k);
    let mut bad = false;
    for (r, row) in xs.chunks_exact(k).enumerate() {
        let mut planes = outs.each_mut().map(|o| {
            let start = (r * words).min(o.len());
            let end = ((r + 1) * words).min(o.len());
            &mut o[start..end]
        });
        let (whole, rest) = row.as_chunks::<WORD_BITS>();
        for (w, chunk) in whole.iter().enumerate() {
            let (ws, b) = full(chunk);
            for (plane, word) in planes.iter_mut().zip(ws) {
                if let Some(dst) = plane.get_mut(w) {
                    *dst = word;
                }
            }
            bad |= b;
        }
        if !rest.is_empty() {
            let (ws, b) = tail(rest);
            for (plane, word) in planes.iter_mut().zip(ws) {
                if let Some(dst) = plane.get_mut(whole.len()) {
                    *dst = word;
                }
            }
            bad |= b;
        }
    }
    !bad
}

/// The portable packer (see [`BlockFn`]).
fn pack_block_scalar<T: Source<P>, const P: usize>(xs: &[T], k: usize, outs: &mut [&mut [u64]; P]) -> bool {
    pack_rows_with(xs, k, outs, pack_word, pack_tail)
}

/// Pack one f32 row into `words_for(row.len())` words; returns false if the row holds a NaN.
#[cfg(test)]
fn pack_row(row: &[f32], out: &mut [u64]) -> bool {
    debug_assert_eq!(out.len(), words_for(row.len()));
    pack_block_scalar::<f32, 1>(row, row.len(), &mut [out])
}

/// Pack a row-major `(rows, k)` matrix `x` into `P` row-major `(rows, words_for(k))` planes with the
/// packer of `isa` (the scalar one if `T` has none for it).
///
/// With `threads > 1` and at least `SPLIT.min_bytes` of input, rows are cut into blocks of about
/// `SPLIT.task_bytes` that the calling thread and `threads - 1` pool threads take in turn
/// ([`crate::threads::run_claimed`]).
/// Returns an error instead of panicking when the lengths disagree or `x` holds an invalid value
/// (`outs` are then unspecified).
pub fn pack_planes<T: Source<P>, const P: usize>(
    x: &[T],
    k: usize,
    outs: [&mut [u64]; P],
    threads: usize,
    isa: Isa,
) -> Result<(), PackError> {
    pack_planes_split(x, k, outs, threads, isa, SPLIT)
}

/// [`pack_planes`] with an explicit [`Split`] (tests use small ones to get many blocks).
pub(crate) fn pack_planes_split<T: Source<P>, const P: usize>(
    x: &[T],
    k: usize,
    outs: [&mut [u64]; P],
    threads: usize,
    isa: Isa,
    split: Split,
) -> Result<(), PackError> {
    let simd = T::kernel(&family_or_err(isa)?);
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
    let row_bytes = k * size_of::<T>();
    let rows_per_task = (split.task_bytes / row_bytes).max(1);
    // Serial over rows inside a block; blocks in parallel. (Per-row rayon tasks measured over 2x
    // slower than even one thread, so rows are not tasks.)
    let pack_block = |xs: &[T], mut os: [&mut [u64]; P]| -> bool {
        match simd {
            // SAFETY: `simd` comes from `family(isa)`, which checked that the CPU supports `isa`: the
            // packer's only requirement (it bounds-checks its slices itself).
            Some(f) => unsafe { f(xs, k, &mut os) },
            None => pack_block_scalar(xs, k, &mut os),
        }
    };
    let no_bad = if threads > 1 && rows > rows_per_task && rows * row_bytes >= split.min_bytes {
        // Split every plane into the same row blocks, then hand each block to a task.
        let blocks: Vec<(&[T], [&mut [u64]; P])> = x
            .chunks(rows_per_task * k)
            .zip(split_planes(outs, rows_per_task * words))
            .collect();
        crate::threads::run_claimed(threads, blocks, |(xs, os)| pack_block(xs, os))
            .map_err(PackError::Threads)?
    } else {
        pack_block(x, outs)
    };
    if no_bad {
        return Ok(());
    }
    Err(first_invalid(x, k))
}

/// Cut each of the `P` planes into consecutive chunks of `len` words (the last may be shorter) and
/// group the i-th chunks of all planes: one group per task. Planes of equal length give equal counts.
pub(crate) fn split_planes<const P: usize>(outs: [&mut [u64]; P], len: usize) -> Vec<[&mut [u64]; P]> {
    let mut per_plane = outs.map(|o| o.chunks_mut(len.max(1)));
    std::iter::from_fn(|| {
        let got: Vec<&mut [u64]> = per_plane.iter_mut().map(|it| it.next()).collect::<Option<_>>()?;
        got.try_into().ok()
    })
    .collect()
}

/// Rare error path: a second, serial scan finds the first invalid value of the row-major matrix `x`
/// with `cols` columns, for the message (the parallel packers only know that one exists).
pub(crate) fn first_invalid<T: Source<P>, const P: usize>(x: &[T], cols: usize) -> PackError {
    let i = x.iter().position(|v| v.invalid()).unwrap_or_default();
    PackError::Invalid {
        row: i / cols.max(1),
        col: i % cols.max(1),
    }
}

/// Pack the signs of a row-major `(rows, k)` f32 matrix (bit 1 = negative); NaN is an error.
#[cfg(test)]
fn pack_rows(x: &[f32], k: usize, out: &mut [u64], threads: usize, isa: Isa) -> Result<(), PackError> {
    pack_planes::<f32, 1>(x, k, [out], threads, isa)
}

/// Position `(row, col)` of the first NaN in a row-major matrix with `k` columns, if any.
#[cfg(test)]
fn first_nan(x: &[f32], k: usize) -> Option<(usize, usize)> {
    let i = x.iter().position(|v| v.is_nan())?;
    Some((i / k.max(1), i % k.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many small blocks, so that threaded tests need only small inputs.
    const SMALL_SPLIT: Split = Split {
        min_bytes: 1,
        task_bytes: 4000,
    };

    fn pack(x: &[f32], k: usize) -> Vec<u64> {
        let mut out = vec![0u64; (x.len() / k.max(1)) * words_for(k)];
        pack_rows(x, k, &mut out, 1, Isa::Scalar).unwrap();
        out
    }

    fn pack2<T: Source<2>>(x: &[T], k: usize, parallel: bool) -> Result<(Vec<u64>, Vec<u64>), PackError> {
        let n = (x.len() / k) * words_for(k);
        let (mut hi, mut lo) = (vec![0u64; n], vec![0u64; n]);
        let threads = if parallel { 3 } else { 1 };
        pack_planes_split::<T, 2>(x, k, [&mut hi, &mut lo], threads, Isa::Scalar, SMALL_SPLIT)?;
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
        let (rows, k) = (2000, 577); // > SPLIT.min_bytes
        assert!(rows * k * 4 >= SPLIT.min_bytes);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| if (i * 7919) % 13 < 6 { -1.0 } else { 1.0 })
            .collect();
        let mut par = vec![0u64; rows * words_for(k)];
        pack_rows(&x, k, &mut par, 2, Isa::Scalar).unwrap();
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
        pack_planes::<i8, 1>(&x, 6, [&mut out], 1, Isa::Scalar).unwrap();
        assert_eq!(out, vec![0b101001]);
        let m: Vec<MaskByte> = [1u8, 0, 0, 2, 0, 255].map(MaskByte).to_vec();
        pack_planes::<MaskByte, 1>(&m, 6, [&mut out], 1, Isa::Scalar).unwrap();
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
        let a: Vec<f32> = (0..k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let b: Vec<f32> = (0..k).map(|i| if i % 5 == 0 { -1.0 } else { 1.0 }).collect();
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
        assert!(pack_rows(&[1.0; 5], 2, &mut [0; 2], 1, Isa::Scalar).is_err());
        assert!(pack_rows(&[1.0; 4], 2, &mut [0; 3], 2, Isa::Scalar).is_err());
        assert!(pack_rows(&[1.0; 1], 0, &mut [], 1, Isa::Scalar).is_err());
        assert!(pack_rows(&[], 0, &mut [], 1, Isa::Scalar).is_ok());
        let (mut hi, mut lo) = (vec![0u64; 2], vec![0u64; 1]);
        assert!(pack_planes::<i8, 2>(&[1; 4], 2, [&mut hi, &mut lo], 1, Isa::Scalar).is_err());
    }

    #[test]
    fn nan_is_an_error_naming_its_position() {
        let mut x = vec![1.0f32; 3 * 70];
        x[70 + 66] = f32::NAN;
        x[2 * 70 + 1] = f32::NAN;
        let mut out = vec![0u64; 3 * 2];
        assert_eq!(
            pack_rows(&x, 70, &mut out, 1, Isa::Scalar),
            Err(PackError::Invalid { row: 1, col: 66 })
        );
    }

    #[test]
    fn finds_first_nan() {
        assert_eq!(first_nan(&[1.0, 2.0, 3.0, f32::NAN], 2), Some((1, 1)));
        assert_eq!(first_nan(&[1.0, -0.0], 2), None);
    }

    // --- every ISA path against the scalar one ----------------------------------------------------

    /// Awkward row lengths: one value, around one word, a long row with a short tail.
    const AWKWARD_K: [usize; 8] = [1, 63, 64, 65, 127, 577, 1000, 4608];

    /// Deterministic pseudo-random numbers (xorshift).
    use crate::test_rng::Rng;

    /// Pack with `isa` (on 3 threads in blocks of a few rows, or on 1) into fresh planes, pre-filled
    /// with garbage.
    fn pack_with<T: Source<P>, const P: usize>(
        x: &[T],
        k: usize,
        parallel: bool,
        isa: Isa,
    ) -> Result<Vec<Vec<u64>>, PackError> {
        let n = (x.len() / k) * words_for(k);
        let mut planes: Vec<Vec<u64>> = (0..P).map(|_| vec![0xDEAD_BEEF_u64; n]).collect();
        let outs: [&mut [u64]; P] = planes
            .iter_mut()
            .map(|v| v.as_mut_slice())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let threads = if parallel { 3 } else { 1 };
        pack_planes_split::<T, P>(x, k, outs, threads, isa, SMALL_SPLIT)?;
        Ok(planes)
    }

    /// Every available path (serial and threaded) gives exactly what the serial scalar path gives:
    /// the same planes, or the same error (so the same first invalid position).
    fn same_on_every_path<T: Source<P> + std::fmt::Debug, const P: usize>(x: &[T], k: usize, what: &str) {
        let want = pack_with::<T, P>(x, k, false, Isa::Scalar);
        for isa in crate::isa::available() {
            for parallel in [false, true] {
                let got = pack_with::<T, P>(x, k, parallel, isa);
                assert_eq!(got, want, "{what}: isa {isa}, k = {k}, parallel = {parallel}");
            }
        }
        if let Ok(planes) = &want {
            for plane in planes {
                assert_eq!(first_bad_padding(plane, k), None, "{what}: k = {k}");
            }
        }
    }

    /// Values at every interesting place: signed zeros, subnormals, infinities, the smallest and
    /// largest normals, ordinary values.
    const F32_SPECIALS: [f32; 14] = [
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        -1.17e-38, // subnormal
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
        -0.5,
    ];

    /// Rows with random special values, plus rows all negative, all -0.0 and all +0.0.
    fn f32_matrix(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed | 1);
        let mut x: Vec<f32> = (0..rows * k).map(|_| rng.pick(&F32_SPECIALS)).collect();
        let fill = [-1.0f32, -0.0, 0.0];
        for (r, v) in fill.iter().enumerate().filter(|(r, _)| *r < rows) {
            x[r * k..(r + 1) * k].fill(*v);
        }
        x
    }

    /// Positions of a NaN: first, last of a word, first of the next, the tail, the very last value.
    fn nan_positions(rows: usize, k: usize) -> Vec<usize> {
        let n = rows * k;
        let mut at = vec![0, k - 1, n - 1, n / 2, (rows / 2) * k + k / 2];
        for c in [15, 16, 31, 32, 48, 63, 64, 65, k - k % 64] {
            if c < k {
                at.push(k + c.min(k - 1)); // in row 1
            }
        }
        at.retain(|&i| i < n);
        at
    }

    #[test]
    fn every_isa_packs_f32_signs_like_scalar() {
        let rows = 5;
        for k in AWKWARD_K {
            let x = f32_matrix(rows, k, 7 + k as u64);
            same_on_every_path::<f32, 1>(&x, k, "f32 signs");
            for nan in [
                f32::NAN,
                -f32::NAN,
                f32::from_bits(0x7F80_0001),
                f32::from_bits(0xFFFF_FFFF),
            ] {
                for i in nan_positions(rows, k) {
                    let mut y = x.clone();
                    y[i] = nan;
                    same_on_every_path::<f32, 1>(&y, k, "f32 with one NaN");
                    let want = Err(PackError::Invalid {
                        row: i / k,
                        col: i % k,
                    });
                    assert_eq!(pack_with::<f32, 1>(&y, k, false, crate::isa::best()), want);
                    // A second, later NaN does not change the position reported.
                    let n = y.len();
                    if i + 1 < n {
                        y[n - 1] = f32::NAN;
                        same_on_every_path::<f32, 1>(&y, k, "f32 with two NaNs");
                    }
                }
            }
        }
    }

    #[test]
    fn every_isa_packs_f32_signs_in_bit_order() {
        // One negative value at each position: exactly that bit is set, on every path.
        for k in [64, 65, 130] {
            for pos in 0..k {
                let mut x = vec![0.5f32; k];
                x[pos] = -2.0;
                let mut want = vec![0u64; words_for(k)];
                want[pos / 64] = 1 << (pos % 64);
                for isa in crate::isa::available() {
                    assert_eq!(
                        pack_with::<f32, 1>(&x, k, false, isa).unwrap(),
                        vec![want.clone()]
                    );
                }
            }
        }
    }

    #[test]
    fn every_isa_packs_i8_and_masks_like_scalar() {
        for k in AWKWARD_K {
            let mut rng = Rng(99 + k as u64);
            let x: Vec<i8> = (0..4 * k)
                .map(|i| match i % 7 {
                    0 => rng.pick(&[-128i8, 127, 0, -1]),
                    _ => rng.next() as i8,
                })
                .collect();
            same_on_every_path::<i8, 1>(&x, k, "i8 signs");
            let m: Vec<MaskByte> = (0..4 * k)
                .map(|_| MaskByte(rng.pick(&[0u8, 0, 1, 2, 128, 255])))
                .collect();
            same_on_every_path::<MaskByte, 1>(&m, k, "mask bytes");
            for fill in [-128i8, 127, 0, -1] {
                same_on_every_path::<i8, 1>(&vec![fill; 3 * k], k, "i8 constant");
            }
        }
    }

    #[test]
    fn every_isa_packs_two_bit_planes_like_scalar() {
        let f_bad = [
            0.0f32,
            -0.0,
            2.0,
            -2.0,
            1.0000001,
            -2.9999998,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            1e-45,
        ];
        let i_bad = [0i8, 2, -2, 4, -128, 127];
        for k in AWKWARD_K {
            let rows = 4;
            let mut rng = Rng(5 + k as u64);
            let f: Vec<f32> = (0..rows * k).map(|_| rng.pick(&[3.0, 1.0, -1.0, -3.0])).collect();
            let b: Vec<i8> = (0..rows * k).map(|_| rng.pick(&[3, 1, -1, -3])).collect();
            same_on_every_path::<f32, 2>(&f, k, "f32 2-bit");
            same_on_every_path::<i8, 2>(&b, k, "i8 2-bit");
            for i in nan_positions(rows, k) {
                let (mut f2, mut b2) = (f.clone(), b.clone());
                f2[i] = rng.pick(&f_bad);
                b2[i] = rng.pick(&i_bad);
                same_on_every_path::<f32, 2>(&f2, k, "f32 2-bit, one invalid");
                same_on_every_path::<i8, 2>(&b2, k, "i8 2-bit, one invalid");
                let want = Err(PackError::Invalid {
                    row: i / k,
                    col: i % k,
                });
                assert_eq!(pack_with::<f32, 2>(&f2, k, false, crate::isa::best()), want);
                assert_eq!(pack_with::<i8, 2>(&b2, k, false, crate::isa::best()), want);
            }
        }
    }

    #[test]
    fn every_isa_threaded_blocks_match_scalar_and_find_the_first_invalid() {
        // Big enough for the default split (the other tests use SMALL_SPLIT).
        let (rows, k) = (2000, 577);
        assert!(rows * k * 4 >= SPLIT.min_bytes);
        let mut x = f32_matrix(rows, k, 3);
        let want = pack_with::<f32, 1>(&x, k, false, Isa::Scalar).unwrap();
        for isa in crate::isa::available() {
            let mut out = vec![0u64; rows * words_for(k)];
            pack_rows(&x, k, &mut out, 2, isa).unwrap();
            assert_eq!(out, want[0], "{isa}");
        }
        same_on_every_path::<f32, 1>(&x, k, "f32, threaded");
        x[250 * k + 1] = f32::NAN;
        x[200 * k + 576] = -f32::NAN;
        for isa in crate::isa::available() {
            let mut out = vec![0u64; rows * words_for(k)];
            assert_eq!(
                pack_rows(&x, k, &mut out, 2, isa),
                Err(PackError::Invalid { row: 200, col: 576 })
            );
        }
        let mut b: Vec<i8> = (0..rows * k).map(|i| [3, 1, -1, -3][(i * 7919) % 4]).collect();
        same_on_every_path::<i8, 2>(&b, k, "i8 2-bit, threaded");
        b[299 * k] = 0;
        same_on_every_path::<i8, 2>(&b, k, "i8 2-bit with a 0, threaded");
    }

    #[test]
    fn types_without_simd_packers_still_take_any_isa() {
        let x: Vec<i64> = (0..3 * 70).map(|i| [3, 1, -1, -3][i % 4]).collect();
        same_on_every_path::<i64, 2>(&x, 70, "i64 2-bit");
        let x: Vec<f64> = (0..3 * 70).map(|i| [3.0, 1.0, -1.0, -3.0][i % 4]).collect();
        same_on_every_path::<f64, 2>(&x, 70, "f64 2-bit");
    }

    #[test]
    fn unavailable_isa_is_an_error() {
        for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
            assert!(matches!(
                pack_rows(&[1.0], 1, &mut [0], 1, isa),
                Err(PackError::Isa(_))
            ));
        }
    }
}
