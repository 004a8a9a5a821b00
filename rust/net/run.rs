//! Running a [`BinaryNet`]: images, steps and the threads.
//!
//! With at least as many images as threads, each thread takes whole images, in its own buffers.
//! With fewer (a batch of 1 on 2 threads, say), the threads work on one image at a time: each step's
//! chunks of output positions are split between them (a conv whose map is a single chunk: its output
//! channels, by 32-channel halves of the packed words). Between steps a thread waits for what it
//! reads of the others' work ([`Progress`]): their whole previous step; only their edge chunk,
//! written first, when its windows reach no further ([`BinaryNet::reads_only_the_edge`]); or
//! nothing, when it reads only its own part ([`BinaryNet::waits_after`]). Either way a step's part
//! is the same call: the kernel on a range of chunks and channels, writing only that part of its
//! outputs. Buffers outlive the call (the net keeps them), so a call allocates nothing once the
//! net has run.

use std::hint::spin_loop;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::kernel::{self, Bits, Input, Scratch, CHUNK};
use super::{blocked, Act, BinaryNet, Conv, ConvIo, Rows, Shape, Step};
use crate::isa::Isa;
use crate::lines::OnLines;
use crate::threads::share as part;

/// One set of buffers: the float maps by slot, the bit maps by slot. Each starts on a cache line:
/// the threads splitting an image write neighbouring parts of them, whose boundaries are then lines'
/// boundaries as the code lays them out (from wherever the allocator put a `Vec`, the speed-up of two
/// threads at batch 1 varied between 1.63 and 1.77x; on lines it was 1.74x in every process).
pub(crate) struct Buffers {
    floats: Vec<OnLines<f32>>,
    bits: Vec<OnLines<u64>>,
}

/// Raw views of a [`Buffers`] that the threads of one image share. Within a step, the threads
/// write disjoint parts of the step's outputs (ranges, or different 32-bit halves of the packed
/// words of a channel split, written through [`Bits`]) and read only buffers the step does not write
/// (`BinaryNet::new` refuses a step whose output is its input or residual); [`Progress`] orders one
/// step's writes before the next step's reads of them. A conv's views, and the pooling's on a
/// one-chunk map, hold only what the call touches (the other thread may be a step behind, writing
/// the rest); the other stages' views span whole slots, and a wait for all of the previous step
/// comes before each of them.
struct Views {
    floats: Vec<(*mut f32, usize)>,
    bits: Vec<(*mut u64, usize)>,
}

// SAFETY: the pointers are into buffers that outlive every thread using them (see `run`), used by
// the rules above.
unsafe impl Send for Views {}
unsafe impl Sync for Views {}

impl Views {
    fn of(b: &mut Buffers) -> Views {
        Views {
            floats: b
                .floats
                .iter_mut()
                .map(|v| (v.as_mut_slice().as_mut_ptr(), v.len()))
                .collect(),
            bits: b
                .bits
                .iter_mut()
                .map(|v| (v.as_mut_slice().as_mut_ptr(), v.len()))
                .collect(),
        }
    }

    /// SAFETY: no thread writes float buffer `id` while the slice lives.
    unsafe fn float(&self, id: usize) -> &[f32] {
        unsafe { self.float_part(id, 0..self.floats[id].1) }
    }

    /// SAFETY: no thread writes `range` of float buffer `id` while the slice lives.
    unsafe fn float_part(&self, id: usize, range: Range<usize>) -> &[f32] {
        let (p, n) = self.floats[id];
        assert!(range.start <= range.end && range.end <= n);
        unsafe { std::slice::from_raw_parts(p.add(range.start), range.len()) }
    }

    /// SAFETY: no other thread touches `range` of float buffer `id` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn float_mut(&self, id: usize, range: Range<usize>) -> &mut [f32] {
        let (p, n) = self.floats[id];
        assert!(range.start <= range.end && range.end <= n);
        unsafe { std::slice::from_raw_parts_mut(p.add(range.start), range.len()) }
    }

    /// SAFETY: no thread writes `range` of bit slot `id` while the slice lives.
    unsafe fn bits_part(&self, id: usize, range: Range<usize>) -> &[u64] {
        let (p, n) = self.bits[id];
        assert!(range.start <= range.end && range.end <= n);
        unsafe { std::slice::from_raw_parts(p.add(range.start), range.len()) }
    }

    /// `range` of bit slot `id` as a pointer and a length, for writers that share words.
    fn bits_raw(&self, id: usize, range: Range<usize>) -> (*mut u64, usize) {
        let (p, n) = self.bits[id];
        assert!(range.start <= range.end && range.end <= n);
        // SAFETY (pointer arithmetic): range.start <= n, within or one past the buffer
        (unsafe { p.add(range.start) }, range.len())
    }
}

