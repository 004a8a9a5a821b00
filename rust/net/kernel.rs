//! One binary conv of one image, positions in the vector lanes: for each chunk of [`CHUNK`] output
//! positions and each output channel, Σ over taps of popcount(x ^ w), then the epilogue, all in
//! registers.
//!
//! A tap's channels fit one lane (C ≤ 64): u16 lanes for C ≤ 16, u32 for ≤ 32, u64 for ≤ 64, so a
//! 512-bit vector holds 32, 16 or 8 positions and no popcount is spent on padding bits. The input
//! windows are plain loads from the padded map (no bit gathering); each weight word is broadcast.
//! Float maps are blocked (a chunk's positions of one channel together), so the correction, the
//! residual and the float output of a channel's chunk are one contiguous run; the output's signs
//! are OR-ed into one word per position, channels last, which is what the next conv reads. APB's
//! sparse term is read from the same windows, one non-zero at a time.
//!
//! For 1-bit maps the float operations per value are `bconv_1bit`'s (crate::bconv), in its order, so
//! the two give the same bits; 2-bit maps take the same steps on the DoReFa levels. The body is compiled once per ISA ([`conv`] picks); integer popcounts are exact and
//! the float steps are the same scalar operations, so every ISA gives the same bits too.

use std::marker::PhantomData;
use std::ops::Range;

use super::ends::{Stem, MAX_STEM_TAPS};
use super::sparse;
use super::{Conv, ConvIo};
use crate::isa::Isa;

/// Output positions per inner step: two 512-bit vectors of u16 lanes, four of floats. (32 ran
/// ResNet-20 ~20 % slower on Zen 5: the sparse term's sums, added non-zero after non-zero in CSR
/// order, are a chain of dependent adds, which 64 lanes cover twice as well; 128 was slower again.)
pub(crate) const CHUNK: usize = 64;
/// Most taps (kh·kw) a conv may have here (3×3): the size of a chunk's windows in [`Scratch`].
pub(crate) const MAX_TAPS: usize = 9;

/// A conv's working arrays for one chunk, which each thread keeps across the steps of a call:
/// cleared on every call they cost 2-5 % of a batch-1 image (~20 KB of stores per step, and as much
/// of the L1 cache evicted). Each chunk overwrites what it reads of them. On cache lines, as the
/// stack put them (each array's size is a multiple of 64 bytes): vector loads that straddle two
/// lines made the sparse term ~10 % slower.
#[repr(C, align(64))]
pub(crate) struct Scratch {
    lanes: Lanes,
    /// The windows as 32-bit halves (channels 0..32, 32..64), for the sparse term; and those of
    /// the 2-bit maps' lo plane.
    halves: [[u32; CHUNK]; 2 * MAX_TAPS],
    halves_lo: [[u32; CHUNK]; 2 * MAX_TAPS],
    /// Per tap and lane, what the sparse term keeps of v·x's bits: all where the tap is inside the
    /// map, none on the padding (the portable sums; the AVX-512 ones read the masks).
    keep: [[u32; CHUNK]; MAX_TAPS],
}

/// A chunk's windows, tap by tap, in each lane type; `lo`: the 2-bit maps' lo plane (v = 2·hi + lo,
/// each ±1).
#[repr(C)]
pub(crate) struct Windows<T> {
    hi: [[T; CHUNK]; MAX_TAPS],
    lo: [[T; CHUNK]; MAX_TAPS],
}

impl<T: Lane> Default for Windows<T> {
    fn default() -> Windows<T> {
        let zero = [[T::default(); CHUNK]; MAX_TAPS];
        Windows { hi: zero, lo: zero }
    }
}

#[derive(Default)]
#[repr(C)]
pub(crate) struct Lanes {
    w16: Windows<u16>,
    w32: Windows<u32>,
    w64: Windows<u64>,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch {
            lanes: Lanes::default(),
            halves: [[0; CHUNK]; 2 * MAX_TAPS],
            halves_lo: [[0; CHUNK]; 2 * MAX_TAPS],
            keep: [[0; CHUNK]; MAX_TAPS],
        }
    }
}

