//! Bit-packed popcount GEMMs: `out[i, j] = Σ_t a[i, t] · b[j, t]` for ±1 and 2-bit operands.
//!
//! Both operands are packed along K (`crate::bits`), so the product is `A·Bᵀ`. A 2-bit operand is two
//! sign planes `hi`, `lo` with `v = 2·hi + lo` (METHODS §6.3), so every product is a weighted sum of
//! binary dot products `K − 2·popcount(x ^ y)`:
//!
//! * 1x1: `a·b`;
//! * 1x2: `2·(a·b_hi) + (a·b_lo)`;
//! * 2x2: `4·(a_hi·b_hi) + 2·(a_hi·b_lo) + 2·(a_lo·b_hi) + (a_lo·b_lo)`.
//!
//! With plane weights `2^e`, `out = (Σ weights)·K − 2·S` where `S = Σ 2^e·popcount(...)`. The
//! microkernels accumulate one popcount sum per weight exponent `e` (1, 2 or 3 classes) and combine at
//! the end, all planes fused in one pass over K.
//!
//! # Blocking
//!
//! Output columns are cut into panels of `nc = nr · lanes` columns (`lanes` = words per vector
//! register: 8 for AVX-512, 4 for AVX2, 1 for scalar). A task fills one B panel (`panel.rs`: word `p`
//! of `nc` neighbouring columns contiguous, all planes interleaved) and sweeps it against blocks of
//! `mr` rows of A, read in place: the microkernel broadcasts word `p` of each A row and XORs it with
//! the panel vectors, keeping an `mr × nr` (× classes) block of accumulators in registers over the
//! whole of K, then writes `mr × nc` finished int32 results. A family may fill panels its own way
//! (AVX-512: 8 × 8 transposes of words). The last panel uses a narrower
//! microkernel (`nr` rounded up to cover the remaining columns); rows past M repeat a valid row and are
//! not stored. Panels fit L1 for the paper's shapes (e.g. 48 columns × K = 4608 bits = 27 KiB). A
//! microkernel call takes a whole chunk of rows and loops over its row blocks itself.
//!
//! A family may compute the few columns past the last whole vector by dot products along K instead
//! (`dot.rs`; AVX-512 at N = 25 and K = 4608, where the last vector would carry 1 column in 8).
//!
//! B may also come packed beforehand (`prepared.rs`): a layer's weights, packed once, with the
//! activations as A. Then nothing is packed per call; the tasks are the same.
//!
//! # Threads
//!
//! A task is a chunk of rows of a group of neighbouring panels (about 8 tasks per thread); rows are
//! split into chunks only when there are too few panels. Each task writes a disjoint rectangle of
//! `out`; the calling thread starts on the tasks at once and the team's helpers join
//! (`crate::threads`). A worker keeps the last panel it packed, and tasks go panel by panel, each
//! thread through its own contiguous share, so the row chunks of one panel reuse its packing without
//! a separate packing pass (and the sync after it) in every call.

/// A family's microkernel table: each product kind's `MR` and the `nr` (vectors per row) it has
/// instantiations for, always `1 ..= nr_max`. Generates `geometry(kind) -> (MR, nr_max)` and the
/// family's `tile(kind, nr, t)`, which runs `$kernel::<MR, {nr · $scale}, PA, PB>` with `(PA, PB) =
/// kind.planes()` (`$scale` is 1 but for the tests' 8-lane portable family) and returns false,
/// computing nothing, for an `nr` not in the table. One table keeps the two in step.
macro_rules! microkernels {
    ($kernel:ident, $scale:literal; $($kind:ident => $mr:literal, [$($nr:literal),+];)+) => {
        /// `(mr, nr_max)` of each product kind.
        pub(super) fn geometry(kind: Kind) -> (usize, usize) {
            match kind {
                $(Kind::$kind => ($mr, [$($nr),+].len()),)+
            }
        }

        /// Run one tile with `nr` vectors per row.
        ///
        /// # Safety
        /// As for the family's kernel: the CPU supports its ISA, and the tile's output rectangle is
        /// valid and unshared (see [`Tile`]).
        pub(super) unsafe fn tile(kind: Kind, nr: usize, t: &Tile) -> bool {
            // SAFETY (all arms): forwarded from the caller; `nr` selects the instantiation whose NR
            // is nr · $scale, the width `fits` checks the tile against.
            unsafe {
                match (kind, nr) {
                    $($(
                        (Kind::$kind, $nr) => $kernel::<
                            $mr,
                            { $nr * $scale },
                            { Kind::$kind.planes().0 },
                            { Kind::$kind.planes().1 },
                        >(t),
                    )+)+
                    _ => false,
                }
            }
        }
    };
}

