//! `bconv_1bit`: a whole binary conv layer on a packed 1-bit map, channels last in and out, in one
//! pass over the output positions: no float activation map and no im2col matrix in between.
//!
//! Mirrors `apb_ref.kernels.reference.bconv_1bit`, which states the contract and the float op order:
//! `y = f32(acc)·scale + shift`, `y −= correction`, `y += s` (the sparse sum, made first), `y +=
//! residual`, `clip`; then the signs of y, packed. This file follows that order exactly, so it agrees
//! with the reference bit for bit except for the rounding of the sparse sum (NumPy sums in its own order).
//!
//! Tasks are chunks of whole output image rows. A task gathers its positions' windows into its
//! worker's scratch (the rows `im2col_bits` makes, by the same `conv::RowGather`), multiplies them by every weight row with
//! `crate::bgemm` on one thread (the ISA's microkernels), adds up the sparse term of all its positions
//! (`Sparse::add_rows`: one axpy per non-zero and output row over ±1 floats unpacked from the map),
//! then finishes the whole block (`finish`) and packs its signs: all O channels of a position, and so
//! its packed output words, belong to one task.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bgemm::{self, Kind};
use crate::bits::{first_bad_padding, pack_planes, words_for, PackError, WORD_BITS};
#[cfg(test)]
use crate::conv::append_bits;
use crate::conv::{RowGather, Window};
use crate::isa::Isa;

/// A packed 1-bit map: `bits` holds `(n, h, w, words_for(c))` words, each pixel's channel signs.
#[derive(Clone, Copy)]
pub struct BitMap<'a> {
    pub bits: &'a [u64],
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

/// A CSR matrix `(o, k)` whose columns are in the window's (i, j, channel) order.
#[derive(Clone, Copy)]
pub struct Csr<'a> {
    pub indptr: &'a [i64],
    pub indices: &'a [i32],
    pub data: &'a [f32],
}

/// The float work after the popcount, per output channel (order in the module docs).
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    /// `(ho, wo, o)`, subtracted.
    pub correction: Option<&'a [f32]>,
    pub csr: Option<Csr<'a>>,
    /// `(n, ho, wo, o)`, added.
    pub residual: Option<&'a [f32]>,
    pub clip: bool,
}

/// Where the results go: the float map `(n·ho·wo, o)` and/or its packed signs `(n·ho·wo, words_for(o))`.
pub struct Outputs<'a> {
    pub float: Option<&'a mut [f32]>,
    pub bits: Option<&'a mut [u64]>,
}

/// Gathered windows per task: about 32 KiB of bits, which stay in cache while the GEMM sweeps them.
const TASK_WORDS: usize = 4096;
/// Fewest positions per task (unless there are fewer): each task repacks the weights' panels (O·W
/// words), which must stay small against its products (positions·O·W).
const MIN_TASK_POSITIONS: usize = 16;
const MAX_TASK_POSITIONS: usize = 256;
/// Fewest popcount word products (positions · O · words per window) per thread when the caller does
/// not give a thread count: under it, waking a second thread costs more than it saves (a batch-1
/// ResNet-20 layer has 40–50 thousand, and its network ran 0.6x as fast on two threads as on one).
pub const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// `threads`, lowered so that each thread gets at least [`MIN_WORK_PER_THREAD`] word products of a
/// layer with `positions` output positions, `o` channels and windows of `k` bits.
pub fn threads_for_work(threads: usize, positions: usize, o: usize, k: usize) -> usize {
    let work = positions.saturating_mul(o).saturating_mul(words_for(k));
    threads.min((work / MIN_WORK_PER_THREAD).max(1))
}