/// How far each thread splitting an image has got, each count on a cache line of its own (128
/// bytes: the pair of lines the prefetcher fetches together). Stage g of a call (counted image by
/// image) is 2g + 1 once a thread has written its edge chunk (the one next to the other thread's
/// part, run first when the other's next stage reads only that: [`BinaryNet::reads_only_the_edge`]),
/// 2g + 2 once it has done its whole part. A thread waits by spinning: a stage of a batch-1
/// ResNet-20 takes microseconds, shorter than a sleeping thread takes to wake. (A barrier after each
/// stage cost every thread the slower one's time, and two cache-line transfers.)
struct Progress {
    counts: Vec<Count>,
}

#[repr(align(128))]
struct Count(AtomicUsize);

impl Progress {
    fn new(threads: usize) -> Progress {
        Progress {
            counts: (0..threads).map(|_| Count(AtomicUsize::new(0))).collect(),
        }
    }

    /// Thread `t` has got to `mark`.
    fn mark(&self, t: usize, mark: usize) {
        self.counts[t].0.store(mark, Ordering::Release);
    }

    /// Wait until every thread but `t` has got to `mark`.
    fn wait(&self, t: usize, mark: usize) {
        for (u, other) in self.counts.iter().enumerate() {
            let mut spins = 0u32;
            while u != t && other.0.load(Ordering::Acquire) < mark {
                spins += 1;
                if spins < 1 << 14 {
                    spin_loop();
                } else {
                    std::thread::yield_now(); // the other thread lost its core: let it run
                }
            }
        }
    }
}

/// What a thread splitting an image needs of the others' part of the stage before, before it
/// starts a stage (`BinaryNet::waits`).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Need {
    Nothing,
    /// Their edge chunk, which they then run first.
    Edge,
    All,
}

/// Of two threads' parts of a map's chunks, part `t`'s edge chunk (thread 0's last, thread 1's
/// first: the one next to the other's part) and the rest, when it has more than one.
fn split_edge(chunks: &Range<usize>, t: usize) -> Option<(Range<usize>, Range<usize>)> {
    let (first, end) = (chunks.start, chunks.end);
    match (end - first, t) {
        (0 | 1, _) => None,
        (_, 0) => Some((end - 1..end, first..end - 1)),
        _ => Some((first..first + 1, first + 1..end)),
    }
}

/// `run` on part `t`'s `chunks`: with `edge`, on its edge chunk first ([`split_edge`]), then `edge()`,
/// then on the rest. Returns whether some `run` did.
fn in_edge_order(
    chunks: Range<usize>,
    t: usize,
    edge: Option<&dyn Fn()>,
    mut run: impl FnMut(Range<usize>) -> bool,
) -> bool {
    match (edge, split_edge(&chunks, t)) {
        (Some(done), Some((e, rest))) => {
            let nan = run(e);
            done();
            run(rest) | nan
        }
        _ => run(chunks),
    }
}

/// Part `t` of `n` of `o` channels taken in groups of `unit`.
fn channel_part(o: usize, unit: usize, t: usize, n: usize) -> Range<usize> {
    let groups = part(o.div_ceil(unit), t, n);
    groups.start * unit..(groups.end * unit).min(o)
}

/// Part `t` of `n` of a step's output of `positions` positions and `o` channels: its chunks of
/// positions, or, when the map is a single chunk, its channels in groups of `unit`; with the range of
/// the blocked float map it writes. None when the part is empty.
fn output_part(
    positions: usize,
    o: usize,
    unit: usize,
    t: usize,
    n: usize,
) -> Option<(Range<usize>, Range<usize>, Range<usize>)> {
    let (all, units) = (positions.div_ceil(CHUNK), o.div_ceil(unit));
    let (chunks, channels) = if all == 1 && n > 1 && units > 1 {
        (0..1, channel_part(o, unit, t, n))
    } else {
        (part(all, t, n), 0..o)
    };
    if chunks.is_empty() || channels.is_empty() {
        return None;
    }
    let floats = (chunks.start * o + channels.start) * CHUNK..((chunks.end - 1) * o + channels.end) * CHUNK;
    Some((chunks, channels, floats))
}