mod dot;
mod panel;
pub mod peak;
mod prepared;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::bits::words_for;
use crate::isa::{Isa, PerIsa};
pub use prepared::{bgemm_prepared, Prepared};

/// Largest number of A rows a microkernel handles at once.
const MR_MAX: usize = 8;

/// The product computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// ±1 × ±1.
    B1x1,
    /// ±1 × 2-bit (B has two planes).
    B1x2,
    /// 2-bit × ±1 (A has two planes): `2·(a_hi·b) + (a_lo·b)`.
    B2x1,
    /// 2-bit × 2-bit.
    B2x2,
}

impl Kind {
    /// Planes of (A, B).
    pub const fn planes(self) -> (usize, usize) {
        match self {
            Kind::B1x1 => (1, 1),
            Kind::B1x2 => (1, 2),
            Kind::B2x1 => (2, 1),
            Kind::B2x2 => (2, 2),
        }
    }

    /// Sum of the plane-pair weights: the largest |out| is this times K.
    pub fn weight_sum(self) -> i64 {
        let (pa, pb) = self.planes();
        ((1i64 << pa) - 1) * ((1i64 << pb) - 1)
    }

    /// Largest K whose results fit in int32.
    pub fn max_k(self) -> usize {
        (i32::MAX as i64 / self.weight_sum()) as usize
    }

    /// The kernel's Python name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::B1x1 => "bgemm_1x1",
            Kind::B1x2 => "bgemm_1x2",
            Kind::B2x1 => "bgemm_2x1",
            Kind::B2x2 => "bgemm_2x2",
        }
    }
}

/// One microkernel call: `rows` rows of A, in blocks of `mr`, against one B panel (`nc` columns),
/// over the whole of K. The microkernel loops over the blocks itself, so a panel's sweep is one call.
///
/// Invariants the driver establishes (a microkernel re-checks the slice lengths and computes nothing,
/// returning false, if they fail; the output rectangle it must trust):
/// * `w` is the words per row the microkernel sees (`2·words_for(k)` for a nibble family);
/// * `a[plane]` holds the call's rows of A, `w` words each: at least `rows · w` words, plane < PA;
/// * `b` holds at least `w · PB · nr · lanes` words in the `panel.rs` layout;
/// * `cols ≤ nr · lanes`, and `out + r·ld + c` for `r < rows`, `c < cols` are valid, writable
///   `i32`s that no other thread touches during the call.
pub(crate) struct Tile<'a> {
    pub a: &'a [&'a [u64]],
    pub b: &'a [u64],
    pub w: usize,
    pub out: *mut i32,
    pub ld: usize,
    pub rows: usize,
    pub cols: usize,
    /// `weight_sum · K`: `out = kconst − 2·S`; at most `i32::MAX` (the driver's K limit), which the
    /// AVX-512 kernel relies on to work in int32.
    pub kconst: i64,
}

impl Tile<'_> {
    /// Whether the slice invariants hold for a microkernel with the given shape.
    #[inline]
    pub(crate) fn fits(&self, mr: usize, nr: usize, pa: usize, pb: usize, lanes: usize) -> bool {
        let words = self.rows.checked_mul(self.w);
        let a_ok = self.a.len() >= pa && self.a[..pa].iter().all(|p| words.is_some_and(|n| p.len() >= n));
        a_ok && (1..=MR_MAX).contains(&mr)
            && self.b.len() >= panel::panel_len(self.w, pb, nr * lanes)
            && self.cols <= nr * lanes
    }

    /// Row `i` of block `j` (blocks of `mr`): the A row it reads; a row past the call repeats the
    /// block's first (computed, never stored).
    #[inline]
    pub(crate) fn row(&self, j: usize, mr: usize, i: usize) -> usize {
        debug_assert!(
            j * mr < self.rows,
            "block {j} is past the tile's {} rows",
            self.rows
        );
        if j * mr + i < self.rows {
            j * mr + i
        } else {
            j * mr
        }
    }

    /// Block `j`'s first output row and how many of its rows are stored (0 ..= mr). The pointer is
    /// only valid to write through for those rows.
    #[inline]
    pub(crate) fn block_out(&self, j: usize, mr: usize) -> (*mut i32, usize) {
        (
            self.out.wrapping_add(j * mr * self.ld),
            self.rows.saturating_sub(j * mr).min(mr),
        )
    }
}