/// A lane: one position's tap word (C bits, C ≤ the lane's width).
pub(crate) trait Lane: Copy + Default {
    fn from_word(w: u64) -> Self;
    /// popcount(self ^ w), in the lane's type (≤ 64 fits every lane).
    fn mismatches(self, w: Self) -> Self;
    fn add(self, other: Self) -> Self;
    fn count(self) -> i32;
    /// This lane type's windows in a [`Scratch`].
    fn windows(lanes: &mut Lanes) -> &mut Windows<Self>;
}

macro_rules! lane {
    ($t:ty, $windows:ident) => {
        impl Lane for $t {
            #[inline(always)]
            fn from_word(w: u64) -> Self {
                w as $t // the word's high bits are 0 (C ≤ the lane width)
            }
            #[inline(always)]
            fn mismatches(self, w: Self) -> Self {
                (self ^ w).count_ones() as $t
            }
            #[inline(always)]
            fn add(self, other: Self) -> Self {
                self.wrapping_add(other) // sums stay ≤ kh·kw·64, far below every lane's range
            }
            #[inline(always)]
            fn count(self) -> i32 {
                self as i32
            }
            #[inline(always)]
            fn windows(lanes: &mut Lanes) -> &mut Windows<Self> {
                &mut lanes.$windows
            }
        }
    };
}
lane!(u16, w16);
lane!(u32, w32);
lane!(u64, w64);

/// Define `$name(isa, args..)`: `$body(args..)` compiled for `isa` (AVX-512 with VPOPCNTDQ and
/// BITALG, AVX2, or the baseline). `isa` must have passed `is_available()`.
macro_rules! per_isa {
    ($name:ident $(<$t:ident: $bound:path>)? ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $body:ident) => {
        pub(crate) fn $name $(<$t: $bound>)? (isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512bitalg,fma")]
                fn avx512 $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body $(::<$t>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,popcnt")]
                fn avx2 $(<$t: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body $(::<$t>)? ($($arg),*)
                }
                // SAFETY: `isa` passed `is_available()` (Avx512 includes VPOPCNTDQ and BITALG, and
                // its CPUs have FMA); AVX2 CPUs have POPCNT, FMA is checked.
                match isa {
                    Isa::Avx512 => return unsafe { avx512 $(::<$t>)? ($($arg),*) },
                    Isa::Avx2 if std::arch::is_x86_feature_detected!("fma") => {
                        return unsafe { avx2 $(::<$t>)? ($($arg),*) }
                    }
                    _ => {}
                }
            }
            $body $(::<$t>)? ($($arg),*)
        }
    };
}

/// Run `conv` on one image with the widest lanes its channels allow, in this thread's `scratch`.
/// Returns whether some y with a packed output was NaN (its sign is undefined).
pub(crate) fn conv(isa: Isa, c: &Conv, io: ConvIo, scratch: &mut Scratch) -> bool {
    // the sparse term's AVX-512 form (masked adds) is only called where AVX-512 is checked
    let wide = isa == Isa::Avx512;
    match c.c {
        0..=16 => conv_lanes::<u16>(isa, c, io, scratch, wide),
        17..=32 => conv_lanes::<u32>(isa, c, io, scratch, wide),
        _ => conv_lanes::<u64>(isa, c, io, scratch, wide),
    }
}

per_isa!(conv_lanes<T: Lane>(c: &Conv, io: ConvIo, scratch: &mut Scratch, wide: bool) -> bool = body);
per_isa!(load_input(x: &[f32], shape: (usize, usize, usize), chunks: Range<usize>, out: Input, act: Act) = load);

/// Where [`load`] and [`stem`] write a chunk range of the blocks' input: its part of the blocked
/// float map, and the padded bit map's planes (`bits_lo`: the 2-bit maps' second plane).
pub(crate) struct Input<'a> {
    pub float: &'a mut [f32],
    pub bits: Bits<'a>,
    pub bits_lo: Option<Bits<'a>>,
    pub pad: usize,
}

/// Positions `chunks` of a planar float image `x` `(c, h, w)` (the blocks' input, activated): its
/// values into the blocked float map, its planes (`act`) into the padded bit map.
#[inline(always)]
fn load(x: &[f32], (c, h, w): (usize, usize, usize), chunks: Range<usize>, out: Input, act: Act) {
    for chunk in chunks.clone() {
        let p0 = chunk * CHUNK;
        let valid = CHUNK.min(h * w - p0);
        let mut words = [[[0u32; CHUNK]; 2]; 2];
        for ch in 0..c {
            let mut v = [0f32; CHUNK];
            v[..valid].copy_from_slice(&x[ch * h * w + p0..][..valid]);
            out.float[((chunk - chunks.start) * c + ch) * CHUNK..][..CHUNK].copy_from_slice(&v);
            add_bits(act, &v, ch, &mut words);
        }
        store_planes(&words, p0, valid, (w, out.pad), out.bits, out.bits_lo, 0..2);
    }
}