impl BinaryNet {
    /// Run `n` images `x` `(n, c, h, w)` into `out` `(n, c', h', w')` with the kernels of `isa` on
    /// `threads` threads. Errors on a non-finite input or a NaN y whose sign a later conv would read.
    pub fn run(&self, x: &[f32], n: usize, out: &mut [f32], isa: Isa, threads: usize) -> Result<(), String> {
        let (c, h, w) = self.input_shape();
        let (oc, oh, ow) = self.output_shape();
        let (per_in, per_out) = (c * h * w, oc * oh * ow);
        if Some(x.len()) != n.checked_mul(per_in) || Some(out.len()) != n.checked_mul(per_out) {
            return Err(format!(
                "x must hold n·{c}·{h}·{w} and out n·{oc}·{oh}·{ow} values for n = {n}"
            ));
        }
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(format!("x is {} at flat index {i}; images must be finite", x[i]));
        }
        let first_nan = AtomicUsize::new(usize::MAX);
        // stage 1 + s runs step s (`step_part`)
        let nan_at = |image: usize, stage: usize| {
            first_nan.fetch_min(image * self.steps.len() + stage - 1, Ordering::Relaxed);
        };
        let stages = self.stages();
        let lease = || Lease {
            buffers: self
                .spare
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_else(|| self.buffers()),
            home: &self.spare,
        };
        // splitting an image: no more threads than its largest map has chunks (the rest would only
        // wait)
        let (_, h, w) = self.input;
        let split = threads.min((h * w).div_ceil(CHUNK));
        if n >= threads || split <= 1 {
            let items: Vec<(usize, &mut [f32])> = out.chunks_mut(per_out).enumerate().collect();
            // each worker's views of its buffers, made once (the buffers' memory does not move)
            let worker = || {
                let mut held = lease();
                let views = Views::of(&mut held.buffers);
                (held, views, Scratch::default())
            };
            crate::threads::run_claimed_with(threads, items, worker, |(_, views, scratch), (i, out)| {
                let x = &x[i * per_in..(i + 1) * per_in];
                for at in 0..stages {
                    // SAFETY: one thread, one stage at a time
                    if unsafe { self.step_part(isa, views, scratch, at, x, out.as_mut_ptr(), (0, 1), None) } {
                        nan_at(i, at);
                    }
                }
                true
            })?;
        } else {
            let threads = split;
            let mut held = lease();
            let views = Views::of(&mut held.buffers);
            let progress = Progress::new(threads);
            let out_ptr = OutPtr(out.as_mut_ptr());
            // a thread whose part panics (an internal error) stops working but keeps marking its
            // progress, so the others finish and the call returns the error instead of hanging
            let failed = AtomicBool::new(false);
            let waits = self.waits.get_or_init(|| self.waits());
            // edges between two threads only
            let need = |at: usize| match waits[at] {
                Need::Edge if threads != 2 => Need::All,
                need => need,
            };
            let work = |t: usize| {
                let mut scratch = Scratch::default();
                for i in 0..n {
                    let x = &x[i * per_in..(i + 1) * per_in];
                    for at in 0..stages {
                        let g = i * stages + at;
                        match (g, need(at)) {
                            (0, _) | (_, Need::Nothing) => {}
                            (_, Need::Edge) => progress.wait(t, 2 * g - 1),
                            (_, Need::All) => progress.wait(t, 2 * g),
                        }
                        let edge_first = at + 1 < stages && need(at + 1) == Need::Edge;
                        let edge_done = || progress.mark(t, 2 * g + 1);
                        if !failed.load(Ordering::Relaxed) {
                            // SAFETY: each thread writes its own part of the stage's outputs, and reads
                            // what `progress` says the others have written and no longer read
                            let part = || unsafe {
                                let (s, out) = (&mut scratch, out_ptr.at(i * per_out));
                                let edge: Option<&dyn Fn()> = edge_first.then_some(&edge_done);
                                self.step_part(isa, &views, s, at, x, out, (t, threads), edge)
                            };
                            match catch_unwind(AssertUnwindSafe(part)) {
                                Ok(true) => nan_at(i, at),
                                Ok(false) => {}
                                Err(_) => failed.store(true, Ordering::Relaxed),
                            }
                        }
                        progress.mark(t, 2 * g + 2);
                    }
                }
            };
            crate::threads::with_helpers(threads, &work)?;
            if failed.into_inner() {
                return Err("internal error: a thread's part of an image panicked".into());
            }
        }
        match first_nan.into_inner() {
            usize::MAX => Ok(()),
            at => Err(format!(
                "image {}: step {} made a NaN y whose sign is undefined (scale, shift, correction and csr data must be finite)",
                at / self.steps.len(),
                at % self.steps.len()
            )),
        }
    }

    /// Per stage, what two threads splitting an image wait for before it ([`waits_after`] the stage
    /// before, [`reads_only_the_edge`]); a call's first stage waits for nothing, later images' for
    /// all of the image before.
    ///
    /// [`waits_after`]: BinaryNet::waits_after
    /// [`reads_only_the_edge`]: BinaryNet::reads_only_the_edge
    fn waits(&self) -> Vec<Need> {
        let stages = self.stages();
        let need = |at: usize| match (at, self.waits_after((at + stages - 1) % stages)) {
            (_, false) => Need::Nothing,
            (0, true) => Need::All,
            _ if self.reads_only_the_edge(at) => Need::Edge,
            _ => Need::All,
        };
        (0..stages).map(need).collect()
    }

    /// An image's stages: the blocks' input, the steps, the result (with a head, its channel means
    /// and its logits).
    fn stages(&self) -> usize {
        self.steps.len() + 2 + usize::from(self.head.is_some())
    }

    /// Whether stage `at`, with two threads splitting an image, reads of the other thread's part of
    /// the stage before only its edge chunk, so it may start as soon as that is written: a stride-1
    /// conv on a map of whole-row chunks reading the packed signs of the stage before, on the same
    /// map: a stride-1 conv, or the blocks' input (stage 0, which reads only the image); each window
    /// reaches at most one chunk across (the padding, the rows a window reaches past its own, is at
    /// most a chunk's rows). Then neither thread reads the other's inside chunks nor writes where the
    /// other still reads: each writes its own positions, and a thread's inside chunks read only its
    /// own rows (the views of each call hold only the rows it reads).
    fn reads_only_the_edge(&self, at: usize) -> bool {
        // stage 0 reads no signs: `wrapping_*` keeps it out of range
        let Some(Step::Conv { layer: b, input, .. }) = self.steps.get(at.wrapping_sub(1)) else {
            return false;
        };
        let b = &self.convs[*b];
        let local = |c: &Conv| {
            c.stride == 1
                && c.kh == 2 * self.pad + 1
                && c.kw == 2 * self.pad + 1
                && (c.h, c.w) == (c.ho, c.wo)
                && CHUNK.is_multiple_of(c.w)
                && self.pad <= CHUNK / c.w
        };
        let positions = b.h * b.w;
        let before = match self.steps.get(at.wrapping_sub(2)) {
            None => *input == 0, // the blocks' input, of b's map (`new` checked the shapes)
            Some(&Step::Conv { layer: a, bits, .. }) => {
                let a = &self.convs[a];
                bits == Some(*input) && local(a) && (a.h, a.w) == (b.h, b.w)
            }
            Some(_) => false,
        };
        before && local(b) && positions.is_multiple_of(CHUNK) && positions >= 2 * CHUNK
    }

    /// Whether the threads splitting an image wait for each other after stage `at`. They need not
    /// when each thread's part of the next stage reads only what its own part of this one wrote:
    /// - a shortcut followed by a conv that neither reads nor writes its float buffers (a basic
    ///   block's first conv reads only bits): each goes straight on to its part of the conv;
    /// - the last conv, on a one-chunk map, followed by the head: the conv split its channels in the
    ///   32-channel groups the pooling takes, so each thread pools the channels it wrote.
    fn waits_after(&self, at: usize) -> bool {
        // stage 0 is no step: `wrapping_*` keeps it out of range (no overflow in debug builds)
        let s = at.wrapping_sub(1);
        match (self.steps.get(s), self.steps.get(s.wrapping_add(1))) {
            (Some(Step::Shortcut { src, dst, .. }), Some(Step::Conv { residual, float, .. })) => {
                [Some(*src), Some(*dst)].contains(float) || *residual == Some(*dst)
            }
            (Some(Step::Conv { layer, float, .. }), None) => {
                let conv = &self.convs[*layer];
                self.head.is_none() || *float != Some(self.output) || conv.ho * conv.wo > CHUNK
            }
            _ => true,
        }
    }

    fn buffers(&self) -> Buffers {
        Buffers {
            floats: self.float_sizes.iter().map(|&s| OnLines::zeros(s)).collect(),
            bits: self.bits_sizes.iter().map(|&s| OnLines::zeros(s)).collect(),
        }
    }

    /// Part `t` of `n` of stage `at` of one image: 0 makes the blocks' input from the image `x` (the
    /// stem, or `x` itself), 1 + s runs step s, and the rest write the result to the image's output
    /// at `out`: the output map, or with a head its channel means and then its logits. With `edge`,
    /// a conv splitting positions between two threads runs its edge chunk first (thread 0's last,
    /// thread 1's first), then calls `edge`. Returns whether a conv made a NaN y with a packed output.
    ///
    /// SAFETY: the other parts of this stage run on other threads or not at all; what this part
    /// reads is written, and what it writes no longer read, by every other thread (the waits of
    /// [`Progress`]); `out` points to this image's output.
    #[allow(clippy::too_many_arguments)]
    unsafe fn step_part(
        &self,
        isa: Isa,
        v: &Views,
        scratch: &mut Scratch,
        at: usize,
        x: &[f32],
        out: *mut f32,
        (t, n): (usize, usize),
        edge: Option<&dyn Fn()>,
    ) -> bool {
        let pad = self.pad;
        if at == 0 {
            let (c, h, w) = self.input;
            let chunks = part((h * w).div_ceil(CHUNK), t, n);
            let input = |chunks: Range<usize>| {
                // SAFETY: this part's ranges of the blocks' input
                let (float, (bits, bits_lo)) = unsafe {
                    (
                        v.float_mut(0, chunks.start * c * CHUNK..chunks.end * c * CHUNK),
                        self.bits_out(v, 0, (h, w), &chunks),
                    )
                };
                let into = Input {
                    float,
                    bits,
                    bits_lo,
                    pad,
                };
                match &self.stem {
                    Some(stem) => kernel::stem(isa, stem, x, chunks, into, self.act),
                    None => kernel::load_input(isa, x, self.input, chunks, into, self.act),
                }
            };
            return in_edge_order(chunks, t, edge, |chunks| {
                input(chunks);
                false
            });
        }
        if at == self.steps.len() + 1 {
            let (oc, oh, ow) = self.out_shape;
            let p = oh * ow;
            if let Some(head) = &self.head {
                // each part pools its 32-channel groups: a one-chunk map's last conv split its
                // channels so (`output_part`), and left them in this thread's cache
                let channels = channel_part(oc, 32, t, n);
                if channels.is_empty() {
                    return false;
                }
                // the map from this part's first channel to its last (the whole of each on a
                // one-chunk map, whose conv parts may still be writing the other channels)
                let floats = channels.start * CHUNK..((p.div_ceil(CHUNK) - 1) * oc + channels.end) * CHUNK;
                // SAFETY: this part's channels of the means; no thread writes what the view holds
                // of the map (on a one-chunk map, the channels this thread's conv part wrote; on
                // more, every thread finished the conv before this stage: `waits_after`)
                let (src, means) = unsafe {
                    (
                        v.float_part(self.output, floats),
                        v.float_mut(head.means, channels),
                    )
                };
                head.pool(src, oc, p, means);
                return false;
            }
            let src = unsafe { v.float(self.output) };
            for q in part(p, t, n) {
                for ch in 0..oc {
                    // SAFETY: this part's positions of the image's output
                    unsafe { *out.add(ch * p + q) = src[blocked(q, ch, oc)] };
                }
            }
            return false;
        }
        if at == self.steps.len() + 2 {
            // the head's classifier, on the means of every channel (written by the stage before)
            if let (Some(head), 0) = (&self.head, t) {
                // SAFETY: the image's `classes` logits; no part writes the means in this stage
                let (logits, means) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(out, head.classes),
                        v.float(head.means),
                    )
                };
                head.logits(means, logits);
            }
            return false;
        }
        match self.steps[at - 1] {
            Step::Conv { layer, .. } => {
                let conv = &self.convs[layer];
                // a map of one chunk splits by 32-channel halves (its threads write the two halves
                // of the same packed words)
                let Some((chunks, channels, floats)) = output_part(conv.ho * conv.wo, conv.o, 32, t, n)
                else {
                    return false;
                };
                if channels.len() < conv.o {
                    // SAFETY: forwarded from the caller
                    return unsafe { self.conv_part(isa, v, scratch, at, conv, chunks, channels, floats) };
                }
                in_edge_order(chunks, t, edge, |chunks| {
                    let floats = chunks.start * conv.o * CHUNK..chunks.end * conv.o * CHUNK;
                    // SAFETY: forwarded from the caller, for a part of this part's chunks
                    unsafe { self.conv_part(isa, v, scratch, at, conv, chunks, 0..conv.o, floats) }
                })
            }
            Step::Shortcut {
                src,
                dst,
                stride,
                channels: oc,
            } => {
                let (c, h, w) = self.sources[at - 1];
                let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
                let Some((chunks, channels, floats)) = output_part(ho * wo, oc, 1, t, n) else {
                    return false;
                };
                // SAFETY: `new` refused a shortcut onto its source; the range is this part's
                let (s, d) = unsafe { (v.float(src), v.float_mut(dst, floats)) };
                shortcut(s, (c, h, w), d, (oc, ho, wo), stride, chunks, channels);
                false
            }
        }
    }

    /// Step `at - 1`, the conv `conv`, on positions `chunks` and output channels `channels`, whose
    /// part of the blocked float maps is `floats`.
    ///
    /// SAFETY: no other thread touches what this part writes, nor writes what it reads, meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn conv_part(
        &self,
        isa: Isa,
        v: &Views,
        scratch: &mut Scratch,
        at: usize,
        conv: &Conv,
        chunks: Range<usize>,
        channels: Range<usize>,
        floats: Range<usize>,
    ) -> bool {
        let Step::Conv {
            input,
            residual,
            float,
            bits,
            ..
        } = self.steps[at - 1]
        else {
            unreachable!("stage {at} is a conv")
        };
        // SAFETY: `new` refused outputs that are the step's input or residual; the ranges are this
        // part's (the packed words' halves too)
        let io = unsafe {
            let (bits, bits_lo) = match bits {
                Some(b) => {
                    let (s, lo) = self.bits_out(v, b, (conv.ho, conv.wo), &chunks);
                    (Some(s), lo)
                }
                None => (None, None),
            };
            ConvIo {
                input: self.rows_read(v, input, conv, &chunks),
                residual: residual.map(|r| v.float_part(r, floats.clone())),
                float: float.map(|f| v.float_mut(f, floats)),
                bits,
                bits_lo,
                chunks,
                channels,
                pad: self.pad,
            }
        };
        kernel::conv(isa, conv, io, scratch)
    }

    /// The rows of bit slot `id` (each plane's) that `conv`'s windows at positions `chunks` read.
    ///
    /// SAFETY: no thread writes those rows while the views live.
    unsafe fn rows_read<'a>(&self, v: &'a Views, id: usize, conv: &Conv, chunks: &Range<usize>) -> Rows<'a> {
        let wp = conv.w + 2 * self.pad;
        let plane = (conv.h + 2 * self.pad) * wp;
        let positions = conv.ho * conv.wo;
        let (first, last) = (chunks.start * CHUNK, (chunks.end * CHUNK).min(positions) - 1);
        // padded rows oy·stride + i, i < kh, for the output rows oy the positions cross
        let rows = (first / conv.wo) * conv.stride..(last / conv.wo) * conv.stride + conv.kh;
        let words = rows.start * wp..rows.end * wp;
        // SAFETY: forwarded from the caller
        unsafe {
            let hi = v.bits_part(id, words.clone());
            let lo =
                (self.act == Act::Dorefa2).then(|| v.bits_part(id, words.start + plane..words.end + plane));
            Rows {
                hi,
                lo,
                first: words.start,
            }
        }
    }

    /// The padded words of a `(h, w)` bit map that positions `chunks` write (empty if none), and
    /// the words of one plane.
    fn bits_range(&self, (h, w): (usize, usize), chunks: &Range<usize>) -> (Range<usize>, usize) {
        let (pad, wp) = (self.pad, w + 2 * self.pad);
        let index = |p: usize| (p / w + pad) * wp + p % w + pad;
        let (first, end) = (chunks.start * CHUNK, (chunks.end * CHUNK).min(h * w));
        let range = if first < end {
            index(first)..index(end - 1) + 1
        } else {
            0..0
        };
        (range, (h + 2 * pad) * wp)
    }

    /// The parts of bit slot `id` (a padded `(h, w)` map, one or two planes) that positions `chunks`
    /// write, as [`Bits`] to write through (the threads of a channel split share the words, each
    /// writing its halves).
    ///
    /// SAFETY: no other thread touches the halves this part writes while the `Bits` are used.
    unsafe fn bits_out<'a>(
        &self,
        v: &'a Views,
        id: usize,
        (h, w): (usize, usize),
        chunks: &Range<usize>,
    ) -> (Bits<'a>, Option<Bits<'a>>) {
        let (range, plane) = self.bits_range((h, w), chunks);
        // both planes' parts are indexed from the part's first padded position
        let at = |r: Range<usize>| {
            let (p, len) = v.bits_raw(id, r);
            // SAFETY: forwarded from the caller; `bits_raw` checked the range
            unsafe { Bits::from_raw(p, len, range.start) }
        };
        let lo = (self.act == Act::Dorefa2).then(|| at(range.start + plane..range.end + plane));
        (at(range.clone()), lo)
    }
}