/// One ISA's microkernels.
#[derive(Clone, Copy)]
pub(crate) struct Family {
    pub isa: Isa,
    /// Output columns per vector register.
    pub lanes: usize,
    /// The microkernels take nibble words (`panel::nibbles`): both operands are split before they
    /// reach a tile, which sees `w = 2·words_for(k)`.
    pub nibbles: bool,
    /// `(mr, nr_max)` for a kind.
    pub geometry: fn(Kind) -> (usize, usize),
    /// Run one tile with `nr` vectors per row (`1 ..= nr_max`). Returns false if the tile's slices
    /// break the invariants (nothing was computed).
    ///
    /// # Safety
    /// The CPU supports `isa`, and the tile's output rectangle is valid as documented on [`Tile`].
    pub tile: unsafe fn(Kind, usize, &Tile) -> bool,
    /// Fill a B panel: [`panel::fill_panel`]'s contract.
    ///
    /// # Safety
    /// The CPU supports `isa`.
    pub fill: panel::Fill,
    /// Dot products for the columns past the last whole vector, when [`dot::columns`] finds them
    /// cheaper that way; None: the last vector covers them.
    pub dot: Option<dot::Dot>,
}

const FAMILIES: PerIsa<Family> = PerIsa {
    scalar: scalar::FAMILY,
    #[cfg(target_arch = "x86_64")]
    avx2: avx2::FAMILY,
    #[cfg(target_arch = "x86_64")]
    avx512: avx512::FAMILY,
};

/// The microkernels of `isa`, or None if this build or CPU lacks it.
pub(crate) fn family(isa: Isa) -> Option<Family> {
    FAMILIES.pick(isa)
}

/// The output matrix, shared by the tasks; each writes only its own rectangle.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut i32);
// SAFETY: the pointer is only used to write disjoint rectangles from different tasks (see `run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, not field access, so closures capture the whole (Send + Sync) wrapper.
    fn get(self) -> *mut i32 {
        self.0
    }
}

/// Check the operands of a product (and the epilogue's per-row vectors).
#[allow(clippy::too_many_arguments)] // bgemm's own arguments
fn check(
    kind: Kind,
    a: &[&[u64]],
    b: &[&[u64]],
    m: usize,
    n: usize,
    k: usize,
    epilogue: Option<Epilogue>,
    out: &[i32],
) -> Result<(), String> {
    let name = kind.name();
    let (pa, pb) = kind.planes();
    if a.len() != pa || b.len() != pb {
        return Err(format!(
            "{name}: expected {pa} A and {pb} B planes, got {} and {}",
            a.len(),
            b.len()
        ));
    }
    if k == 0 || k > kind.max_k() {
        return Err(format!("{name}: k must be in [1, {}], got {k}", kind.max_k()));
    }
    let w = words_for(k);
    let (Some(a_len), Some(b_len), Some(o_len)) = (m.checked_mul(w), n.checked_mul(w), m.checked_mul(n))
    else {
        return Err(format!("{name}: sizes overflow (m = {m}, n = {n}, w = {w})"));
    };
    if a.iter().any(|p| p.len() != a_len) || b.iter().any(|p| p.len() != b_len) || out.len() != o_len {
        return Err(format!(
            "{name}: operand lengths do not match m = {m}, n = {n}, k = {k}"
        ));
    }
    match epilogue {
        Some(e) if e.scale.len() != m || e.shift.len() != m => Err(format!(
            "{name}: scale and shift must hold one value per row of a (m = {m}), got {} and {}",
            e.scale.len(),
            e.shift.len()
        )),
        _ => Ok(()),
    }
}

/// A per-row affine map applied to the integer products as they are finished:
/// `out[i, j] = f32(product) · scale[i] + shift[i]` (a multiply, then an add: no FMA, so exactly
/// what NumPy computes in float32), stored as the bits of that f32 in the same slot.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

impl Epilogue<'_> {
    /// Rewrite rows `rows` × columns `cols` of the `(m, ld)` matrix at `out` from int32 products to
    /// their f32 images.
    ///
    /// # Safety
    /// The rectangle lies inside the matrix, its products are written, and no other thread touches it.
    unsafe fn apply(
        &self,
        out: *mut i32,
        ld: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        for r in rows {
            let (s, t) = (self.scale[r], self.shift[r]);
            // SAFETY: forwarded from the caller: row r, columns cols of the matrix are in bounds and ours.
            let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * ld + cols.start), cols.len()) };
            for v in row {
                *v = ((*v as f32) * s + t).to_bits() as i32;
            }
        }
    }
}

/// Compute `out = A·Bᵀ` (row-major `(m, n)`) for the planes of `kind` with the microkernels of `isa`
/// on `threads` threads. `a` holds PA planes of `m × words_for(k)` words, `b` PB planes of
/// `n × words_for(k)`. Padding bits must be zero (the bindings check; here they only make results
/// wrong, never unsafe). With an `epilogue` each output holds the bits of its f32 image instead (see
/// [`Epilogue`]), made while the panel's products are still in cache. Errors instead of panicking on
/// any inconsistency.
#[allow(clippy::too_many_arguments)] // the GEMM's own parameters; a struct would only rename them
pub fn bgemm(
    kind: Kind,
    a: &[&[u64]],
    b: &[&[u64]],
    m: usize,
    n: usize,
    k: usize,
    isa: Isa,
    threads: usize,
    epilogue: Option<Epilogue>,
    out: &mut [i32],
) -> Result<(), String> {
    check(kind, a, b, m, n, k, epilogue, out)?;
    let fam = family(isa).ok_or_else(|| format!("{}: isa {isa} is not available", kind.name()))?;
    run(fam, kind, a, b, None, (m, n, k), threads, epilogue, out)
}