/// The output rows that positions `p0..p0 + valid` of a map `wo` wide cross: (lane of the first, row,
/// column of the first, count), in order.
#[inline(always)]
pub(crate) fn segments(
    p0: usize,
    valid: usize,
    wo: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut l = 0;
    std::iter::from_fn(move || {
        (l < valid).then(|| {
            let (oy, ox) = ((p0 + l) / wo, (p0 + l) % wo);
            let len = (wo - ox).min(valid - l);
            l += len;
            (l - len, oy, ox, len)
        })
    })
}

/// A padded bit map's words from padded index `base` on (`len` of them), written through a pointer:
/// when an image's conv is split by output channels, two threads write the two 32-bit halves
/// (channels 0..32 and 32..64) of the same words.
#[derive(Clone, Copy)]
pub(crate) struct Bits<'a> {
    ptr: *mut u64,
    len: usize,
    base: usize,
    /// The words are borrowed for `'a`, as a `&mut [u64]` would be.
    words: PhantomData<&'a mut [u64]>,
}

impl<'a> Bits<'a> {
    /// # Safety
    /// `ptr .. ptr + len` is valid for writes for `'a`, and no other thread touches the halves
    /// written through it meanwhile.
    pub(crate) unsafe fn from_raw(ptr: *mut u64, len: usize, base: usize) -> Bits<'a> {
        Bits {
            ptr,
            len,
            base,
            words: PhantomData,
        }
    }

    /// Write the halves `halves` (0: channels 0..32, 1: 32..64) of the words from padded index `at`
    /// on, one per element of `lo` (channels 0..32) and `hi` (32..64).
    #[inline(always)]
    fn put(&self, at: usize, lo: &[u32], hi: &[u32], halves: &Range<usize>) {
        let (i, n) = (at - self.base, lo.len());
        assert!(i <= self.len && n <= self.len - i && hi.len() == n);
        if halves.len() == 2 {
            // SAFETY: in bounds (above, and `from_raw`'s contract); whole words, this part's alone
            let words = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i), n) };
            for (w, (&l, &h)) in words.iter_mut().zip(lo.iter().zip(hi)) {
                *w = l as u64 | (h as u64) << 32;
            }
            return;
        }
        for h in halves.clone() {
            let (half, at) = (
                [lo, hi][h],
                if cfg!(target_endian = "little") { h } else { 1 - h },
            );
            for (q, &v) in half.iter().enumerate() {
                // SAFETY: in bounds (above); a half is the u32 at its byte offset within the word
                unsafe { self.ptr.add(i + q).cast::<u32>().add(at).write(v) };
            }
        }
    }
}

/// A chunk's planes (their halves `halves`) into the padded bit map's planes.
#[inline(always)]
fn store_planes(
    words: &[[[u32; CHUNK]; 2]; 2],
    p0: usize,
    valid: usize,
    geometry: (usize, usize),
    bits: Bits<'_>,
    bits_lo: Option<Bits<'_>>,
    halves: Range<usize>,
) {
    store_signs(&words[0], p0, valid, geometry, bits, &halves);
    if let Some(lo) = bits_lo {
        store_signs(&words[1], p0, valid, geometry, lo, &halves);
    }
}