/// Compute the layer for `map` with `o` weight rows (`weights`: `(o, words_for(kh·kw·c))`, ±1 packed in
/// (i, j, channel) order, padding bits 0) on `threads` threads with the microkernels of `isa`.
/// Returns an error, never panics, on inconsistent sizes, bad padding bits or a bad CSR matrix, and
/// on a NaN y when `outs.bits` is requested (its sign is undefined).
#[allow(clippy::too_many_arguments)] // the layer's own parameters
pub fn bconv_1bit(
    weights: &[u64],
    o: usize,
    map: BitMap,
    win: Window,
    epi: &Epilogue,
    isa: Isa,
    threads: usize,
    outs: Outputs,
) -> Result<(), String> {
    let layer = Layer::new(map, win)?;
    let (k, wk, p) = (layer.k, layer.wk, layer.positions);
    expect_len("weights", weights.len(), o.checked_mul(wk), "O·ceil(k/64)")?;
    if let Some(r) = first_bad_padding(weights, k) {
        return Err(format!(
            "weights has non-zero padding bits past k = {k} (first in row {r}); padding must be 0 (pack with pack_bits)"
        ));
    }
    expect_len("scale", epi.scale.len(), Some(o), "O")?;
    expect_len("shift", epi.shift.len(), Some(o), "O")?;
    if let Some(c) = epi.correction {
        let want = layer.ho.checked_mul(layer.wo).and_then(|v| v.checked_mul(o));
        expect_len("correction", c.len(), want, "ho·wo·O")?;
    }
    if let Some(r) = epi.residual {
        expect_len("residual", r.len(), p.checked_mul(o), "n·ho·wo·O")?;
    }
    let ow = words_for(o);
    if let Some(f) = &outs.float {
        expect_len("out (float)", f.len(), p.checked_mul(o), "n·ho·wo·O")?;
    }
    if let Some(b) = &outs.bits {
        expect_len("out (bits)", b.len(), p.checked_mul(ow), "n·ho·wo·ceil(O/64)")?;
    }
    let sparse = epi.csr.map(|s| Sparse::new(s, o, &layer)).transpose()?;
    if p == 0 || o == 0 {
        return Ok(()); // nothing to write
    }

    // Tasks of whole output image rows (`RowGather` lowers a row at a time)
    let per_task = (TASK_WORDS / wk)
        .clamp(MIN_TASK_POSITIONS, MAX_TASK_POSITIONS)
        .min(p.div_ceil(4 * threads.max(1))) // about 4 tasks per thread
        .max(1);
    let per_task = per_task.div_ceil(layer.wo) * layer.wo;
    let mut floats = outs.float.map(|f| f.chunks_mut(per_task * o));
    let mut words = outs.bits.map(|b| b.chunks_mut(per_task * ow));
    let items: Vec<Task> = (0..p.div_ceil(per_task))
        .map(|t| Task {
            start: t * per_task,
            count: per_task.min(p - t * per_task),
            float: floats.as_mut().and_then(Iterator::next),
            bits: words.as_mut().and_then(Iterator::next),
        })
        .collect();
    let first_nan = AtomicUsize::new(usize::MAX);
    let rows = RowGather::new(
        layer.map.bits,
        layer.map.h,
        layer.map.w,
        layer.map.c,
        layer.win,
        (layer.ho, layer.wo),
    );
    let run = Run {
        layer: &layer,
        rows: &rows,
        weights,
        o,
        epi,
        sparse: sparse.as_ref(),
        isa,
        first_nan: &first_nan,
    };
    let ok = crate::threads::run_claimed_with(threads, items, Scratch::default, |s, task| run.task(s, task))?;
    if !ok {
        return Err(format!(
            "internal error: the {isa} popcount GEMM refused a task's operands"
        ));
    }
    match first_nan.into_inner() {
        usize::MAX => Ok(()),
        at => {
            let (pos, ch) = (at / o, at % o);
            let (img, oy, ox) = layer.coords(pos);
            Err(format!(
                "y is NaN at (n, ho, wo, o) = ({img}, {oy}, {ox}, {ch}); its sign is undefined (scale, shift, \
                 correction, csr data and residual must be finite for packed output)"
            ))
        }
    }
}

fn expect_len(name: &str, got: usize, want: Option<usize>, what: &str) -> Result<(), String> {
    match want {
        Some(w) if w == got => Ok(()),
        Some(w) => Err(format!("{name} must hold {what} = {w} values, got {got}")),
        None => Err(format!("{name}: {what} overflows")),
    }
}

/// The input map and the window geometry, checked.
struct Layer<'a> {
    map: BitMap<'a>,
    win: Window,
    ho: usize,
    wo: usize,
    /// Words per input pixel.
    wc: usize,
    /// Bits and words per window.
    k: usize,
    wk: usize,
    positions: usize,
}

