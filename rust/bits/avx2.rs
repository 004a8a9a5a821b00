//! AVX2 packers: vector compares, then `vmovmskps` (8 floats) / `vpmovmskb` (32 bytes) to move one
//! bit per lane into a general register, lane `j` of the load covering elements `8q ..` (floats) or
//! `32q ..` (bytes) to bit `8q + j` / `32q + j` of the word.
//!
//! * f32, 1 plane: `x < 0` (ordered: -0.0 and NaN give 0); NaN flagged by `unord(x, x)` compares
//!   OR-ed over the word.
//! * i8, 1 plane: the byte sign bits themselves (exactly `x < 0` for integers); mask bytes: `!(x == 0)`.
//! * 2 planes: with `a = |x|`: hi = `x < 0`, valid = `(a == 1) | (a == 3)`, lo = `(a == 1) ^ hi`
//!   (see `avx512.rs`).
//!
//! The short last word of a row (K % 64 values) goes through the scalar [`pack_tail`]. Every function
//! here is reached only through this file's `FAMILY`, which [`super::family`] hands out after
//! `Isa::Avx2.is_available()`.

use std::arch::x86_64::*;

use super::{pack_tail, MaskByte, WORD_BITS};
use crate::isa::Isa;

/// Move masks of a word of 64 floats, one compare per 8: bit `8q + j` = lane `j` of vector `q`.
#[inline(always)]
fn gather8(masks: [i32; 8]) -> u64 {
    masks
        .iter()
        .enumerate()
        .fold(0u64, |w, (q, &m)| w | (u64::from(m as u8) << (8 * q)))
}

/// Sign bits of 64 floats and whether one of them is NaN.
///
/// # Safety
/// AVX2 (and AVX, which it implies).
#[inline(always)]
unsafe fn word_sign_f32(c: &[f32; WORD_BITS]) -> ([u64; 1], bool) {
    // SAFETY: `c` is 64 readable floats and each load reads c[8q .. 8q + 8] for q < 8; CPU: caller.
    unsafe {
        let zero = _mm256_setzero_ps();
        let mut masks = [0i32; 8];
        let mut nan = _mm256_setzero_ps();
        for (q, m) in masks.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(c.as_ptr().add(8 * q));
            *m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, zero));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        }
        ([gather8(masks)], _mm256_movemask_ps(nan) != 0)
    }
}

/// The two sign planes of 64 floats in {-3, -1, 1, 3}, and whether one is anything else.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn word_two_bit_f32(c: &[f32; WORD_BITS]) -> ([u64; 2], bool) {
    // SAFETY: as in `word_sign_f32`, every load stays inside `c`; CPU: caller.
    unsafe {
        let zero = _mm256_setzero_ps();
        let (one, three) = (_mm256_set1_ps(1.0), _mm256_set1_ps(3.0));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let (mut hi, mut e1, mut e3) = ([0i32; 8], [0i32; 8], [0i32; 8]);
        for q in 0..8 {
            let x = _mm256_loadu_ps(c.as_ptr().add(8 * q));
            let a = _mm256_and_ps(x, abs);
            hi[q] = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, zero));
            e1[q] = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, one));
            e3[q] = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, three));
        }
        let (hi, e1, e3) = (gather8(hi), gather8(e1), gather8(e3));
        ([hi, e1 ^ hi], (e1 | e3) != u64::MAX)
    }
}

/// The two 32-byte halves of a word of 64 bytes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn halves(c: &[i8; WORD_BITS]) -> [__m256i; 2] {
    // SAFETY: the loads read c[0 .. 32] and c[32 .. 64]; CPU: caller.
    unsafe {
        [
            _mm256_loadu_si256(c.as_ptr().cast()),
            _mm256_loadu_si256(c.as_ptr().add(32).cast()),
        ]
    }
}

/// Bit `32h + j` from byte `j` of the movemask of half `h`.
#[inline(always)]
fn join(lo: i32, hi: i32) -> u64 {
    u64::from(lo as u32) | (u64::from(hi as u32) << 32)
}

/// Sign bits of 64 bytes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn word_sign_i8(c: &[i8; WORD_BITS]) -> ([u64; 1], bool) {
    // SAFETY: CPU: caller; `halves` stays inside `c`.
    unsafe {
        let [a, b] = halves(c);
        ([join(_mm256_movemask_epi8(a), _mm256_movemask_epi8(b))], false)
    }
}

/// Non-zero bytes of 64 mask bytes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn word_mask_u8(c: &[i8; WORD_BITS]) -> ([u64; 1], bool) {
    // SAFETY: CPU: caller; `halves` stays inside `c`.
    unsafe {
        let [a, b] = halves(c);
        let zero = _mm256_setzero_si256();
        let is_zero = join(
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, zero)),
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(b, zero)),
        );
        ([!is_zero], false)
    }
}

/// The two sign planes of 64 bytes in {-3, -1, 1, 3}, and whether one is anything else.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn word_two_bit_i8(c: &[i8; WORD_BITS]) -> ([u64; 2], bool) {
    // SAFETY: CPU: caller; `halves` stays inside `c`.
    unsafe {
        let x = halves(c);
        let (one, three) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
        let (mut hi, mut e1, mut e3) = ([0i32; 2], [0i32; 2], [0i32; 2]);
        for h in 0..2 {
            let a = _mm256_abs_epi8(x[h]); // |-128| wraps to -128: neither 1 nor 3, so invalid
            hi[h] = _mm256_movemask_epi8(x[h]);
            e1[h] = _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, one));
            e3[h] = _mm256_movemask_epi8(_mm256_cmpeq_epi8(a, three));
        }
        let (hi, e1, e3) = (join(hi[0], hi[1]), join(e1[0], e1[1]), join(e3[0], e3[1]));
        ([hi, e1 ^ hi], (e1 | e3) != u64::MAX)
    }
}

/// View a word of `T` as a word of `E` (same size and layout, checked by the caller's types).
///
/// # Safety
/// `T` and `E` have the same size and every bit pattern of `T` is a valid `E`.
#[inline(always)]
unsafe fn as_word<T, E>(c: &[T; WORD_BITS]) -> &[E; WORD_BITS] {
    debug_assert_eq!(size_of::<T>(), size_of::<E>());
    // SAFETY: forwarded from the caller; same size implies the same array size, and the alignment of
    // E (f32 for f32, i8 for i8 / MaskByte) is not larger than that of T in every use below.
    unsafe { &*c.as_ptr().cast::<[E; WORD_BITS]>() }
}

/// A whole word: the word function on the 64 values read as `E`.
macro_rules! full {
    ($word:ident, $t:ty, $e:ty, $c:expr) => {
        // SAFETY: `$t` is `$e` or repr(transparent) over it (MaskByte over u8, read as i8: same size,
        // alignment 1, every byte valid); the CPU has AVX2 (the block packer's own contract).
        unsafe { $word(as_word::<$t, $e>($c)) }
    };
}

/// The short last word of a row: the portable bits of its values.
macro_rules! tail {
    ($word:ident, $t:ty, $e:ty, $p:literal, $tail:expr) => {
        pack_tail::<$t, $p>($tail)
    };
}

simd_family!(Isa::Avx2, "avx2", full, tail);