#[inline(always)]
fn body<T: Lane>(c: &Conv, io: ConvIo, scratch: &mut Scratch, wide: bool) -> bool {
    let ConvIo {
        input,
        residual,
        mut float,
        bits,
        bits_lo,
        chunks,
        channels,
        pad,
    } = io;
    let (o, taps, positions) = (c.o, c.kh * c.kw, c.ho * c.wo);
    let k = c.k as i32;
    let two = c.act == Act::Dorefa2;
    let Scratch {
        lanes,
        halves,
        halves_lo,
        keep,
    } = scratch;
    let Windows {
        hi: windows,
        lo: windows_lo,
    } = T::windows(lanes);
    let hi = Plane {
        words: input.hi,
        first: input.first,
        wp: c.w + 2 * pad,
    };
    // 2-bit maps: the lo plane's rows
    let lo = two.then(|| Plane {
        words: input.lo.expect("a 2-bit map's views hold its second plane"),
        ..hi
    });
    let mut nan = false;
    for chunk in chunks.clone() {
        let p0 = chunk * CHUNK;
        let valid = CHUNK.min(positions - p0);
        gather::<T>(c, hi, p0, valid, windows);
        if let Some(lo) = lo {
            gather::<T>(c, lo, p0, valid, windows_lo);
        }
        if c.sparse.is_some() {
            if two || !wide {
                sparse::expand(&c.inside[chunk * taps..(chunk + 1) * taps], keep);
            }
            gather_halves(c, hi, p0, valid, halves);
            if let Some(lo) = lo {
                gather_halves(c, lo, p0, valid, halves_lo);
            }
        }
        // the output's planes, each as two 32-bit halves (channels 0..32 and 32..64): half as many
        // vectors as u64
        let mut words = [[[0u32; CHUNK]; 2]; 2];
        // activated y summed over the channels: NaN exactly when some y is (hardtanh's values are
        // finite, ReLU's ≥ 0, so no inf − inf)
        let mut total = [0f32; CHUNK];
        for oc in channels.clone() {
            let weights = &c.weights[oc * taps..(oc + 1) * taps];
            let acc = mismatches(&windows[..taps], weights);
            // Σ w·v: 1-bit, K − 2·M; 2-bit, 2·(K − 2·M_hi) + (K − 2·M_lo)
            let mut dot = [0i32; CHUNK];
            if two {
                let lo = mismatches(&windows_lo[..taps], weights);
                for l in 0..CHUNK {
                    dot[l] = 3 * k - 4 * acc[l].count() - 2 * lo[l].count();
                }
            } else {
                for l in 0..CHUNK {
                    dot[l] = k - 2 * acc[l].count();
                }
            }
            // this channel's lanes in this call's parts of the blocked float maps
            let mine = ((chunk - chunks.start) * o + oc - channels.start) * CHUNK;
            let (scale, shift) = (c.scale[oc], c.shift[oc]);
            let mut y = [0f32; CHUNK];
            for l in 0..CHUNK {
                y[l] = (dot[l] as f32) * scale + shift;
            }
            if let Some(corr) = &c.correction {
                for (v, &r) in y.iter_mut().zip(corr.run(chunk, oc)) {
                    *v -= r;
                }
            }
            if let Some(sp) = &c.sparse {
                let (row, masks) = (sp.row(oc), &c.inside[chunk * taps..(chunk + 1) * taps]);
                let sums = if two {
                    sparse::sums_2bit(row, &halves[..], &halves_lo[..], &keep[..])
                } else {
                    sparse::sums_1bit(wide, row, &halves[..], masks, &keep[..])
                };
                for (v, &r) in y.iter_mut().zip(&sums) {
                    *v += r;
                }
            }
            if let Some(res) = residual {
                for (v, &r) in y.iter_mut().zip(&res[mine..mine + CHUNK]) {
                    *v += r;
                }
            }
            activate(c.act, &mut y);
            if let Some(f) = float.as_deref_mut() {
                f[mine..mine + CHUNK].copy_from_slice(&y);
            }
            if bits.is_some() {
                add_bits(c.act, &y, oc, &mut words);
                for l in 0..CHUNK {
                    total[l] += y[l];
                }
            }
        }
        if let Some(b) = bits {
            // every lane tested (a loop without an early exit is vectorised), those past `valid` masked
            nan |= (0..CHUNK).fold(false, |any, l| any | (l < valid && total[l].is_nan()));
            // a part with every channel owns its words: both halves written (the high one 0 when
            // o <= 32), whole words at a time
            let halves = if channels.len() == o {
                0..2
            } else {
                channels.start / 32..channels.end.div_ceil(32)
            };
            store_planes(&words, p0, valid, (c.wo, pad), b, bits_lo, halves);
        }
    }
    nan
}

