//! Plain loops compiled for the widest vectors this CPU has.
//!
//! The extension is built for baseline x86-64 (SSE2), so a loop the compiler vectorises on its own
//! (batch norm's passes, the elementwise maps) would use 4-float vectors. A function defined with
//! [`widest!`] is compiled three times, for AVX-512, AVX2 and the baseline, and runs the widest one
//! this CPU has. The results keep their bits: Rust never fuses a multiply and an add on its own and
//! never reorders float operations, so only the vector width changes.

/// Define a function whose body is compiled for AVX-512F, AVX2 and the baseline, the widest this
/// CPU runs picked at each call (`is_x86_feature_detected!` caches the answer).
macro_rules! widest {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use widest;