/// ResNet's option-A shortcut on blocked maps, for the output positions `chunks` and output
/// channels `channels` (`dst` is their part: one chunk, or every channel): every `stride`-th pixel,
/// the new channels zero on both sides (half before, the rest after), positions past ho·wo zero.
fn shortcut(
    src: &[f32],
    (c, _, w): Shape,
    dst: &mut [f32],
    (oc, ho, wo): Shape,
    stride: usize,
    chunks: Range<usize>,
    channels: Range<usize>,
) {
    let before = (oc - c) / 2;
    dst.fill(0.0);
    let copied = channels.start.max(before)..channels.end.min(before + c);
    for chunk in chunks.clone() {
        let p0 = chunk * CHUNK;
        if p0 >= ho * wo {
            break;
        }
        // a row segment's pixels, channel by channel: contiguous in dst, every stride-th in src
        for (l, oy, ox, len) in kernel::segments(p0, CHUNK.min(ho * wo - p0), wo) {
            let from = oy * stride * w + ox * stride;
            let last = from + (len - 1) * stride;
            for och in copied.clone() {
                let ch = och - before;
                let at = ((chunk - chunks.start) * oc + och - channels.start) * CHUNK + l;
                let seg = &mut dst[at..at + len];
                if from / CHUNK == last / CHUNK {
                    // the source pixels lie in one chunk: a strided run of one slice
                    let run = &src[blocked(from, ch, c)..=blocked(last, ch, c)];
                    for (d, &v) in seg.iter_mut().zip(run.iter().step_by(stride)) {
                        *d = v;
                    }
                } else {
                    for (q, d) in seg.iter_mut().enumerate() {
                        *d = src[blocked(from + q * stride, ch, c)];
                    }
                }
            }
        }
    }
}

/// An image's output, written by several threads in disjoint parts.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: each thread writes its own positions (`step_part`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A thread's buffers, handed back to the net when the thread is done.
struct Lease<'a> {
    buffers: Buffers,
    home: &'a Mutex<Vec<Buffers>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let empty = Buffers {
            floats: Vec::new(),
            bits: Vec::new(),
        };
        let b = std::mem::replace(&mut self.buffers, empty);
        self.home.lock().unwrap_or_else(|e| e.into_inner()).push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_on_progress_holds_a_thread_until_the_others_get_there() {
        let progress = Progress::new(3);
        let before = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..3 {
                let (progress, before) = (&progress, &before);
                s.spawn(move || {
                    for round in 1..=100 {
                        before.fetch_add(1, Ordering::SeqCst);
                        progress.mark(t, round);
                        progress.wait(t, round);
                        // every thread has counted this round before any gets past its wait
                        assert!(before.load(Ordering::SeqCst) >= 3 * round);
                    }
                });
            }
        });
        assert_eq!(before.into_inner(), 300);
    }
}