/// Per lane, Σ over taps of popcount(window ^ weight): the mismatched bits of a chunk's windows
/// against one output channel's tap words.
#[inline(always)]
fn mismatches<T: Lane>(windows: &[[T; CHUNK]], weights: &[u64]) -> [T; CHUNK] {
    let mut acc = [T::default(); CHUNK];
    for (x, &w) in windows.iter().zip(weights) {
        let w = T::from_word(w);
        for l in 0..CHUNK {
            acc[l] = acc[l].add(x[l].mismatches(w));
        }
    }
    acc
}

/// The windows of [`gather`] as 32-bit halves (channels 0..32, 32..64): `halves[2·t + half]`.
/// Read from the map, as the windows are: split from the windows just stored (wide loads over narrow
/// stores, which cannot forward to them), an APB ResNet-20 image took 1.05x the time.
#[inline(always)]
fn gather_halves(c: &Conv, plane: Plane, p0: usize, valid: usize, halves: &mut [[u32; CHUNK]]) {
    let s = c.stride;
    for_each_run(c, plane, p0, valid, |t, lanes, row| {
        let (lo, hi) = halves[2 * t..].split_at_mut(1);
        let (lo, hi) = (&mut lo[0][lanes.clone()], &mut hi[0][lanes]);
        let split = |(lo, hi): (&mut u32, &mut u32), w: u64| [*lo, *hi] = [w as u32, (w >> 32) as u32];
        if s == 1 {
            for (pair, &w) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                split(pair, w);
            }
        } else {
            for (q, pair) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                split(pair, row[q * s]);
            }
        }
    });
    clear_past(&mut halves[..2 * c.kh * c.kw], valid);
}

/// The activation of every map of a net, and how a map is packed: hardtanh and its signs (1-bit
/// nets), or ReLU and the two planes of its DoReFa 2-bit level j = round(clip(y, 0, 1)·3), v = 2j − 3
/// = 2·hi + lo (hi, lo = ±1; bit 1 = −1, as `pack_2bit`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Sign,
    Dorefa2,
}

/// The 2-bit levels j/3 as the float model has them (float32 j / 3).
pub(crate) const LEVELS: [f32; 4] = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];

/// The net's activation on a chunk of y.
#[inline(always)]
fn activate(act: Act, y: &mut [f32; CHUNK]) {
    for v in y.iter_mut() {
        *v = match act {
            Act::Sign => v.clamp(-1.0, 1.0), // NaN stays NaN
            Act::Dorefa2 => {
                if *v < 0.0 {
                    0.0
                } else {
                    *v // as np.maximum(v, 0): NaN and −0.0 stay
                }
            }
        };
    }
}

/// Channel `oc`'s bits of a chunk of (activated) y, OR-ed into its planes' words.
#[inline(always)]
fn add_bits(act: Act, y: &[f32; CHUNK], oc: usize, words: &mut [[[u32; CHUNK]; 2]; 2]) {
    let (half, bit) = (oc / 32, 1u32 << (oc % 32));
    match act {
        Act::Sign => {
            for l in 0..CHUNK {
                words[0][half][l] |= if y[l] < 0.0 { bit } else { 0 }; // pack_bits' rule: bit 1 where y < 0
            }
        }
        Act::Dorefa2 => {
            for l in 0..CHUNK {
                let j = (y[l].clamp(0.0, 1.0) * 3.0).round_ties_even(); // DoReFa's level, as np.round
                words[0][half][l] |= if j <= 1.0 { bit } else { 0 }; // v < 0
                words[1][half][l] |= if j == 0.0 || j == 2.0 { bit } else { 0 };
                // v − 2·hi < 0
            }
        }
    }
}

/// A chunk's signs (two 32-bit halves per position) into the padded bit map of an output `wo`
/// wide.
#[inline(always)]
fn store_signs(
    words: &[[u32; CHUNK]; 2],
    p0: usize,
    valid: usize,
    (wo, pad): (usize, usize),
    b: Bits<'_>,
    halves: &Range<usize>,
) {
    for (l, oy, ox, len) in segments(p0, valid, wo) {
        let at = (oy + pad) * (wo + 2 * pad) + ox + pad;
        b.put(at, &words[0][l..l + len], &words[1][l..l + len], halves);
    }
}

per_isa!(stem(s: &Stem, x: &[f32], chunks: Range<usize>, out: Input, act: Act) = stem_body);

