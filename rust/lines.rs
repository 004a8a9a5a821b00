//! Buffers that start on a 64-byte cache line.
//!
//! A `Vec<u64>` or `Vec<f32>` starts wherever the allocator puts it (16-byte aligned), so a vector
//! load from it may straddle two lines, and where two threads write neighbouring parts of it, the
//! line at their boundary is one they share. Starting on a line makes both depend only on the
//! offsets the code chooses.

use std::marker::PhantomData;

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A value whose all-zero bytes are a valid value (0 or 0.0), so that zeroed lines hold them.
pub(crate) trait Plain: Copy {}
impl Plain for u64 {}
impl Plain for f32 {}

/// `len` values of `T` from the start of a cache line, zero when made.
pub(crate) struct OnLines<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    of: PhantomData<T>,
}

impl<T: Plain> Default for OnLines<T> {
    fn default() -> Self {
        OnLines::zeros(0)
    }
}

impl<T: Plain> OnLines<T> {
    const PER_LINE: usize = 64 / std::mem::size_of::<T>();

    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        let mut v = OnLines {
            lines: Vec::new(),
            len: 0,
            of: PhantomData,
        };
        v.resize(len);
        v
    }

    /// Resize to `len` values (new values 0).
    pub(crate) fn resize(&mut self, len: usize) {
        self.lines.resize(len.div_ceil(Self::PER_LINE), Line([0; 64]));
        self.len = len;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `Line` is 64 bytes with no padding and T (u64 or f32) divides it, is valid for
        // any bytes the lines hold (zeros, or values written as T) and needs at most 64-byte
        // alignment, so the lines hold PER_LINE·lines.len() >= len contiguous T.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, borrowed uniquely through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_on_a_line_and_new_ones_are_zero() {
        let mut f = OnLines::<f32>::zeros(37);
        assert_eq!(f.as_slice().as_ptr() as usize % 64, 0);
        assert!(f.as_slice().iter().all(|&v| v == 0.0) && f.len() == 37);
        f.as_mut_slice()[36] = 2.5;
        f.resize(100);
        assert_eq!(f.as_slice()[36], 2.5);
        assert!(f.as_slice()[37..].iter().all(|&v| v == 0.0));
        let mut w = OnLines::<u64>::default();
        w.resize(9);
        assert_eq!((w.len(), w.as_slice().as_ptr() as usize % 64), (9, 0));
    }
}