/// How a product's N columns are cut: panels of up to `nc_max` columns for the microkernels over
/// columns `0..n_lanes`, dot products (dot.rs) for the rest.
#[derive(Clone, Copy)]
struct Columns {
    lanes: usize,
    nc_max: usize,
    n_lanes: usize,
    panels: usize,
}

impl Columns {
    fn new(fam: Family, kind: Kind, n: usize, w: usize) -> Self {
        let (_, nr_max) = (fam.geometry)(kind);
        let nc_max = nr_max.max(1) * fam.lanes;
        let dot_cols = fam.dot.map_or(0, |_| dot::columns(n, fam.lanes, w));
        let n_lanes = n - dot_cols;
        Columns {
            lanes: fam.lanes,
            nc_max,
            n_lanes,
            panels: n_lanes.div_ceil(nc_max),
        }
    }

    /// Panel `panel`'s first column, its columns, and the vectors per row of its microkernel.
    fn panel(&self, panel: usize) -> (usize, usize, usize) {
        let c0 = panel * self.nc_max;
        let cols = self.nc_max.min(self.n_lanes - c0);
        (c0, cols, cols.div_ceil(self.lanes))
    }
}

/// [`bgemm`] on the microkernels of `fam`, its arguments checked; with `prepared`, B's panels come
/// from it (made by `fam` for `kind` and these `b`, `n`, `k`) instead of being packed here.
#[allow(clippy::too_many_arguments)]
fn run(
    fam: Family,
    kind: Kind,
    a: &[&[u64]],
    b: &[&[u64]],
    prepared: Option<&Prepared>,
    (m, n, k): (usize, usize, usize),
    threads: usize,
    epilogue: Option<Epilogue>,
    out: &mut [i32],
) -> Result<(), String> {
    let w = words_for(k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let mr = (fam.geometry)(kind).0.clamp(1, MR_MAX);
    let columns = Columns::new(fam, kind, n, w);
    let (n_lanes, panels) = (columns.n_lanes, columns.panels);
    let dot_cols = n - n_lanes;
    let row_blocks = m.div_ceil(mr);
    let (panels_per_group, blocks_per_chunk) = task_sizes(panels, row_blocks, threads.max(1));
    let kconst = kind.weight_sum() * k as i64;
    let out_ptr = OutPtr(out.as_mut_ptr());
    // A nibble family gets A split here, once (O(m·w), against the product's O(m·n·w)), and each B
    // panel split as it is packed.
    let split_a: Vec<Vec<u64>> = if fam.nibbles {
        a.iter().map(|plane| panel::split_nibbles(plane)).collect()
    } else {
        Vec::new()
    };
    let a_words = a; // the packed words themselves, for the dot products
    let (a, wt): (Vec<&[u64]>, usize) = if fam.nibbles {
        (split_a.iter().map(Vec::as_slice).collect(), 2 * w)
    } else {
        (a.to_vec(), w)
    };

    let (_, pb) = kind.planes();
    // Pack panel `panel` into `dst` (sized here); false if the family refused it (an internal error).
    let pack = |panel: usize, dst: &mut panel::Words| -> bool {
        let (c0, cols, nr) = columns.panel(panel);
        dst.resize(panel::panel_len(wt, pb, nr * fam.lanes));
        // SAFETY: `fam` came from `family(isa)`, which checked the CPU.
        unsafe { (fam.fill)(b, w, c0, cols, nr * fam.lanes, fam.nibbles, dst.as_mut_slice()) }
    };
    // The dot products of the columns past n_lanes for rows `rows` (dot.rs).
    let dot_rows = |rows: std::ops::Range<usize>| -> bool {
        let Some(dot) = fam.dot else {
            return false;
        };
        let cols = n_lanes..n;
        let tile = dot::DotTile {
            a: a_words,
            b,
            w,
            rows: rows.clone(),
            cols: cols.clone(),
            out: out_ptr,
            ld: n,
            kconst,
        };
        // SAFETY: `fam` came from `family(isa)`, which checked the CPU. Rows `rows` (≤ m) by columns
        // n_lanes..n (≤ n) of the (m, n) matrix `out`: in bounds; no panel writes these columns,
        // and the calls for distinct row ranges (distinct tasks) share no element.
        let ok = unsafe { dot(kind, &tile) };
        if let (Some(e), true) = (epilogue, ok) {
            // SAFETY: the rectangle the call above just wrote, this task's own.
            unsafe { e.apply(out_ptr.get(), n, rows, cols) };
        }
        ok
    };

    // Sweep B panel `panel`, packed in `panel_b`, against rows `rows` of A (whole row blocks but for
    // the last).
    let sweep = |panel: usize, panel_b: &[u64], rows: std::ops::Range<usize>| -> bool {
        let (c0, cols, nr) = columns.panel(panel);
        let planes: [&[u64]; 2] = std::array::from_fn(|p| {
            a.get(p)
                .and_then(|plane| plane.get(rows.start * wt..rows.end * wt))
                .unwrap_or(&[])
        });
        let tile = Tile {
            a: &planes[..a.len().min(2)],
            b: panel_b,
            w: wt,
            // SAFETY (pointer arithmetic): rows.start < m and c0 < n: the offset is < m·n = out.len().
            out: unsafe { out_ptr.get().add(rows.start * n + c0) },
            ld: n,
            rows: rows.len(),
            cols,
            kconst,
        };
        // SAFETY: `fam` came from `family(isa)`, which checked the CPU. The output rectangle is
        // rows `rows` (≤ m) by columns c0..c0+cols (≤ n) of the (m, n) matrix `out` with leading
        // dimension n: in bounds. Tasks cover distinct (panel, row chunk) pairs, so no two tiles, in
        // any thread, share an element; `out` is exclusively borrowed by this call for its whole
        // duration.
        let ok = unsafe { (fam.tile)(kind, nr, &tile) };
        if let (Some(e), true) = (epilogue, ok) {
            // SAFETY: the rectangle the tile above just wrote, this task's own (see its SAFETY).
            unsafe { e.apply(out_ptr.get(), n, rows, c0..c0 + cols) };
        }
        ok
    };

    // One B panel against a chunk of A's row blocks. A worker keeps the last panel it packed: tasks
    // are ordered panel by panel and each thread takes its own contiguous share in order, so it packs
    // each panel of its share once; a panel split across two shares, or stolen from, is packed by
    // each thread that works on it.
    let panel_task = |last: &mut LastPanel, panel: usize, chunk: usize| -> bool {
        let r0 = chunk * blocks_per_chunk * mr;
        let rows = r0..(r0 + blocks_per_chunk * mr).min(m);
        if let Some(prepared) = prepared {
            return sweep(panel, prepared.panel(panel), rows);
        }
        if last.panel != Some(panel) {
            last.panel = None;
            if !pack(panel, &mut last.words) {
                return false;
            }
            last.panel = Some(panel);
        }
        sweep(panel, last.words.as_slice(), rows)
    };

    // One task: a row chunk of a group of neighbouring panels, or a row chunk of the dot-product
    // columns. Tasks are contiguous rectangles, so two threads share output cache lines only along
    // task edges, never panel by panel.
    let task = |last: &mut LastPanel, task: Task| -> bool {
        match task {
            Task::Panels(group, chunk) => {
                let mut ok = true;
                let panel_end = ((group + 1) * panels_per_group).min(panels);
                for panel in group * panels_per_group..panel_end {
                    ok &= panel_task(last, panel, chunk);
                }
                ok
            }
            Task::Dot(rows) => dot_rows(rows),
        }
    };
    let row_chunks = row_blocks.div_ceil(blocks_per_chunk);
    let mut tasks: Vec<Task> = (0..panels.div_ceil(panels_per_group))
        .flat_map(|g| (0..row_chunks).map(move |c| Task::Panels(g, c)))
        .collect();
    if dot_cols > 0 {
        // a few row chunks of their own, so that every thread can take some
        let rows_per_task = m.div_ceil(2 * threads.max(1)).max(16);
        tasks.extend(
            (0..m)
                .step_by(rows_per_task)
                .map(|r| Task::Dot(r..(r + rows_per_task).min(m))),
        );
    }
    // The calling thread starts at once and the helpers join (`run_claimed_with`): a paper-shape
    // product takes well under a millisecond, a few times what waking a sleeping thread takes in a VM.
    let all_ok = crate::threads::run_claimed_with(threads, tasks, LastPanel::default, task)?;
    if all_ok {
        Ok(())
    } else {
        Err(format!(
            "{}: internal error: a B panel was not packed, or a tile broke the {} microkernels' invariants",
            kind.name(),
            fam.isa
        ))
    }
}

/// A unit of a product's work.
enum Task {
    /// (panel group, row chunk) for the microkernels.
    Panels(usize, usize),
    /// Rows of the dot-product columns.
    Dot(std::ops::Range<usize>),
}

/// A worker's packed B panel and which panel it is (None: none yet, or its packing failed).
#[derive(Default)]
struct LastPanel {
    panel: Option<usize>,
    words: panel::Words,
}

/// How to cut the work into tasks, as `(panels per group, row blocks per chunk)`: one task per
/// thread would leave threads idle when one is slow or when tasks differ in size (the last panel is
/// narrower), so aim at about 8 tasks per thread, cutting rows only when there are too few panels.
fn task_sizes(panels: usize, row_blocks: usize, threads: usize) -> (usize, usize) {
    let target = 8 * threads;
    if threads == 1 || panels == 0 {
        (panels.max(1), row_blocks) // (no panels: every column is a dot product's)
    } else if panels >= target {
        (panels.div_ceil(target), row_blocks)
    } else {
        let row_chunks = target.div_ceil(panels).clamp(1, row_blocks);
        (1, row_blocks.div_ceil(row_chunks))
    }
}

/// The plain reference: `Σ_classes 2^e (K − 2·popcount)` one output at a time (the tests' oracle).
#[cfg(test)]
fn reference(kind: Kind, a: &[&[u64]], b: &[&[u64]], m: usize, n: usize, k: usize) -> Vec<i32> {
    let (w, kconst) = (words_for(k), kind.weight_sum() * k as i64);
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (kconst - 2 * reference_sum(a, b, w, i, j)) as i32;
        }
    }
    out
}

