//! AVX-512 packers (AVX-512F for f32, AVX-512BW for bytes): one mask register per 16 floats or 64
//! bytes, no per-element work.
//!
//! * f32, 1 plane: per word, 4 loads of 16 floats and `vcmpps` (`x < 0`, ordered, so -0.0 and NaN
//!   give 0) into four 16-bit masks; the load covering elements `16q .. 16q + 15` lands in bits
//!   `16q .. 16q + 15`, lane `j` in bit `16q + j`. NaN detection: `vcmpps unord(x0, x1)` is true when
//!   either operand is NaN, so two compares cover the 64 values.
//! * i8, 1 plane: `vpmovb2m` (the sign bit of each of 64 bytes, which for integers is exactly
//!   `x < 0`), byte `j` to bit `j`. Mask bytes: `vptestmb` (byte != 0).
//! * 2 planes (f32 and i8): with `a = |x|`, `e1 = (a == 1)`, `e3 = (a == 3)`, `hi = (x < 0)`:
//!   valid = e1 | e3, and for valid values lo = 1[v ∈ {1, -3}] = e1 ^ hi. NaN, ±0, ±inf, -128 and
//!   every other value are in neither e1 nor e3, so invalid.
//!
//! The short last word of a row (K % 64 values) uses the same code with zero-masked loads: lanes past
//! the row are not read (the loads suppress them) and come in as 0, which packs to bit 0 and is not
//! NaN; for the 2-bit planes the validity mask is limited to the real lanes. All functions are reached
//! only through this file's `FAMILY`, which [`super::family`] hands out after
//! `Isa::Avx512.is_available()` (AVX-512F + VPOPCNTDQ + BW).

use std::arch::x86_64::*;

use super::{MaskByte, WORD_BITS};
use crate::isa::Isa;

/// Bits `0 .. n` set (`n <= 64`): the lanes of a word that hold real values.
#[inline(always)]
fn lanes(n: usize) -> u64 {
    if n >= WORD_BITS {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// 16 floats from `p + 16q`, zero in lanes whose bit of `valid` (bits `16q ..`) is clear.
///
/// # Safety
/// AVX-512F; for every lane `j` with bit `16q + j` of `valid` set, `p + 16q + j` is a readable f32.
/// Lanes whose bit is clear are never read (masked loads suppress them, and a fully masked group is
/// not loaded at all), so `p + 16q` itself may lie past the end of the slice.
#[inline(always)]
unsafe fn load16(p: *const f32, q: usize, valid: u64) -> __m512 {
    let m = (valid >> (16 * q)) as u16;
    let at = p.wrapping_add(16 * q);
    // SAFETY: forwarded from the caller (see above); `wrapping_add` keeps the pointer arithmetic
    // itself defined even for a fully masked group past the end of the row.
    unsafe {
        if m == u16::MAX {
            _mm512_loadu_ps(at)
        } else if m == 0 {
            _mm512_setzero_ps()
        } else {
            _mm512_maskz_loadu_ps(m, at)
        }
    }
}

/// 64 bytes from `p`, zero in lanes whose bit of `valid` is clear (those are not read).
///
/// # Safety
/// AVX-512BW; for every bit `j` set in `valid`, `p + j` is a readable byte.
#[inline(always)]
unsafe fn load64(p: *const i8, valid: u64) -> __m512i {
    // SAFETY: forwarded from the caller; unset lanes are suppressed by the masked load.
    unsafe {
        if valid == u64::MAX {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi8(valid, p)
        }
    }
}

/// Sign bits of up to 64 floats (`valid` selects the real lanes) and whether one of them is NaN.
///
/// # Safety
/// AVX-512F, and the lanes selected by `valid` are readable from `p` (see [`load16`]).
#[inline(always)]
unsafe fn word_sign_f32(p: *const f32, valid: u64) -> ([u64; 1], bool) {
    // SAFETY: the caller guarantees the CPU features and the bounds of every selected lane.
    unsafe {
        let zero = _mm512_setzero_ps();
        let x = [
            load16(p, 0, valid),
            load16(p, 1, valid),
            load16(p, 2, valid),
            load16(p, 3, valid),
        ];
        let mut word = 0u64;
        for (q, v) in x.iter().enumerate() {
            word |= u64::from(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(*v, zero)) << (16 * q);
        }
        // unord(a, b) is true in a lane where a or b is NaN: two compares see all 64 values.
        let nan =
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x[0], x[1]) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x[2], x[3]);
        ([word], nan != 0)
    }
}

