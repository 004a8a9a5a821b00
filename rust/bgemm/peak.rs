//! The machine's xor-popcount-add bound, measured: the rate of a loop that does nothing but the
//! popcount GEMM's inner step (XOR, VPOPCNTQ, VPADDQ on 512 bits) on registers, with one load per 12
//! such steps and no stores. `benchmarks/kernels.py` states each AVX-512 `bgemm_1x1` figure as a
//! fraction of it, on the same machine and thread count, so the bound follows the CPU (its popcount
//! throughput and its clock under load) instead of a table of per-model constants.

/// Binary MACs per second of the loop on `threads` threads, each running `steps` steps of 12
/// independent 512-bit triples (enough accumulators to cover VPOPCNTQ's latency); None unless the
/// CPU has AVX-512 VPOPCNTDQ.
pub fn xor_popcount_peak(threads: usize, steps: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !crate::isa::Isa::Avx512.is_available() {
            return None;
        }
        let start = std::time::Instant::now();
        let sums = std::sync::Mutex::new(0u64);
        // One loop per thread, each on its own thread (a shared queue could let the caller run two
        // loops while a helper is still waking up, and report one thread's rate as two's).
        crate::threads::with_helpers(threads, &|t| {
            // SAFETY: AVX-512 VPOPCNTDQ checked above
            let s = unsafe { x86::run(steps, t as u64) };
            *sums.lock().unwrap_or_else(|e| e.into_inner()) += s;
        })
        .ok()?;
        let seconds = start.elapsed().as_secs_f64();
        let sink = sums.into_inner().unwrap_or_else(|e| e.into_inner());
        std::hint::black_box(sink);
        Some((threads * steps * ACCUMULATORS * 512) as f64 / seconds)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, steps);
        None
    }
}

const ACCUMULATORS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::ACCUMULATORS;

    /// `steps` steps of `acc_i += popcount(a_i ^ t)`, t loaded every step from a small table (so
    /// nothing is hoisted out of the loop, at the cost of a load, as the GEMM pays, and no extra
    /// vector op: the loop is exactly 3 vector ops per 512 MACs); returns a checksum that keeps the
    /// work observable.
    ///
    /// # Safety
    /// The CPU has AVX-512F and VPOPCNTDQ.
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub(super) unsafe fn run(steps: usize, seed: u64) -> u64 {
        let a: [__m512i; ACCUMULATORS] = std::array::from_fn(|i| {
            _mm512_set1_epi64((seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1))) as i64)
        });
        let mut acc = [_mm512_setzero_si512(); ACCUMULATORS];
        let table: [__m512i; 16] = std::array::from_fn(|j| _mm512_set1_epi64((seed ^ j as u64) as i64));
        for step in 0..steps {
            let t = std::hint::black_box(&table)[step % 16];
            for i in 0..ACCUMULATORS {
                acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], t)));
            }
        }
        let total = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, &v| _mm512_add_epi64(s, v));
        _mm512_reduce_add_epi64(total) as u64
    }
}
