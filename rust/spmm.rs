//! CSR sparse × dense: `out = S · x` with `S` an `(M, K)` CSR matrix and `x` a row-major `(K, N)`
//! float32 matrix (the `S·X` half of APB's `Y = α·(B·X) + S·X`, METHODS §1.8).
//!
//! Output rows are independent, so threads take chunks of rows. Within a chunk the columns are cut into
//! blocks of `NB` floats (128 for AVX-512, 64 for AVX2, 16 for scalar): for each row the block of the
//! output lives in registers (8 accumulators) while the row's non-zeros stream by, each one a
//! broadcast of `data[t]` and one fused multiply-add per vector with row `indices[t]` of `x`. Blocks are
//! the outer loop so the `K × NB` slab of `x` they read stays in cache across the chunk's rows. The
//! last, narrower block uses fewer vectors and a masked last vector.
//!
//! Sums run in the order of the non-zeros; AVX-512/AVX2 use FMA (one rounding per step), the scalar
//! path a multiply then an add, so results agree with NumPy to float rounding, not bit for bit.

use crate::isa::{Isa, PerIsa};

/// Which argument of `csr_matmul` is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrError {
    pub arg: &'static str,
    pub msg: String,
}

/// "indices[3] = 9 is outside ..." reads on its own; "must have ..." needs the argument's name first.
impl std::fmt::Display for CsrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.msg.starts_with(self.arg) {
            f.write_str(&self.msg)
        } else {
            write!(f, "{} {}", self.arg, self.msg)
        }
    }
}

fn err(arg: &'static str, msg: String) -> CsrError {
    CsrError { arg, msg }
}

/// Check a CSR matrix with `k` columns; returns its number of rows M.
///
/// `indptr` has M + 1 >= 1 entries, starts at 0, never decreases and ends at `nnz = indices.len()`;
/// `data` has nnz entries; every index is in `[0, k)`.
pub fn validate(indptr: &[i64], indices: &[i32], data_len: usize, k: usize) -> Result<usize, CsrError> {
    let nnz = indices.len();
    let Some((&first, _)) = indptr.split_first() else {
        return Err(err("indptr", "must have M + 1 >= 1 entries, got 0".into()));
    };
    if first != 0 {
        return Err(err("indptr", format!("must start at 0, got indptr[0] = {first}")));
    }
    if let Some(i) = indptr.windows(2).position(|p| p[1] < p[0]) {
        return Err(err(
            "indptr",
            format!(
                "must be non-decreasing, got indptr[{}] = {} > indptr[{}] = {}",
                i,
                indptr[i],
                i + 1,
                indptr[i + 1]
            ),
        ));
    }
    let last = indptr[indptr.len() - 1];
    if usize::try_from(last).ok() != Some(nnz) {
        return Err(err(
            "indptr",
            format!("indptr[-1] = {last} must equal nnz = len(indices) = {nnz}"),
        ));
    }
    if data_len != nnz {
        return Err(err(
            "data",
            format!("must have nnz = len(indices) = {nnz} entries, got {data_len}"),
        ));
    }
    if let Some(t) = indices.iter().position(|&j| j < 0 || j as usize >= k) {
        return Err(err(
            "indices",
            format!(
                "indices[{t}] = {} is outside [0, K) with K = {k} (the columns of S)",
                indices[t]
            ),
        ));
    }
    Ok(indptr.len() - 1)
}

/// A validated CSR matrix and the dense operand, shared read-only by the tasks.
#[derive(Clone, Copy)]
struct Problem<'a> {
    indptr: &'a [i64],
    indices: &'a [i32],
    data: &'a [f32],
    x: &'a [f32],
    n: usize,
}

/// One ISA's column-block routine: rows `r0 .. r0 + out.len() / n` of the output, columns
/// `j0 .. j0 + width` (`width <= block`), into `out` (those rows, full width n).
///
/// # Safety
/// The CPU supports the ISA of the [`Family`] it came from; the [`Problem`] is validated.
type BlockFn = unsafe fn(&Problem, usize, usize, usize, &mut [f32]);

/// One ISA's sparse × dense routine and its column block (the dispatch idiom of `isa.rs`).
#[derive(Clone, Copy)]
struct Family {
    /// Output columns per block.
    block: usize,
    run: BlockFn,
}

/// The portable routine.
const PORTABLE: Family = Family {
    block: SCALAR_NB,
    run: block_scalar,
};