/// The stem ([`Stem`]) on positions `chunks` of an image `x`: for each position and output
/// channel Σ over (c, i, j) of one fused multiply-add each, from 0 and in that order (the order of
/// the training conv's direct path, so the same bits as the Python model on the Rust backend), then
/// ·scale + shift and the net's activation; into the blocked float map and the bit planes, as
/// [`load`].
#[inline(always)]
fn stem_body(s: &Stem, image: &[f32], chunks: Range<usize>, out: Input, act: Act) {
    let (taps, positions, o) = (s.kh * s.kw, s.h * s.w, s.o);
    let ct = s.c * taps;
    let mut x = [[0f32; CHUNK]; MAX_STEM_TAPS];
    for chunk in chunks.clone() {
        let p0 = chunk * CHUNK;
        let valid = CHUNK.min(positions - p0);
        for (l, oy, ox, len) in segments(p0, valid, s.w) {
            for (r, lanes) in x[..ct].iter_mut().enumerate() {
                let (ch, i, j) = (r / taps, (r % taps) / s.kw, r % s.kw);
                s.padded_run(image, ch, oy + i, ox + j, &mut lanes[l..l + len]);
            }
        }
        for lanes in x[..ct].iter_mut() {
            lanes[valid..].fill(0.0);
        }
        let mut words = [[[0u32; CHUNK]; 2]; 2];
        for oc in 0..o {
            let mut acc = [0f32; CHUNK];
            for (lanes, &w) in x[..ct].iter().zip(&s.weights[oc * ct..(oc + 1) * ct]) {
                for l in 0..CHUNK {
                    acc[l] = w.mul_add(lanes[l], acc[l]);
                }
            }
            let mut y = [0f32; CHUNK];
            for l in 0..CHUNK {
                y[l] = acc[l] * s.scale[oc] + s.shift[oc];
            }
            activate(act, &mut y);
            let mine = ((chunk - chunks.start) * o + oc) * CHUNK;
            out.float[mine..mine + CHUNK].copy_from_slice(&y);
            add_bits(act, &y, oc, &mut words);
        }
        store_planes(&words, p0, valid, (s.w, out.pad), out.bits, out.bits_lo, 0..2);
    }
}

/// One plane of a padded bit map as a conv's windows read it: its words from padded index `first`
/// on, `wp` to a row.
#[derive(Clone, Copy)]
struct Plane<'a> {
    words: &'a [u64],
    first: usize,
    wp: usize,
}

/// The windows of positions `p0..p0 + valid` (flat in the image), tap by tap: `windows[t][l]` is the
/// padded map's word under tap t of position p0 + l; lanes past `valid` are 0.
#[inline(always)]
fn gather<T: Lane>(c: &Conv, plane: Plane, p0: usize, valid: usize, windows: &mut [[T; CHUNK]]) {
    let s = c.stride;
    for_each_run(c, plane, p0, valid, |t, lanes, row| {
        let lanes = &mut windows[t][lanes];
        if s == 1 {
            for (v, &w) in lanes.iter_mut().zip(row) {
                *v = T::from_word(w);
            }
        } else {
            for (q, v) in lanes.iter_mut().enumerate() {
                *v = T::from_word(row[q * s]);
            }
        }
    });
    clear_past(&mut windows[..c.kh * c.kw], valid);
}

/// Lanes `valid..` of each row 0 (a chunk past the map's end).
#[inline(always)]
fn clear_past<T: Copy + Default>(rows: &mut [[T; CHUNK]], valid: usize) {
    if valid < CHUNK {
        for x in rows {
            x[valid..].fill(T::default());
        }
    }
}

/// For each row segment of positions `p0..p0 + valid` and each tap t: `f(t, the segment's lanes,
/// the padded map's words from the tap's first on)`, of which every stride-th is a lane's.
#[inline(always)]
fn for_each_run(
    c: &Conv,
    plane: Plane,
    p0: usize,
    valid: usize,
    mut f: impl FnMut(usize, Range<usize>, &[u64]),
) {
    let (s, Plane { words, first, wp }) = (c.stride, plane);
    for (l, oy, ox, len) in segments(p0, valid, c.wo) {
        for t in 0..c.kh * c.kw {
            let (i, j) = (t / c.kw, t % c.kw);
            f(t, l..l + len, &words[(oy * s + i) * wp + ox * s + j - first..]);
        }
    }
}