impl<'a> Layer<'a> {
    fn new(map: BitMap<'a>, win: Window) -> Result<Self, String> {
        let BitMap { bits, n, h, w, c } = map;
        if c == 0 {
            return Err("c must be >= 1".into());
        }
        let wc = words_for(c);
        let words = n
            .checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .and_then(|v| v.checked_mul(wc));
        expect_len("bits", bits.len(), words, "n·h·w·ceil(c/64)")?;
        if let Some(px) = first_bad_padding(bits, c) {
            return Err(format!(
                "bits has non-zero padding bits past c = {c} (first at pixel {px}); pack with pack_bits"
            ));
        }
        let (ho, wo) = win.output(h, w)?;
        let k = win.kh.checked_mul(win.kw).and_then(|t| t.checked_mul(c));
        let k = k.filter(|&k| k <= Kind::B1x1.max_k()).ok_or_else(|| {
            format!(
                "kh·kw·c must be at most {} (larger could overflow the int32 products)",
                Kind::B1x1.max_k()
            )
        })?;
        let positions = n
            .checked_mul(ho)
            .and_then(|v| v.checked_mul(wo))
            .ok_or("n·ho·wo overflows")?;
        Ok(Layer {
            map,
            win,
            ho,
            wo,
            wc,
            k,
            wk: words_for(k),
            positions,
        })
    }

    /// `(image, oy, ox)` of flat output position `pos`.
    fn coords(&self, pos: usize) -> (usize, usize, usize) {
        (
            pos / (self.ho * self.wo),
            (pos / self.wo) % self.ho,
            pos % self.wo,
        )
    }

    /// The window of output position `pos` packed into `row` (`wk` words): its K bits in (i, j,
    /// channel) order, taps on the padding 0 (+1), exactly a row of `im2col_bits` (the plain
    /// definition the tests hold `RowGather` to).
    #[cfg(test)]
    fn gather(&self, pos: usize, row: &mut [u64]) {
        let (img, oy, ox) = self.coords(pos);
        let BitMap { bits, h, w, c, .. } = self.map;
        row.fill(0);
        for i in 0..self.win.kh {
            let Some(y) = self.win.source(oy, i, h) else {
                continue;
            };
            for j in 0..self.win.kw {
                let Some(x) = self.win.source(ox, j, w) else {
                    continue;
                };
                let pixel = ((img * h + y) * w + x) * self.wc;
                append_bits(row, (i * self.win.kw + j) * c, &bits[pixel..pixel + self.wc]);
            }
        }
    }
}

/// One non-zero of S placed in the window: its tap (i, j), its input channel and that channel's slot
/// among the channels S reads, its value.
#[derive(Clone, Copy, Debug)]
struct SparseTap {
    i: usize,
    j: usize,
    ch: usize,
    slot: usize,
    v: f32,
}

/// S as placed non-zeros, row by row in CSR order, and the input channels they read.
struct Sparse {
    starts: Vec<usize>,
    taps: Vec<SparseTap>,
    channels: Vec<usize>,
}

impl Sparse {
    fn new(csr: Csr, o: usize, layer: &Layer) -> Result<Sparse, String> {
        let rows = crate::spmm::validate(csr.indptr, csr.indices, csr.data.len(), layer.k)
            .map_err(|e| format!("csr: {e}"))?;
        if rows != o {
            return Err(format!(
                "csr has {rows} rows (len(indptr) - 1), but weights has O = {o}"
            ));
        }
        // validate(): indptr runs from 0 to nnz without decreasing, every column is in [0, k).
        let (c, kw) = (layer.map.c, layer.win.kw);
        let mut taps: Vec<SparseTap> = csr
            .indices
            .iter()
            .zip(csr.data)
            .map(|(&col, &v)| {
                let (tap, ch) = (col as usize / c, col as usize % c);
                SparseTap {
                    i: tap / kw,
                    j: tap % kw,
                    ch,
                    slot: 0,
                    v,
                }
            })
            .collect();
        let mut channels: Vec<usize> = taps.iter().map(|t| t.ch).collect();
        channels.sort_unstable();
        channels.dedup();
        for t in &mut taps {
            t.slot = channels.binary_search(&t.ch).unwrap_or(0); // every tap's channel is in the list
        }
        Ok(Sparse {
            starts: csr.indptr.iter().map(|&s| s as usize).collect(),
            taps,
            channels,
        })
    }