/// The routine of `isa`, or None if this build or CPU lacks it. The AVX2 routine also needs FMA;
/// on a CPU with AVX2 but no FMA the avx2 path runs the portable routine.
fn family(isa: Isa) -> Option<Family> {
    PerIsa {
        scalar: PORTABLE,
        #[cfg(target_arch = "x86_64")]
        avx2: if std::arch::is_x86_feature_detected!("fma") {
            x86::AVX2
        } else {
            PORTABLE
        },
        #[cfg(target_arch = "x86_64")]
        avx512: x86::AVX512,
    }
    .pick(isa)
}

/// `out = S · x`. `x` is row-major `(k, n)`, `out` row-major `(M, n)` with M = `indptr.len() − 1`.
/// Validates everything first; runs on `threads` threads with the vector width of `isa`.
#[allow(clippy::too_many_arguments)]
pub fn csr_matmul(
    indptr: &[i64],
    indices: &[i32],
    data: &[f32],
    x: &[f32],
    k: usize,
    n: usize,
    isa: Isa,
    threads: usize,
    out: &mut [f32],
) -> Result<(), CsrError> {
    let m = validate(indptr, indices, data.len(), k)?;
    if k.checked_mul(n) != Some(x.len()) {
        return Err(err(
            "x",
            format!("must hold K·N = {k}·{n} values, got {}", x.len()),
        ));
    }
    if m.checked_mul(n) != Some(out.len()) {
        return Err(err(
            "out",
            format!("must hold M·N = {m}·{n} values, got {}", out.len()),
        ));
    }
    let Some(Family { block, run }) = family(isa) else {
        return Err(err("isa", format!("{isa} is not available on this CPU")));
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let prob = Problem {
        indptr,
        indices,
        data,
        x,
        n,
    };
    // SAFETY (of every `run` call below): `run` comes from `family(isa)`, which checked the CPU
    // (AVX2 with FMA), the CSR arrays were validated against k, x holds k·n values, and the chunk is whole rows of out.
    let do_rows = |r0: usize, chunk: &mut [f32]| {
        let mut j0 = 0;
        while j0 < n {
            let width = block.min(n - j0);
            unsafe { run(&prob, r0, j0, width, chunk) };
            j0 += width;
        }
    };
    if threads <= 1 {
        do_rows(0, out);
        return Ok(());
    }
    // About 8 tasks per thread, weighted by rows (non-zeros are usually spread evenly).
    let rows_per_task = m.div_ceil(8 * threads).max(1);
    let chunks: Vec<_> = out.chunks_mut(rows_per_task * n).enumerate().collect();
    crate::threads::run_claimed(threads, chunks, |(c, chunk)| {
        do_rows(c * rows_per_task, chunk);
        true
    })
    .map(|_| ())
    .map_err(|e| err("threads", e))
}

/// Columns per block of the scalar path.
const SCALAR_NB: usize = 16;

/// Portable block routine: plain multiply-add, `SCALAR_NB` accumulators.
///
/// # Safety
/// None needed beyond the `BlockFn` contract; it is `unsafe fn` only to share the type. Slices are
/// accessed with bounds checks (validated inputs never fail them).
unsafe fn block_scalar(p: &Problem, r0: usize, j0: usize, width: usize, out: &mut [f32]) {
    let n = p.n;
    for (r, orow) in out.chunks_exact_mut(n).enumerate() {
        let i = r0 + r;
        let (Some(&s), Some(&e)) = (p.indptr.get(i), p.indptr.get(i + 1)) else {
            return;
        };
        let mut acc = [0f32; SCALAR_NB];
        for t in s as usize..e as usize {
            let (col, d) = (p.indices[t] as usize, p.data[t]);
            let xrow = &p.x[col * n + j0..col * n + j0 + width];
            for (a, &v) in acc.iter_mut().zip(xrow) {
                *a += d * v;
            }
        }
        orow[j0..j0 + width].copy_from_slice(&acc[..width]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Family, Problem};

    /// AVX-512F, 8 zmm of 16 floats per block.
    pub(super) const AVX512: Family = Family {
        block: NB512,
        run: block_avx512,
    };

    /// AVX2 + FMA, 8 ymm of 8 floats per block.
    pub(super) const AVX2: Family = Family {
        block: NB256,
        run: block_avx2,
    };

    /// Columns per block: 8 zmm of 16 floats.
    const NB512: usize = 128;
    /// Columns per block: 8 ymm of 8 floats.
    const NB256: usize = 64;

    /// One ISA's block routine `$block` and the row kernel `$rows::<V>` it dispatches to, compiled
    /// with `$features` for vectors `$vec` of `$lanes` floats. `[zero, set1, fmadd, loadu, storeu]`
    /// name the intrinsics whose signatures agree across ISAs; the three that differ are written as
    /// closure-like expressions: `tail = |valid| ...`, the mask of lanes `0 .. valid` (1 ..= lanes), and
    /// `load_tail = |ptr, mask| ...` / `store_tail = |ptr, mask, acc| ...`, which touch only the lanes
    /// of `mask` (others read as zero, not written, never fault). The `unsafe` calls and their SAFETY
    /// arguments are in this shared body.
    macro_rules! block_routine {
        (
            $isa:literal, $features:literal: $block:ident, $rows:ident, $vec:ty, $lanes:literal,
            [$zero:ident, $set1:ident, $fmadd:ident, $load:ident, $store:ident],
            tail = |$valid:ident| $tail:expr,
            load_tail = |$ltp:ident, $ltm:ident| $load_tail:expr,
            store_tail = |$stp:ident, $stm:ident, $sta:ident| $store_tail:expr $(,)?
        ) => {
            /// # Safety
            #[doc = concat!($isa, " is available; `p` is validated (every index < K, indptr consistent,")]
            /// x = K·n floats); `out` is whole rows r0.. of the (M, n) output; `j0 + width <= n`,
            #[doc = concat!("`width <= 8·", $lanes, "`.")]
            pub unsafe fn $block(p: &Problem, r0: usize, j0: usize, width: usize, out: &mut [f32]) {
                // SAFETY: forwarded; V = ceil(width / lanes) vectors cover the block, the last one
                // masked.
                unsafe {
                    match width.div_ceil($lanes) {
                        1 => $rows::<1>(p, r0, j0, width, out),
                        2 => $rows::<2>(p, r0, j0, width, out),
                        3 => $rows::<3>(p, r0, j0, width, out),
                        4 => $rows::<4>(p, r0, j0, width, out),
                        5 => $rows::<5>(p, r0, j0, width, out),
                        6 => $rows::<6>(p, r0, j0, width, out),
                        7 => $rows::<7>(p, r0, j0, width, out),
                        8 => $rows::<8>(p, r0, j0, width, out),
                        _ => {}
                    }
                }
            }

            /// # Safety
            #[doc = concat!("As for [`", stringify!($block), "`], with `", $lanes, "·(V − 1) < width <= ")]
            #[doc = concat!($lanes, "·V`.")]
            #[target_feature(enable = $features)]
            unsafe fn $rows<const V: usize>(
                p: &Problem,
                r0: usize,
                j0: usize,
                width: usize,
                out: &mut [f32],
            ) {
                const L: usize = $lanes;
                let n = p.n;
                if width == 0 || width > L * V || j0 + width > n {
                    return;
                }
                // Lanes of the last vector that are inside the block; masked lanes are neither read
                // nor written.
                let tail = {
                    let $valid = width - L * (V - 1); // 1 ..= L
                    $tail
                };
                let xp = p.x.as_ptr();
                for (r, orow) in out.chunks_exact_mut(n).enumerate() {
                    let i = r0 + r;
                    let (Some(&s), Some(&e)) = (p.indptr.get(i), p.indptr.get(i + 1)) else {
                        return;
                    };
                    let (Some(cols), Some(vals)) = (
                        p.indices.get(s as usize..e as usize),
                        p.data.get(s as usize..e as usize),
                    ) else {
                        return;
                    };
                    let mut acc: [$vec; V] = [$zero(); V];
                    for (&col, &d) in cols.iter().zip(vals) {
                        let dv = $set1(d);
                        // SAFETY: col < K (validated), so row col of x spans [col·n, col·n + n)
                        // inside x (x has K·n floats), and j0 + width <= n: every lane read below
                        // is in that row.
                        let base = unsafe { xp.add(col as usize * n + j0) };
                        for (v, a) in acc.iter_mut().enumerate() {
                            let xv = if v + 1 == V {
                                // SAFETY: as above; the masked load (AVX-512 `maskz_loadu`, AVX2
                                // VMASKMOVPS) reads only the lanes < valid, columns
                                // j0 + L·v + lane < j0 + width; masked-off lanes are not accessed.
                                unsafe {
                                    let ($ltp, $ltm) = (base.add(L * v), tail);
                                    $load_tail
                                }
                            } else {
                                // SAFETY: lanes L·v .. L·v + L <= L·(V − 1) < width: inside the block.
                                unsafe { $load(base.add(L * v)) }
                            };
                            *a = $fmadd(dv, xv, *a);
                        }
                    }
                    let op = orow.as_mut_ptr();
                    for (v, a) in acc.iter().enumerate() {
                        if v + 1 == V {
                            // SAFETY: orow has n floats; the masked store writes only the lanes
                            // < valid, columns j0 + L·v + lane < j0 + width <= n.
                            unsafe {
                                let ($stp, $stm, $sta) = (op.add(j0 + L * v), tail, *a);
                                $store_tail
                            }
                        } else {
                            // SAFETY: columns j0 + L·v .. j0 + L·v + L <= j0 + L·(V − 1) < j0 + width
                            // <= n, inside orow.
                            unsafe { $store(op.add(j0 + L * v), *a) };
                        }
                    }
                }
            }
        };
    }

    block_routine! {
        "AVX-512F", "avx512f": block_avx512, rows512, __m512, 16,
        [_mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_storeu_ps],
        tail = |valid| (0xFFFFu32 >> (16 - valid)) as __mmask16,
        load_tail = |ptr, mask| _mm512_maskz_loadu_ps(mask, ptr),
        store_tail = |ptr, mask, acc| _mm512_mask_storeu_ps(ptr, mask, acc),
    }

    block_routine! {
        "AVX2 and FMA", "avx2,fma": block_avx2, rows256, __m256, 8,
        [_mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_storeu_ps],
        tail = |valid| {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes)
        },
        load_tail = |ptr, mask| _mm256_maskload_ps(ptr, mask),
        store_tail = |ptr, mask, acc| _mm256_maskstore_ps(ptr, mask, acc),
    }
}

/// The plain reference `S · x` in f64 (tests).
#[cfg(test)]
fn reference(indptr: &[i64], indices: &[i32], data: &[f32], x: &[f32], n: usize) -> Vec<f64> {
    let m = indptr.len().saturating_sub(1);
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for t in indptr[i] as usize..indptr[i + 1] as usize {
            let col = indices[t] as usize;
            for j in 0..n {
                out[i * n + j] += data[t] as f64 * x[col * n + j] as f64;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    fn random_csr(m: usize, k: usize, density_pct: u64, rng: &mut Rng) -> (Vec<i64>, Vec<i32>, Vec<f32>) {
        let (mut indptr, mut indices, mut data) = (vec![0i64], vec![], vec![]);
        for _ in 0..m {
            for j in 0..k {
                if rng.next() % 100 < density_pct {
                    indices.push(j as i32);
                    data.push(rng.f());
                }
            }
            indptr.push(indices.len() as i64);
        }
        (indptr, indices, data)
    }

    #[test]
    fn every_isa_matches_the_reference() {
        let mut rng = Rng(12345);
        for isa in crate::isa::available() {
            for &(m, k, n, d) in &[
                (1, 1, 1, 100),
                (3, 5, 1, 50),
                (7, 40, 17, 20),
                (33, 64, 129, 10),
                (20, 100, 300, 5),
                (5, 30, 250, 0),
                (64, 576, 144, 2),
            ] {
                let (indptr, indices, data) = random_csr(m, k, d, &mut rng);
                let x: Vec<f32> = (0..k * n).map(|_| rng.f()).collect();
                let want = reference(&indptr, &indices, &data, &x, n);
                for threads in [1, 2, 3] {
                    let mut out = vec![f32::NAN; m * n];
                    csr_matmul(&indptr, &indices, &data, &x, k, n, isa, threads, &mut out).unwrap();
                    for (g, w) in out.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{isa} {m}x{k}x{n}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn validation_names_the_argument() {
        let ok = validate(&[0, 1, 3], &[0, 2, 1], 3, 3);
        assert_eq!(ok, Ok(2));
        assert_eq!(validate(&[], &[], 0, 3).unwrap_err().arg, "indptr");
        assert_eq!(validate(&[1, 1], &[0], 1, 3).unwrap_err().arg, "indptr");
        assert_eq!(validate(&[0, 2, 1], &[0, 1], 2, 3).unwrap_err().arg, "indptr");
        assert_eq!(validate(&[0, 1, 2], &[0, 1, 2], 3, 3).unwrap_err().arg, "indptr");
        assert_eq!(validate(&[0, 1, 3], &[0, 2, 1], 2, 3).unwrap_err().arg, "data");
        assert_eq!(validate(&[0, 1, 3], &[0, 3, 1], 3, 3).unwrap_err().arg, "indices");
        assert_eq!(
            validate(&[0, 1, 3], &[0, -1, 1], 3, 3).unwrap_err().arg,
            "indices"
        );
        assert_eq!(validate(&[0, 0], &[], 0, 0), Ok(1));
        let mut out = vec![0f32; 2];
        let e = csr_matmul(&[0, 1], &[0], &[1.0], &[1.0; 3], 2, 2, Isa::Scalar, 1, &mut out).unwrap_err();
        assert_eq!(e.arg, "x");
    }
}
