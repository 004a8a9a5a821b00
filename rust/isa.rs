//! Instruction-set selection for the kernels: what this CPU can run, and which path a call uses.
//!
//! Three paths exist for every popcount kernel (and for the packers of f32, i8 and mask bytes; see
//! `bits/mod.rs`):
//!
//! * `avx512`: AVX-512F + AVX-512 VPOPCNTDQ (`vpopcntq` on 8 words at once), and AVX-512BW (byte
//!   masks, used by the packers; every CPU with VPOPCNTDQ except Knights Mill has it), and
//!   AVX-512 BITALG (`vpopcntw`, the 16-bit lanes of `crate::net`; the same CPUs);
//! * `avx2`: AVX2, popcount by a `vpshufb` lookup on nibble words, bytes summed with `vpsadbw`;
//! * `scalar`: portable Rust (`u64::count_ones`), always available, on every architecture.
//!
//! The choice is made per call, from (in order) the `isa` argument, the environment variable
//! `APB_KERNEL_ISA=avx512|avx2|scalar`, else the best path this CPU supports. CPU detection runs once
//! (`is_x86_feature_detected!` caches it); asking for a path the CPU lacks is an error, never a crash.
//!
//! # Dispatch
//!
//! Every kernel module picks its code path the same way, once per call:
//!
//! * each ISA has a *family*: a `Copy` struct of that ISA's geometry (lanes, tile or block sizes)
//!   and `unsafe fn` pointers to its `#[target_feature]` routines, defined as a `FAMILY` constant
//!   in the module's per-ISA file (`bgemm/avx2.rs`, `bits/avx512.rs`, ...; the portable family
//!   next to the driver or in `scalar.rs`);
//! * `module::family(isa) -> Option<Family>` returns it through [`PerIsa::pick`], which asks
//!   [`Isa::is_available`] first (None when this CPU lacks `isa`, which the driver turns into an error);
//! * the driver calls the family's routines. Their one safety requirement, "the CPU supports the
//!   family's ISA", is discharged by having obtained the family from `family(isa)`.
//!
//! `bgemm::family` (microkernels and their `(mr, nr)` geometry per product kind), `bits::family`
//! (block packers per element type, and the build of the column packer) and `spmm`'s `family`
//! (column block and its routine) follow it. So no `#[target_feature]` function is reachable
//! without that check.

use std::fmt;

/// Name of the environment variable that forces an ISA when the call does not.
pub(crate) const ENV_VAR: &str = "APB_KERNEL_ISA";

/// A kernel code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, `u64::count_ones`.
    Scalar,
    /// x86-64 AVX2 (nibble-lookup popcount).
    Avx2,
    /// x86-64 AVX-512F + VPOPCNTDQ + BW + BITALG.
    Avx512,
}

impl Isa {
    /// Every path, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Scalar];

    /// The name used by the `isa` argument and `APB_KERNEL_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parse a name (surrounding blanks and case are ignored).
    pub fn parse(name: &str) -> Option<Isa> {
        let name = name.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512bitalg") // 16-bit popcounts (crate::net)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }
}

/// One value per ISA (a module's families), and the one place that picks the value of an ISA: only
/// when this CPU runs it, so a family is never reached without that check.
#[derive(Clone, Copy)]
pub(crate) struct PerIsa<F> {
    pub scalar: F,
    #[cfg(target_arch = "x86_64")]
    pub avx2: F,
    #[cfg(target_arch = "x86_64")]
    pub avx512: F,
}

impl<F: Copy> PerIsa<F> {
    /// The value of `isa`, or None if this build or CPU lacks it.
    pub fn pick(&self, isa: Isa) -> Option<F> {
        if !isa.is_available() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(self.scalar),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(self.avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(self.avx512),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU can run, best first (always ends with `scalar`).
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.is_available()).collect()
}

/// The best path this CPU can run.
pub(crate) fn best() -> Isa {
    Isa::ALL
        .into_iter()
        .find(|isa| isa.is_available())
        .unwrap_or(Isa::Scalar)
}

fn names(list: &[Isa]) -> String {
    list.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

/// Resolve a requested name (`what` says where it came from, for the message).
pub(crate) fn check(name: &str, what: &str) -> Result<Isa, String> {
    let isa = Isa::parse(name)
        .ok_or_else(|| format!("{what} must be one of {}; got {name:?}", names(&Isa::ALL)))?;
    if !isa.is_available() {
        return Err(format!(
            "{what} asks for {isa}, which this CPU does not support (available: {})",
            names(&available())
        ));
    }
    Ok(isa)
}

/// The path for one call: the explicit request, else `APB_KERNEL_ISA`, else [`best`].
///
/// `arg_name` names the argument in error messages (e.g. "bgemm_1x1: isa").
pub fn resolve(requested: Option<&str>, arg_name: &str) -> Result<Isa, String> {
    if let Some(name) = requested {
        return check(name, arg_name);
    }
    match std::env::var(ENV_VAR) {
        Ok(v) if !v.trim().is_empty() => check(&v, &format!("environment variable {ENV_VAR}")),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(best()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable {ENV_VAR} is not valid unicode"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse"), None);
    }

    #[test]
    fn scalar_is_always_there_and_last() {
        let list = available();
        assert_eq!(list.last(), Some(&Isa::Scalar));
        assert_eq!(list.first(), Some(&best()));
    }

    #[test]
    fn explicit_requests() {
        assert_eq!(resolve(Some("scalar"), "isa"), Ok(Isa::Scalar));
        let err = resolve(Some("neon"), "f: isa").unwrap_err();
        assert!(
            err.starts_with("f: isa must be one of avx512, avx2, scalar"),
            "{err}"
        );
        for isa in Isa::ALL {
            assert_eq!(check(isa.name(), "isa").is_ok(), isa.is_available());
        }
    }
}