    /// S times the windows of output rows `first..first + rows` (flat rows, image·ho + oy), into
    /// `sums` (`(o, m)`, channel-major, position 0 = the start of row `first`): for channel `ch`, Σ v·x
    /// over the row's non-zeros in CSR order, x the tap's sign (±1), or 0 on the padding.
    ///
    /// Per image, the input rows those output rows read are unpacked once into `planes`, ±1 floats
    /// `(slot, row, w + 2·padding)` for the channels S reads, with zeros on the padding, so each non-zero is one axpy per
    /// output row (as csr_conv2d runs): branch-free and vectorized, where reading the signs out of
    /// each gathered window cost several times more.
    fn add_rows(
        &self,
        layer: &Layer,
        first: usize,
        rows: usize,
        planes: &mut Vec<f32>,
        sums: &mut [f32],
        m: usize,
    ) {
        let BitMap { bits, h, w, .. } = layer.map;
        let Window {
            kh, stride, padding, ..
        } = layer.win;
        let (ho, wo, wc, wp) = (layer.ho, layer.wo, layer.wc, w + 2 * padding);
        let mut r = first;
        while r < first + rows {
            let img = r / ho;
            let end = (first + rows).min((img + 1) * ho);
            let (oy0, count) = (r % ho, end - r);
            let span = (count - 1) * stride + kh; // padded input rows oy0·stride ..
            planes.clear();
            planes.resize(self.channels.len() * span * wp, 0.0);
            for (slot, &ch) in self.channels.iter().enumerate() {
                let (word, shift) = (ch / WORD_BITS, ch % WORD_BITS);
                for yl in 0..span {
                    let Some(y) = layer.win.source(oy0, yl, h) else {
                        continue; // a padding row stays 0
                    };
                    let pixels = &bits[(img * h + y) * w * wc..][..w * wc];
                    let plane = &mut planes[(slot * span + yl) * wp + padding..][..w];
                    // ±1.0 built from its bits (the sign bit from the map's bit): integer ops that vectorize
                    let one =
                        |pixel: u64| f32::from_bits(0x3f80_0000 | ((((pixel >> shift) & 1) as u32) << 31));
                    if wc == 1 {
                        for (x, &pixel) in plane.iter_mut().zip(pixels) {
                            *x = one(pixel);
                        }
                    } else {
                        for (x, pixel) in plane.iter_mut().zip(pixels.chunks_exact(wc)) {
                            *x = one(pixel[word]);
                        }
                    }
                }
            }
            for (o, sums) in sums.chunks_exact_mut(m).enumerate() {
                let taps = &self.taps[self.starts[o]..self.starts[o + 1]];
                for q in 0..count {
                    let out = &mut sums[(r - first + q) * wo..][..wo];
                    out.fill(0.0);
                    for t in taps {
                        let row = (t.slot * span + q * stride + t.i) * wp + t.j;
                        crate::conv::axpy::<false>(out, t.v, &planes[row..], stride);
                    }
                }
            }
            r = end;
        }
    }
}

/// What [`finish`] reads for a task's `m` positions: the popcount products `acc` `(m, O)`, the sparse
/// sums `(O, m)`; the task starts an output row at flat position `start`.
struct Block<'a> {
    epi: &'a Epilogue<'a>,
    layer: &'a Layer<'a>,
    start: usize,
    acc: &'a [i32],
    sums: Option<&'a [f32]>,
}

/// y of a task's `m` positions, `(m, O)`, in the order of the module docs: each step one pass over
/// the whole block (long branch-free loops the compiler vectorizes; the same operations per value,
/// in the same order, as one loop with the steps inside).
#[inline(always)]
fn finish(block: &Block, y: &mut [f32]) {
    let Block {
        epi,
        layer,
        start,
        acc,
        sums,
    } = *block;
    let o = epi.scale.len();
    let (m, wo) = (y.len() / o.max(1), layer.wo);
    for (row, acc) in y.chunks_exact_mut(o).zip(acc.chunks_exact(o)) {
        for (v, ((&a, &scale), &shift)) in row.iter_mut().zip(acc.iter().zip(epi.scale).zip(epi.shift)) {
            *v = (a as f32) * scale + shift;
        }
    }
    if let Some(c) = epi.correction {
        for (r, row) in y.chunks_exact_mut(wo * o).enumerate() {
            let oy = (start / wo + r) % layer.ho; // the correction depends on (oy, ox) only
            for (v, &c) in row.iter_mut().zip(&c[oy * wo * o..(oy + 1) * wo * o]) {
                *v -= c;
            }
        }
    }
    if let Some(sums) = sums {
        for (q, row) in y.chunks_exact_mut(o).enumerate() {
            for (ch, v) in row.iter_mut().enumerate() {
                *v += sums[ch * m + q];
            }
        }
    }
    if let Some(res) = epi.residual {
        for (v, &r) in y.iter_mut().zip(&res[start * o..(start + m) * o]) {
            *v += r;
        }
    }
    if epi.clip {
        for v in y.iter_mut() {
            *v = v.clamp(-1.0, 1.0); // NaN stays NaN, as in np.clip
        }
    }
}

