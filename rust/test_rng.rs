//! A tiny deterministic generator for the unit tests (xorshift64; no dependency, same numbers everywhere).

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// One of `from`, uniformly.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }

    /// A float in [-1, 1] on a grid of 0.001.
    pub fn f(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }

    /// `rows` random rows of `k` bits packed as `crate::bits` packs them (padding bits zero).
    pub fn packed_rows(&mut self, rows: usize, k: usize) -> Vec<u64> {
        let w = crate::bits::words_for(k);
        (0..rows * w)
            .map(|q| {
                let v = self.next();
                if q % w == w - 1 {
                    v & crate::bits::last_word_mask(k)
                } else {
                    v
                }
            })
            .collect()
    }
}