/// `S = Σ 2^e·popcount(a_x[i] ^ b_y[j])` over the plane pairs (`e` the pair's weight exponent), one
/// output's sum the plain way: the reference's, and the portable dot products' (`dot::portable`).
#[cfg(test)]
fn reference_sum(a: &[&[u64]], b: &[&[u64]], w: usize, i: usize, j: usize) -> i64 {
    let (pa, pb) = (a.len(), b.len());
    let mut s = 0i64;
    for (x, plane_a) in a.iter().enumerate() {
        for (y, plane_b) in b.iter().enumerate() {
            let e = (pa - 1 - x) + (pb - 1 - y);
            let (ra, rb) = (&plane_a[i * w..(i + 1) * w], &plane_b[j * w..(j + 1) * w]);
            let pop: i64 = ra.iter().zip(rb).map(|(u, v)| (u ^ v).count_ones() as i64).sum();
            s += pop << e;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::last_word_mask;

    /// Deterministic pseudo-random words (xorshift), padding bits cleared for `k`.
    fn random_plane(rows: usize, k: usize, seed: u64) -> Vec<u64> {
        let w = words_for(k);
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v = Vec::with_capacity(rows * w);
        for _ in 0..rows {
            for p in 0..w {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                v.push(if p + 1 == w { s & last_word_mask(k) } else { s });
            }
        }
        v
    }

    const KINDS: [Kind; 4] = [Kind::B1x1, Kind::B1x2, Kind::B2x1, Kind::B2x2];

    fn check_against_reference(isa: Isa, kind: Kind, m: usize, n: usize, k: usize, threads: usize) {
        let fam = family(isa).unwrap();
        check_family_against_reference(fam, kind, m, n, k, threads);
    }

    /// The AVX-512 family's geometry — 8 lanes, whole words (no nibble split), panels up to 48
    /// columns — with the portable kernel in place of the AVX-512 one (its `NR` = 8 × the vectors),
    /// on every CPU. The avx512 microkernels read the same panel layout (word p, plane, column), so
    /// this runs everything of their path but the intrinsics: panel filling and edges, row slots,
    /// tasks and the epilogue, which no other family here drives with more than one lane unsplit.
    #[cfg(target_arch = "x86_64")]
    const WIDE_PORTABLE: Family = Family {
        isa: Isa::Scalar,
        lanes: 8,
        nibbles: false,
        geometry: avx512::geometry,
        tile: wide_portable::tile,
        fill: panel::fill_panel,
        dot: Some(dot::portable),
    };

    /// The portable kernel at 8 words per "vector", on the AVX-512 family's table.
    #[cfg(target_arch = "x86_64")]
    mod wide_portable {
        use super::super::scalar::kernel;
        use super::{Kind, Tile};

        microkernels! { kernel, 8;
            B1x1 => 5, [1, 2, 3, 4];
            B1x2 => 4, [1, 2, 3];
            B2x1 => 4, [1, 2, 3];
            B2x2 => 4, [1, 2];
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_geometry_drives_the_portable_kernel_exactly() {
        for kind in KINDS {
            assert_eq!(wide_portable::geometry(kind), avx512::geometry(kind), "{kind:?}");
            for k in [1, 63, 64, 65, 577] {
                for (m, n) in [
                    (1, 1),
                    (1, 67),
                    (9, 1),
                    (5, 17),
                    (13, 50),
                    (4, 48),
                    (5, 49),
                    (17, 97),
                    (8, 145),
                ] {
                    check_family_against_reference(WIDE_PORTABLE, kind, m, n, k, 1);
                }
            }
            check_family_against_reference(WIDE_PORTABLE, kind, 70, 500, 577, 2);
            check_family_against_reference(WIDE_PORTABLE, kind, 513, 25, 300, 3);
            for n in 1..=100 {
                check_family_against_reference(WIDE_PORTABLE, kind, (n % 9) + 1, n, 130, 1);
            }
        }
    }

    fn check_family_against_reference(fam: Family, kind: Kind, m: usize, n: usize, k: usize, threads: usize) {
        let isa = format!("{} ({} lanes)", fam.isa, fam.lanes);
        let (pa, pb) = kind.planes();
        let a_planes: Vec<Vec<u64>> = (0..pa)
            .map(|p| random_plane(m, k, 1 + p as u64 + 7 * k as u64))
            .collect();
        let b_planes: Vec<Vec<u64>> = (0..pb)
            .map(|p| random_plane(n, k, 101 + p as u64 + m as u64))
            .collect();
        let a: Vec<&[u64]> = a_planes.iter().map(|v| v.as_slice()).collect();
        let b: Vec<&[u64]> = b_planes.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![i32::MIN; m * n];
        run(fam, kind, &a, &b, None, (m, n, k), threads, None, &mut out).unwrap();
        let want = reference(kind, &a, &b, m, n, k);
        assert_eq!(out, want, "{isa} {kind:?} m={m} n={n} k={k} threads={threads}");
        // B's panels packed beforehand: the same products.
        let prepared = Prepared::for_family(fam, kind, &b, n, k).unwrap();
        out.fill(i32::MIN);
        run(
            fam,
            kind,
            &a,
            &b,
            Some(&prepared),
            (m, n, k),
            threads,
            None,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out, want,
            "prepared: {isa} {kind:?} m={m} n={n} k={k} threads={threads}"
        );
        // With an epilogue every element becomes its f32 image, once: (product · scale) + shift.
        let scale: Vec<f32> = (0..m).map(|r| 0.37 + 0.11 * r as f32).collect();
        let shift: Vec<f32> = (0..m).map(|r| -1.5 + 0.25 * r as f32).collect();
        let epilogue = Epilogue {
            scale: &scale,
            shift: &shift,
        };
        run(
            fam,
            kind,
            &a,
            &b,
            None,
            (m, n, k),
            threads,
            Some(epilogue),
            &mut out,
        )
        .unwrap();
        let want_f: Vec<u32> = (0..m * n)
            .map(|i| ((want[i] as f32) * scale[i / n] + shift[i / n]).to_bits())
            .collect();
        let got_f: Vec<u32> = out.iter().map(|&v| v as u32).collect();
        assert_eq!(
            got_f, want_f,
            "{isa} {kind:?} m={m} n={n} k={k} threads={threads} epilogue"
        );
    }

    /// Every edge: K around word boundaries, M and N around every tile size of every ISA.
    #[test]
    fn every_isa_matches_the_reference_on_edge_shapes() {
        for isa in crate::isa::available() {
            for kind in KINDS {
                for k in [1, 63, 64, 65, 127, 577, 2000] {
                    for (m, n) in [(1, 1), (1, 67), (9, 1), (5, 17), (13, 50), (8, 48), (17, 97)] {
                        check_against_reference(isa, kind, m, n, k, 1);
                    }
                }
            }
        }
    }

    #[test]
    fn every_panel_width_and_row_count() {
        // n from 1 to 2 full panels of the widest kernel, m up to 2 row blocks: every nr and rows.
        for isa in crate::isa::available() {
            for kind in KINDS {
                for n in 1..=100 {
                    check_against_reference(isa, kind, (n % 17) + 1, n, 130, 1);
                }
            }
        }
    }

    #[test]
    fn threads_split_panels_and_rows() {
        for isa in crate::isa::available() {
            for kind in KINDS {
                check_against_reference(isa, kind, 70, 500, 577, 2);
                check_against_reference(isa, kind, 513, 25, 300, 3); // one panel: rows are split
                check_against_reference(isa, kind, 3, 9, 64, 4);
            }
        }
    }

    /// N past the last whole vector by a few columns at a long K: those columns go to dot products
    /// (`dot::columns`), the rest to the panels, alone or (n < lanes) with no panel at all.
    #[test]
    fn remainder_columns_by_dot_products() {
        const SHAPES: [(usize, usize); 5] = [(25, 4608), (1, 700), (3, 4608), (26, 1000), (12, 4608)];
        for (n, k) in SHAPES {
            assert!(
                dot::columns(n, 8, words_for(k)) > 0,
                "n={n} k={k} must take the dot path"
            );
        }
        for kind in KINDS {
            for (n, k) in SHAPES {
                for (m, threads) in [(1, 1), (37, 1), (37, 2), (70, 3)] {
                    #[cfg(target_arch = "x86_64")]
                    check_family_against_reference(WIDE_PORTABLE, kind, m, n, k, threads);
                    for isa in crate::isa::available() {
                        check_against_reference(isa, kind, m, n, k, threads);
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_values() {
        // All-different and all-equal operands reach ±weight_sum·K. The long K runs every byte
        // counter of the AVX2 kernel through many full blocks at its largest gain per word.
        for k in [200, 20_000] {
            let w = words_for(k);
            let full: Vec<u64> = (0..w)
                .map(|p| if p + 1 == w { last_word_mask(k) } else { u64::MAX })
                .collect();
            let zero = vec![0u64; w];
            for isa in crate::isa::available() {
                for kind in KINDS {
                    let (pa, pb) = kind.planes();
                    let ws = kind.weight_sum() as i32 * k as i32;
                    for (a, want) in [(&full, -ws), (&zero, ws)] {
                        // 9 rows and columns: every microkernel block size and an edge tile.
                        let (m, n) = (9, 9);
                        let a_rows: Vec<u64> = a.iter().copied().cycle().take(m * w).collect();
                        let b_rows = vec![0u64; n * w];
                        let mut out = vec![0i32; m * n];
                        let a_planes: Vec<&[u64]> = vec![&a_rows; pa];
                        let b_planes: Vec<&[u64]> = vec![&b_rows; pb];
                        bgemm(kind, &a_planes, &b_planes, m, n, k, isa, 1, None, &mut out).unwrap();
                        assert!(out.iter().all(|&o| o == want), "{isa} {kind:?} k={k}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_prepared_operand_is_an_error() {
        let b = vec![0u64; 4];
        let prepare = |kind, b: &[&[u64]], n, k| Prepared::new(kind, b, n, k, Isa::Scalar).map(|_| ());
        assert!(prepare(Kind::B1x1, &[&b], 4, 64).is_ok());
        assert!(prepare(Kind::B1x1, &[&b], 4, 0).is_err());
        // k = 65 needs 2 words per row: 8 for n = 4
        assert!(prepare(Kind::B1x1, &[&b], 4, 65).is_err());
        // one B plane of two
        assert!(prepare(Kind::B1x2, &[&b], 4, 64).is_err());
        // a huge n is refused before anything of its size is allocated
        assert!(prepare(Kind::B1x1, &[&b], usize::MAX / 2, 64).is_err());
        let prepared = Prepared::new(Kind::B1x1, &[&b], 4, 64, Isa::Scalar).unwrap();
        let mut out = vec![0i32; 8];
        assert!(bgemm_prepared(&[&b[..3]], 2, &prepared, 1, &mut out).is_err()); // a too short
        assert!(bgemm_prepared(&[&b[..2]], 2, &prepared, 1, &mut out[..7]).is_err()); // out too short
        assert!(bgemm_prepared(&[&b[..2]], 2, &prepared, 1, &mut out).is_ok());
        assert_eq!(out, vec![64; 8]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let a = vec![0u64; 4];
        let mut out = vec![0i32; 4];
        let run = |kind, a: &[&[u64]], b: &[&[u64]], m, n, k, out: &mut [i32]| {
            bgemm(kind, a, b, m, n, k, Isa::Scalar, 1, None, out)
        };
        assert!(run(Kind::B1x1, &[&a], &[&a], 2, 2, 0, &mut out).is_err());
        assert!(run(Kind::B1x1, &[&a], &[&a], 2, 2, 129, &mut out).is_err());
        assert!(run(Kind::B1x1, &[&a], &[&a, &a], 2, 2, 64, &mut out).is_err());
        assert!(run(Kind::B1x1, &[&a], &[&a], 2, 3, 64, &mut out).is_err());
        assert!(run(
            Kind::B2x2,
            &[&a, &a],
            &[&a, &a],
            2,
            2,
            Kind::B2x2.max_k() + 1,
            &mut out
        )
        .is_err());
        assert!(run(Kind::B1x1, &[&a], &[&a], usize::MAX, 2, 64, &mut out).is_err());
        assert!(run(Kind::B1x1, &[&a], &[&a], 2, 2, 128, &mut out).is_ok());
        assert!(run(Kind::B1x1, &[&[]], &[&a], 0, 2, 128, &mut []).is_ok());
        let one = [1.0f32];
        let short = Epilogue {
            scale: &one,
            shift: &one,
        }; // m = 2 rows need two of each
        assert!(bgemm(
            Kind::B1x1,
            &[&a],
            &[&a],
            2,
            2,
            128,
            Isa::Scalar,
            1,
            Some(short),
            &mut out
        )
        .is_err());
    }
}