/// [`finish`] compiled with AVX2 (8 floats per operation instead of SSE2's 4; the same operations,
/// so the same results: Rust contracts no multiply-add).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finish_avx2(block: &Block, y: &mut [f32]) {
    finish(block, y)
}

/// [`finish`] with the widest vectors `isa` promises.
fn finish_on(isa: Isa, block: &Block, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: an ISA other than scalar is only handed out after `is_available()`: AVX2, or
        // AVX-512, whose CPUs all have AVX2.
        return unsafe { finish_avx2(block, y) };
    }
    finish(block, y)
}

/// A chunk of output positions and its slices of the outputs.
struct Task<'a> {
    start: usize,
    count: usize,
    float: Option<&'a mut [f32]>,
    bits: Option<&'a mut [u64]>,
}

/// A worker's buffers, reused from task to task.
#[derive(Default)]
struct Scratch {
    windows: Vec<u64>,
    acc: Vec<i32>,
    y: Vec<f32>,
    /// The task's sparse sums `(o, m)` and the ±1 input rows they read.
    sums: Vec<f32>,
    planes: Vec<f32>,
}

/// What every task of one call shares.
struct Run<'a> {
    layer: &'a Layer<'a>,
    rows: &'a RowGather<'a>,
    weights: &'a [u64],
    o: usize,
    epi: &'a Epilogue<'a>,
    sparse: Option<&'a Sparse>,
    isa: Isa,
    /// Smallest flat (position, channel) index of a NaN y, when bits are requested.
    first_nan: &'a AtomicUsize,
}