/// The two sign planes of up to 64 floats in {-3, -1, 1, 3}, and whether one is anything else.
///
/// # Safety
/// AVX-512F, and the lanes selected by `valid` are readable from `p` (see [`load16`]).
#[inline(always)]
unsafe fn word_two_bit_f32(p: *const f32, valid: u64) -> ([u64; 2], bool) {
    // SAFETY: the caller guarantees the CPU features and the bounds of every selected lane.
    unsafe {
        let (zero, one, three) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0), _mm512_set1_ps(3.0));
        let (mut hi, mut e1, mut e3) = (0u64, 0u64, 0u64);
        for q in 0..4 {
            let x = load16(p, q, valid);
            let a = _mm512_abs_ps(x);
            hi |= u64::from(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero)) << (16 * q);
            e1 |= u64::from(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, one)) << (16 * q);
            e3 |= u64::from(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, three)) << (16 * q);
        }
        ([hi, (e1 ^ hi) & valid], (e1 | e3) & valid != valid)
    }
}

/// Sign bits of up to 64 bytes (`valid` selects the real lanes).
///
/// # Safety
/// AVX-512BW, and the lanes selected by `valid` are readable from `p`.
#[inline(always)]
unsafe fn word_sign_i8(p: *const i8, valid: u64) -> ([u64; 1], bool) {
    // SAFETY: the caller guarantees the CPU features and the bounds of every selected lane.
    unsafe { ([_mm512_movepi8_mask(load64(p, valid))], false) }
}

/// Non-zero bytes of up to 64 mask bytes (`valid` selects the real lanes; unread lanes are 0).
///
/// # Safety
/// AVX-512BW, and the lanes selected by `valid` are readable from `p`.
#[inline(always)]
unsafe fn word_mask_u8(p: *const i8, valid: u64) -> ([u64; 1], bool) {
    // SAFETY: the caller guarantees the CPU features and the bounds of every selected lane.
    unsafe {
        let x = load64(p, valid);
        ([_mm512_test_epi8_mask(x, x)], false)
    }
}

/// The two sign planes of up to 64 bytes in {-3, -1, 1, 3}, and whether one is anything else.
///
/// # Safety
/// AVX-512BW, and the lanes selected by `valid` are readable from `p`.
#[inline(always)]
unsafe fn word_two_bit_i8(p: *const i8, valid: u64) -> ([u64; 2], bool) {
    // SAFETY: the caller guarantees the CPU features and the bounds of every selected lane.
    unsafe {
        let x = load64(p, valid);
        let a = _mm512_abs_epi8(x); // |-128| wraps to -128: neither 1 nor 3, so invalid
        let hi = _mm512_movepi8_mask(x);
        let e1 = _mm512_cmpeq_epi8_mask(a, _mm512_set1_epi8(1));
        let e3 = _mm512_cmpeq_epi8_mask(a, _mm512_set1_epi8(3));
        ([hi, (e1 ^ hi) & valid], (e1 | e3) & valid != valid)
    }
}

/// A whole word: the word function on all 64 lanes.
macro_rules! full {
    ($word:ident, $t:ty, $e:ty, $c:expr) => {
        // SAFETY: `c` is a whole word, 64 readable elements; `$t` has the size and layout of `$e`
        // (f32 as f32, i8 and the repr(transparent) MaskByte as i8); the CPU has AVX-512F and BW
        // (the block packer's own contract).
        unsafe { $word($c.as_ptr().cast::<$e>(), u64::MAX) }
    };
}

/// The short last word of a row: the word function on its lanes only.
macro_rules! tail {
    ($word:ident, $t:ty, $e:ty, $p:literal, $tail:expr) => {
        // SAFETY: the tail holds len < 64 readable elements and `lanes` selects exactly those; the
        // masked loads read nothing else. CPU: as in `full!`.
        unsafe { $word($tail.as_ptr().cast::<$e>(), lanes($tail.len())) }
    };
}

simd_family!(Isa::Avx512, "avx512f,avx512bw", full, tail);