impl Run<'_> {
    fn task(&self, s: &mut Scratch, task: Task) -> bool {
        let (layer, o, wk) = (self.layer, self.o, self.layer.wk);
        let Task {
            start,
            count: m,
            float,
            bits,
        } = task;
        // The task's positions are whole output rows (start and m are multiples of wo); `fill`
        // clears each one.
        s.windows.resize(m * wk, 0);
        for (q, row) in s.windows.chunks_exact_mut(layer.wo * wk).enumerate() {
            self.rows.fill(start / layer.wo + q, row);
        }
        s.acc.resize(m * o, 0);
        let acc = &mut s.acc[..m * o];
        let (a, b, k): ([&[u64]; 1], _, _) = ([&s.windows], [self.weights], layer.k);
        // One thread: the task is the unit of parallelism.
        if bgemm::bgemm(Kind::B1x1, &a, &b, m, o, k, self.isa, 1, None, acc).is_err() {
            return false;
        }
        if let Some(sparse) = self.sparse {
            s.sums.resize(o * m, 0.0);
            sparse.add_rows(
                layer,
                start / layer.wo,
                m / layer.wo,
                &mut s.planes,
                &mut s.sums,
                m,
            );
        }
        // y of the whole task: straight into the float output when there is one
        s.y.resize(if float.is_some() { 0 } else { m * o }, 0.0);
        let y = match float {
            Some(f) => &mut f[..m * o],
            None => &mut s.y[..m * o],
        };
        let block = Block {
            epi: self.epi,
            layer,
            start,
            acc: &s.acc[..m * o],
            sums: self.sparse.map(|_| &s.sums[..o * m]),
        };
        finish_on(self.isa, &block, y);
        // The signs of the task's y, packed by the ISA's own packer (pack_bits' rule: bit 1 where
        // y < 0, so ±0 give 0); it stops at a NaN, whose sign is undefined.
        if let Some(b) = bits {
            match pack_planes(y, o, [b], 1, self.isa) {
                Ok(()) => {}
                Err(PackError::Invalid { row, col }) => {
                    self.first_nan
                        .fetch_min((start + row) * o + col, Ordering::Relaxed);
                }
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn window(kh: usize, kw: usize, stride: usize, padding: usize) -> Window {
        Window {
            kh,
            kw,
            stride,
            padding,
        }
    }

    /// Bit `t` of a packed row as ±1.
    fn sign_of(row: &[u64], t: usize) -> i64 {
        1 - 2 * ((row[t / 64] >> (t % 64)) & 1) as i64
    }

    #[test]
    fn gathered_windows_are_the_rows_of_im2col_bits() {
        let mut rng = Rng(0x5eed_b0c1);
        for c in [1, 3, 63, 64, 65, 130] {
            for (kh, kw, stride, padding) in [
                (3, 3, 1, 1),
                (3, 3, 2, 1),
                (1, 1, 1, 0),
                (2, 3, 2, 2),
                (3, 1, 1, 0),
            ] {
                let (n, h, w) = (2, 5, 4);
                let win = window(kh, kw, stride, padding);
                let map = BitMap {
                    bits: &rng.packed_rows(n * h * w, c),
                    n,
                    h,
                    w,
                    c,
                };
                let layer = Layer::new(map, win).unwrap();
                let mut want = vec![0u64; layer.positions * layer.wk];
                crate::conv::im2col_bits(map.bits, n, h, w, c, win, 1, &mut want).unwrap();
                let mut row = vec![u64::MAX; layer.wk];
                for (pos, want_row) in want.chunks_exact(layer.wk).enumerate() {
                    layer.gather(pos, &mut row);
                    assert_eq!(row, want_row, "c={c} win={win:?} pos={pos}");
                }
            }
        }
    }

    #[test]
    fn the_epilogue_follows_the_documented_order() {
        // 2x2 kernel, padding 1, c = 1: output (0, 0) has only tap (1, 1) inside the map.
        let layer = Layer::new(
            BitMap {
                bits: &[1, 0, 0, 0], // pixel (0, 0) is −1
                n: 1,
                h: 2,
                w: 2,
                c: 1,
            },
            window(2, 2, 1, 1),
        )
        .unwrap();
        let mut win_bits = [0u64];
        layer.gather(0, &mut win_bits);
        // tap 3 reads the −1; the padding taps are 0 (+1)
        assert_eq!(win_bits, [0b1000]);
        // Channel 0: the padding tap 0 (value 100) adds nothing, tap 3 adds −1.5·(−1).
        // Channel 1: an empty row; clip takes 2.5 + 0.5 − 1 + 0 + 1 = 3 down to 1.
        let (indptr, indices, data) = ([0i64, 2, 2], [0i32, 3], [100.0f32, -1.5]);
        let (scale, shift) = ([0.5f32, 0.5], [0.25f32, 0.5]);
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            correction: None,
            csr: Some(Csr {
                indptr: &indptr,
                indices: &indices,
                data: &data,
            }),
            residual: None,
            clip: true,
        };
        let sparse = Sparse::new(epi.csr.unwrap(), 2, &layer).unwrap();
        let (mut sums, mut planes) = ([f32::NAN; 6], Vec::new()); // (o, wo) of output row 0
        sparse.add_rows(&layer, 0, 1, &mut planes, &mut sums, 3);
        // output (0, 0): the padding tap's 100 is left out
        assert_eq!([sums[0], sums[3]], [1.5, 0.0]);
        // The task of output row 0 (3 positions); only position (0, 0) is checked.
        let mut correction = [0f32; 3 * 3 * 2];
        correction[..2].copy_from_slice(&[0.5, 1.0]);
        let mut residual = [0f32; 3 * 3 * 2];
        residual[..2].copy_from_slice(&[0.125, 1.0]);
        let epi = Epilogue {
            correction: Some(&correction),
            residual: Some(&residual),
            ..epi
        };
        let block = |epi, sums| Block {
            epi,
            layer: &layer,
            start: 0,
            acc: &[-2, 5, 0, 0, 0, 0],
            sums,
        };
        let mut y = [0f32; 6];
        finish(&block(&epi, Some(&sums)), &mut y);
        // −2·0.5 + 0.25 = −0.75; − 0.5 = −1.25; + 1.5 (−1.5 times the −1) = 0.25; + 0.125 = 0.375
        assert_eq!(y[..2], [0.375, 1.0]);
        let no_clip = Epilogue { clip: false, ..epi };
        finish(&block(&no_clip, Some(&sums)), &mut y);
        assert_eq!(y[..2], [0.375, 3.0]);
        finish(&block(&no_clip, None), &mut y);
        assert_eq!(y[..2], [-1.125, 3.0]);
    }

    /// The layer from its definition, one (position, channel) at a time, in the documented order.
    fn plain(weights: &[u64], o: usize, map: BitMap, win: Window, epi: &Epilogue) -> (Vec<f32>, Vec<u64>) {
        let layer = Layer::new(map, win).unwrap();
        let (kh, kw, c) = (win.kh, win.kw, map.c);
        let mut float = vec![0f32; layer.positions * o];
        let mut bits = vec![0u64; layer.positions * words_for(o)];
        for pos in 0..layer.positions {
            let (img, oy, ox) = layer.coords(pos);
            // the sign at column t = (i·kw + j)·c + ch, or None on the padding
            let x = |t: usize| {
                let (tap, ch) = (t / c, t % c);
                let y = layer.win.source(oy, tap / kw, map.h)?;
                let xx = layer.win.source(ox, tap % kw, map.w)?;
                let pixel = &map.bits[((img * map.h + y) * map.w + xx) * layer.wc..][..layer.wc];
                Some(sign_of(pixel, ch))
            };
            for ch in 0..o {
                let row = &weights[ch * layer.wk..(ch + 1) * layer.wk];
                let acc: i64 = (0..kh * kw * c)
                    .map(|t| sign_of(row, t) * x(t).unwrap_or(1))
                    .sum();
                let mut v = (acc as f32) * epi.scale[ch] + epi.shift[ch];
                if let Some(corr) = epi.correction {
                    v -= corr[(oy * layer.wo + ox) * o + ch];
                }
                if let Some(s) = epi.csr {
                    let mut sum = 0f32;
                    for t in s.indptr[ch] as usize..s.indptr[ch + 1] as usize {
                        if let Some(xv) = x(s.indices[t] as usize) {
                            sum += s.data[t] * xv as f32;
                        }
                    }
                    v += sum;
                }
                if let Some(r) = epi.residual {
                    v += r[pos * o + ch];
                }
                if epi.clip {
                    v = v.clamp(-1.0, 1.0);
                }
                float[pos * o + ch] = v;
                bits[pos * words_for(o) + ch / 64] |= u64::from(v < 0.0) << (ch % 64);
            }
        }
        (float, bits)
    }

    #[test]
    fn every_isa_and_thread_count_matches_the_definition() {
        let mut rng = Rng(0x5eed_b0c2);
        let cases = [
            (1, 5, 3, 1, 1),
            (65, 64, 3, 2, 1),
            (64, 65, 1, 1, 0),
            (130, 1, 3, 1, 0),
            (63, 70, 3, 2, 1),
        ];
        for (c, o, ksize, stride, padding) in cases {
            let (n, h, w) = (2, 5, 3);
            let win = window(ksize, ksize, stride, padding);
            let k = ksize * ksize * c;
            let bits = rng.packed_rows(n * h * w, c);
            let map = BitMap {
                bits: &bits,
                n,
                h,
                w,
                c,
            };
            let weights = rng.packed_rows(o, k);
            let (ho, wo) = win.output(h, w).unwrap();
            let p = n * ho * wo;
            let vals = |rng: &mut Rng, len: usize| (0..len).map(|_| rng.f()).collect::<Vec<f32>>();
            let (scale, shift) = (vals(&mut rng, o), vals(&mut rng, o));
            let (correction, residual) = (vals(&mut rng, ho * wo * o), vals(&mut rng, p * o));
            // every third row empty, others a few columns (some on padding taps)
            let (mut indptr, mut indices, mut data) = (vec![0i64], vec![], vec![]);
            for r in 0..o {
                for _ in 0..if r % 3 == 0 { 0 } else { 1 + r % 4 } {
                    indices.push((rng.next() % k as u64) as i32);
                    data.push(rng.f());
                }
                indptr.push(indices.len() as i64);
            }
            let csr = Csr {
                indptr: &indptr,
                indices: &indices,
                data: &data,
            };
            for (with_extras, clip) in [(false, false), (true, true), (true, false)] {
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    correction: with_extras.then_some(&correction[..]),
                    csr: with_extras.then_some(csr),
                    residual: with_extras.then_some(&residual[..]),
                    clip,
                };
                let (want_f, want_b) = plain(&weights, o, map, win, &epi);
                for isa in crate::isa::available() {
                    for threads in [1, 3] {
                        let mut float = vec![f32::NAN; p * o];
                        let mut packed = vec![u64::MAX; p * words_for(o)];
                        let outs = Outputs {
                            float: Some(&mut float),
                            bits: Some(&mut packed),
                        };
                        bconv_1bit(&weights, o, map, win, &epi, isa, threads, outs).unwrap();
                        let what =
                            format!("{isa} threads={threads} c={c} o={o} win={win:?} extras={with_extras}");
                        // the same op order, the sparse sum in CSR order too: bit for bit
                        let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits_of(&float), bits_of(&want_f), "{what}");
                        assert_eq!(packed, want_b, "{what}");
                        let mut only_bits = vec![u64::MAX; p * words_for(o)];
                        let outs = Outputs {
                            float: None,
                            bits: Some(&mut only_bits),
                        };
                        bconv_1bit(&weights, o, map, win, &epi, isa, threads, outs).unwrap();
                        assert_eq!(only_bits, want_b, "{what} bits only");
                    }
                }
            }
        }
    }

    #[test]
    fn small_layers_get_fewer_threads() {
        // a batch-1 stage-1 layer: 1024 positions, 16 channels, 3 words
        assert_eq!(threads_for_work(2, 1024, 16, 144), 1);
        // batch 256: 262,144 positions
        assert_eq!(threads_for_work(2, 262_144, 16, 144), 2);
        assert_eq!(threads_for_work(8, MIN_WORK_PER_THREAD * 3, 1, 64), 3);
        assert_eq!(threads_for_work(4, 0, 16, 144), 1);
        assert_eq!(threads_for_work(1, usize::MAX, usize::MAX, 144), 1);
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let bits = vec![0u64; 2 * 3 * 3];
        let map = BitMap {
            bits: &bits,
            n: 2,
            h: 3,
            w: 3,
            c: 16,
        };
        let win = window(3, 3, 1, 1);
        let (scale, shift) = ([1.0f32; 2], [0.0f32; 2]);
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            correction: None,
            csr: None,
            residual: None,
            clip: false,
        };
        let weights = vec![0u64; 2 * 3]; // k = 144: 3 words
        let mut float = vec![0f32; 2 * 9 * 2];
        let call = |weights: &[u64], map: BitMap, epi: &Epilogue, float: &mut [f32]| {
            let outs = Outputs {
                float: Some(float),
                bits: None,
            };
            bconv_1bit(weights, 2, map, win, epi, Isa::Scalar, 2, outs)
        };
        assert!(call(&weights, map, &epi, &mut float).is_ok());
        let err = |r: Result<(), String>| r.unwrap_err();
        assert!(err(call(&weights[1..], map, &epi, &mut float)).starts_with("weights must hold"));
        let mut bad_w = weights.clone();
        bad_w[2] = 1 << 20; // past k = 144 = 2·64 + 16
        assert!(err(call(&bad_w, map, &epi, &mut float)).starts_with("weights has non-zero padding"));
        let bad_bits = vec![1u64 << 16; 18];
        let bad_map = BitMap {
            bits: &bad_bits,
            ..map
        };
        assert!(err(call(&weights, bad_map, &epi, &mut float)).starts_with("bits has non-zero padding"));
        assert!(err(call(
            &weights,
            BitMap {
                bits: &bits[1..],
                ..map
            },
            &epi,
            &mut float
        ))
        .starts_with("bits must"));
        assert!(err(call(&weights, map, &epi, &mut float[1..])).starts_with("out (float)"));
        let short = [0.5f32];
        assert!(err(call(
            &weights,
            map,
            &Epilogue { scale: &short, ..epi },
            &mut float
        ))
        .starts_with("scale"));
        assert!(err(call(
            &weights,
            map,
            &Epilogue {
                correction: Some(&short),
                ..epi
            },
            &mut float
        ))
        .starts_with("correction"));
        assert!(err(call(
            &weights,
            map,
            &Epilogue {
                residual: Some(&short),
                ..epi
            },
            &mut float
        ))
        .starts_with("residual"));
        let csr = |indptr, indices| Csr {
            indptr,
            indices,
            data: &[1.0],
        };
        let past_k = Epilogue {
            csr: Some(csr(&[0, 1, 1], &[144])),
            ..epi
        };
        assert!(err(call(&weights, map, &past_k, &mut float)).starts_with("csr: indices[0] = 144"));
        let one_row = Epilogue {
            csr: Some(csr(&[0, 1], &[0])),
            ..epi
        };
        assert!(err(call(&weights, map, &one_row, &mut float)).starts_with("csr has 1 rows"));
        let huge = Window {
            padding: usize::MAX / 2,
            ..win
        };
        let outs = Outputs {
            float: Some(&mut float),
            bits: None,
        };
        assert!(bconv_1bit(&weights, 2, map, huge, &epi, Isa::Scalar, 1, outs).is_err());
        // A NaN y has no sign: an error when bits are asked for, a NaN otherwise.
        let nan = [f32::NAN, 0.0];
        let nan_epi = Epilogue { shift: &nan, ..epi };
        assert!(call(&weights, map, &nan_epi, &mut float).is_ok());
        let mut packed = vec![0u64; 18];
        let outs = Outputs {
            float: None,
            bits: Some(&mut packed),
        };
        let msg = err(bconv_1bit(&weights, 2, map, win, &nan_epi, Isa::Scalar, 2, outs));
        assert!(
            msg.starts_with("y is NaN at (n, ho, wo, o) = (0, 0, 0, 0)"),
            "{msg}"
        );
    }
}
