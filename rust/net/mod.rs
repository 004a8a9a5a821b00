//! `BinaryNet`: a chain of binary convs (ResNet blocks with 1- or 2-bit maps between layers, [`Act`])
//! prepared once and run image by image in one call, so no float map crosses to Python between
//! layers and nothing is re-laid out or allocated per layer.
//!
//! A net is a list of steps over numbered buffers. Float buffers are blocked by the kernel's chunk of
//! positions ([`blocked`]); bit buffers hold one u64 word per pixel (the channels' signs, C ≤ 64;
//! two planes for 2-bit maps) with a zero border of `pad` pixels, the padding every conv reads.
//! Buffer 0 of each kind is the input: the call's float image and its signs. The steps:
//! * `Conv`: the binary conv `layer` on a bit buffer, plus its epilogue (folded BatchNorm, padding
//!   correction, sparse term, residual, activation), writing a float buffer, a bit buffer or both;
//! * `Shortcut`: ResNet's option-A shortcut (every stride-th pixel, new channels zero on both
//!   sides) from one float buffer to another.
//!
//! A 1-bit conv computes exactly what `bconv_1bit` (crate::bconv) computes for it, bit for bit
//! ([`kernel`] says how); a 2-bit one the same steps on the DoReFa levels. [`run`] shares the work
//! out to the threads: whole images when there are enough of them, else each step's chunks of
//! positions (or a one-chunk map's output channels).

mod ends;
pub(crate) mod kernel;
mod run;
pub(crate) mod sparse;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::bconv::Csr;
use crate::bits::words_for;
use crate::conv::Window;
use ends::{Head, Stem};
pub use ends::{HeadSpec, StemSpec};
pub use kernel::Act;
use kernel::{CHUNK, MAX_TAPS};
use sparse::Sparse;

/// A conv layer as given: packed ±1 weights `(o, words_for(kh·kw·c))` in (i, j, channel) bit order,
/// the folded BatchNorm, the padding correction `(ho, wo, o)` channels last, S as CSR (columns in
/// the weights' order).
pub struct ConvSpec<'a> {
    pub weights: &'a [u64],
    pub o: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub correction: Option<&'a [f32]>,
    pub csr: Option<Csr<'a>>,
}

/// One step of a net (see the module docs); buffers by number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    Conv {
        layer: usize,
        input: usize,
        residual: Option<usize>,
        float: Option<usize>,
        bits: Option<usize>,
    },
    Shortcut {
        src: usize,
        dst: usize,
        stride: usize,
        channels: usize,
    },
}

/// A conv prepared for its input geometry.
pub(crate) struct Conv {
    pub c: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    /// `(o, kh·kw)` words: each tap's c weight bits.
    pub weights: Vec<u64>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub correction: Option<Correction>,
    pub sparse: Option<Sparse>,
    /// With `sparse`: per chunk of positions and tap, the lanes inside the map
    /// ([`sparse::inside_masks`]).
    pub inside: Vec<u64>,
    /// The net's activation (and so its maps' planes).
    pub act: Act,
}

/// What one conv of one image reads and writes for the chunks of positions `chunks` and the output
/// channels `channels`: the rows of the input's padded bit map that these positions' windows cover
/// (per plane), and the parts of the residual's and the output's blocked float maps (from chunk
/// `chunks.start` and channel `channels.start` on), and the padded output bit map's words of these
/// positions, of which the channels' 32-bit halves are written. A part has all the channels, or a
/// whole number of 32-channel halves of a single chunk. Each view holds only what the part touches:
/// the threads splitting an image write the rest meanwhile.
pub(crate) struct ConvIo<'a> {
    pub input: Rows<'a>,
    pub residual: Option<&'a [f32]>,
    pub float: Option<&'a mut [f32]>,
    pub bits: Option<kernel::Bits<'a>>,
    /// The second plane's part, for 2-bit maps.
    pub bits_lo: Option<kernel::Bits<'a>>,
    pub chunks: std::ops::Range<usize>,
    pub channels: std::ops::Range<usize>,
    pub pad: usize,
}

/// Whole rows of a padded bit map, from padded index `first` on: the words of its planes (`lo`,
/// the 2-bit maps' second plane, the same rows).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub hi: &'a [u64],
    pub lo: Option<&'a [u64]>,
    pub first: usize,
}

/// A map's shape: channels, height, width.
type Shape = (usize, usize, usize);

fn pitch(h: usize, w: usize) -> usize {
    (h * w).div_ceil(CHUNK) * CHUNK
}

/// A conv's padding correction, blocked like the float maps but each distinct chunk kept once: it is
/// non-zero only next to the map's border, so the chunks away from the top and bottom rows hold the
/// same values, and the whole maps would be most of a ResNet-20 image's working set (688 of ~1000
/// KB, more than a core's L2 on Zen 5).
pub(crate) struct Correction {
    /// The distinct chunks' values, `(o, CHUNK)` each.
    blocks: Vec<f32>,
    /// Per chunk of positions, its block.
    of_chunk: Vec<usize>,
    o: usize,
}

impl Correction {
    /// From the blocked map `laid`; chunks are the same when their values are, bit for bit.
    fn new(laid: &[f32], o: usize) -> Correction {
        let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut blocks = Vec::new();
        let of_chunk = laid
            .chunks_exact(o * CHUNK)
            .map(|chunk| {
                let key: Vec<u32> = chunk.iter().map(|v| v.to_bits()).collect();
                *seen.entry(key).or_insert_with(|| {
                    blocks.extend_from_slice(chunk);
                    blocks.len() / (o * CHUNK) - 1
                })
            })
            .collect();
        Correction { blocks, of_chunk, o }
    }

    /// Channel `oc`'s values at the positions of `chunk`.
    pub(crate) fn run(&self, chunk: usize, oc: usize) -> &[f32] {
        &self.blocks[(self.of_chunk[chunk] * self.o + oc) * CHUNK..][..CHUNK]
    }
}

/// The buffers a net's steps name, as the maps flow through the steps, laid out as slots: one per
/// (buffer, shape of the map it holds).
struct Slots {
    of: HashMap<(usize, Shape), usize>,
    /// Per buffer, the slot holding its latest map (what a step reading it reads), once written.
    now: Vec<Option<usize>>,
    /// Per slot, its maps' shape and its length.
    shapes: Vec<Shape>,
    sizes: Vec<usize>,
}

impl Slots {
    /// Buffer 0 the input, of shape `input` and length `size`, in slot 0.
    fn new(input: Shape, size: usize) -> Slots {
        Slots {
            of: HashMap::from([((0, input), 0)]),
            now: vec![Some(0)],
            shapes: vec![input],
            sizes: vec![size],
        }
    }

    /// The slot and shape of buffer `id`'s latest map (`what` buffer, read by step `at`).
    fn read(&self, id: usize, what: &str, at: usize) -> Result<(usize, Shape), String> {
        self.now
            .get(id)
            .copied()
            .flatten()
            .map(|slot| (slot, self.shapes[slot]))
            .ok_or_else(|| format!("step {at}: {what} buffer {id} is read before it is written"))
    }

    /// Buffer `id` now holds a map of `shape`: its slot, made (of length `size`) on first use.
    fn write(&mut self, id: usize, shape: Shape, size: usize) -> Result<usize, String> {
        if id == 0 {
            return Err("buffer 0 is the input and may not be written".into());
        }
        if id > 1024 {
            return Err(format!("buffer {id}: at most 1024 buffers"));
        }
        if self.now.len() <= id {
            self.now.resize(id + 1, None);
        }
        let next = self.sizes.len();
        let slot = *self.of.entry((id, shape)).or_insert(next);
        if slot == next {
            self.shapes.push(shape);
            self.sizes.push(size);
        }
        self.now[id] = Some(slot);
        Ok(slot)
    }
}

/// Most bytes of one thread's buffers: a bound checked before anything is allocated, so a net of
/// absurd sizes is an error rather than an aborted process.
const MAX_BUFFER_BYTES: usize = 1 << 33;

/// Where value (position p, channel ch) of a `channels`-channel float map lies: maps are blocked,
/// [`CHUNK`] positions of channel 0, then of channel 1, …, then the next chunk of positions.
#[inline(always)]
fn blocked(p: usize, ch: usize, channels: usize) -> usize {
    ((p / CHUNK) * channels + ch) * CHUNK + p % CHUNK
}

pub struct BinaryNet {
    pad: usize,
    act: Act,
    /// The blocks' input (buffer 0), and the stem that makes it from the call's images, if any.
    input: Shape,
    stem: Option<Stem>,
    head: Option<Head>,
    output: usize,
    out_shape: Shape,
    convs: Vec<Conv>,
    steps: Vec<Step>,
    /// Per step, the shape of a shortcut's source.
    sources: Vec<Shape>,
    float_sizes: Vec<usize>,
    /// Per bit-map slot (the steps' bit buffers are slots: one per buffer number and shape, so
    /// each slot's border stays 0 and is never written), its size.
    bits_sizes: Vec<usize>,
    /// Buffers of earlier calls.
    spare: Mutex<Vec<run::Buffers>>,
    /// What two threads splitting an image wait for before each stage, made on the first such call.
    waits: OnceLock<Vec<run::Need>>,
}

impl BinaryNet {
    /// Check and prepare a net for `input` = (c, h, w) images; every conv pads by `pad`, and every
    /// map goes through `act`; the result is float buffer `output`.
    pub fn new(
        input: Shape,
        pad: usize,
        act: Act,
        convs: &[ConvSpec],
        steps: &[Step],
        output: usize,
    ) -> Result<Self, String> {
        let (c0, h0, w0) = input;
        if c0 == 0 || c0 > 64 || h0 == 0 || w0 == 0 {
            return Err(format!(
                "input (c, h, w) = ({c0}, {h0}, {w0}): need 1 <= c <= 64 and h, w >= 1"
            ));
        }
        let mut prepared: Vec<Option<Conv>> = convs.iter().map(|_| None).collect();
        let mut sources = vec![(0, 0, 0); steps.len()];
        let too_big = || format!("a map's buffer would exceed {MAX_BUFFER_BYTES} bytes");
        let fsize = |(c, h, w): Shape| {
            h.checked_mul(w)
                .map(|p| p.div_ceil(CHUNK) * CHUNK)
                .and_then(|p| p.checked_mul(c))
                .filter(|&v| v <= MAX_BUFFER_BYTES / 4)
                .ok_or_else(too_big)
        };
        let planes = if act == Act::Dorefa2 { 2 } else { 1 };
        let bsize = |(_, h, w): Shape| {
            let padded = |v: usize| pad.checked_mul(2).and_then(|p| p.checked_add(v));
            padded(h)
                .zip(padded(w))
                .and_then(|(hp, wp)| hp.checked_mul(wp))
                .and_then(|v| v.checked_mul(planes))
                .filter(|&v| v <= MAX_BUFFER_BYTES / 8)
                .ok_or_else(too_big)
        };
        // Shapes flow through the steps: a buffer is read only after a step (or the input) wrote it.
        // Each (buffer, shape) gets a slot of its own: a buffer that holds a 32×32 map, later a
        // 16×16 one, has two, so that the threads splitting an image write the same part of a slot
        // at every image (a part of one shape's layout is another's other part: the lines would
        // move between the cores' caches at every image). The laid-out steps name slots.
        let mut floats = Slots::new(input, fsize(input)?);
        let mut bits = Slots::new(input, bsize(input)?);
        let mut laid = Vec::with_capacity(steps.len());
        for (at, step) in steps.iter().enumerate() {
            let in_step = |e: String| format!("step {at}: {e}");
            match *step {
                Step::Conv {
                    layer,
                    input,
                    residual,
                    float,
                    bits: out_bits,
                } => {
                    let spec = convs
                        .get(layer)
                        .ok_or_else(|| format!("step {at}: no conv {layer} (there are {})", convs.len()))?;
                    let (input_slot, shape) = bits.read(input, "bits", at)?;
                    let conv = prepare(spec, shape, pad, act)
                        .map_err(|e| format!("step {at} (conv {layer}): {e}"))?;
                    let out = (conv.o, conv.ho, conv.wo);
                    let residual_slot = match residual {
                        Some(r) => {
                            let (slot, got) = floats.read(r, "float", at)?;
                            if got != out {
                                return Err(format!(
                                    "step {at}: residual buffer {r} holds {got:?}, the conv makes {out:?}"
                                ));
                            }
                            Some(slot)
                        }
                        None => None,
                    };
                    if float.is_none() && out_bits.is_none() {
                        return Err(format!("step {at}: a conv must write a float or a bit buffer"));
                    }
                    if out_bits.is_some() && conv.o > 64 {
                        return Err(format!("step {at}: packed output needs O <= 64, got {}", conv.o));
                    }
                    if float.is_some() && float == residual {
                        return Err(format!(
                            "step {at}: the float output may not be the residual buffer"
                        ));
                    }
                    if out_bits == Some(input) {
                        return Err(format!("step {at}: the bit output may not be the input buffer"));
                    }
                    let float = match float {
                        Some(f) => Some(floats.write(f, out, fsize(out)?).map_err(in_step)?),
                        None => None,
                    };
                    let out_bits = match out_bits {
                        Some(b) => Some(bits.write(b, out, bsize(out)?).map_err(in_step)?),
                        None => None,
                    };
                    if let Some(p) = &prepared[layer] {
                        if (p.c, p.h, p.w) != shape {
                            return Err(format!("step {at}: conv {layer} is used on inputs of two shapes"));
                        }
                    }
                    prepared[layer] = Some(conv);
                    laid.push(Step::Conv {
                        layer,
                        input: input_slot,
                        residual: residual_slot,
                        float,
                        bits: out_bits,
                    });
                }
                Step::Shortcut {
                    src,
                    dst,
                    stride,
                    channels,
                } => {
                    let (src_slot, (c, h, w)) = floats.read(src, "float", at)?;
                    sources[at] = (c, h, w);
                    if stride == 0 || channels < c || channels > 4096 {
                        return Err(format!(
                            "step {at}: a shortcut needs stride >= 1 and channels in [{c}, 4096], got {stride} and {channels}"
                        ));
                    }
                    if src == dst {
                        return Err(format!("step {at}: a shortcut may not write its source"));
                    }
                    let out = (channels, h.div_ceil(stride), w.div_ceil(stride));
                    laid.push(Step::Shortcut {
                        src: src_slot,
                        dst: floats.write(dst, out, fsize(out)?).map_err(in_step)?,
                        stride,
                        channels,
                    });
                }
            }
        }
        let (output, out_shape) = floats
            .read(output, "float", steps.len())
            .map_err(|_| format!("output buffer {output} is never written"))?;
        let convs: Vec<Conv> = prepared
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.ok_or_else(|| format!("conv {i} is used by no step")))
            .collect::<Result<_, _>>()?;
        let (float_sizes, bits_sizes) = (floats.sizes, bits.sizes);
        let total = float_sizes.iter().sum::<usize>() * 4 + bits_sizes.iter().sum::<usize>() * 8;
        if total > MAX_BUFFER_BYTES {
            return Err(format!(
                "the net's buffers would take {total} bytes per thread; at most {MAX_BUFFER_BYTES}"
            ));
        }
        Ok(BinaryNet {
            pad,
            act,
            input,
            stem: None,
            head: None,
            output,
            out_shape,
            convs,
            steps: laid,
            sources,
            float_sizes,
            bits_sizes,
            spare: Mutex::new(Vec::new()),
            waits: OnceLock::new(),
        })
    }

    /// Start the net with a stem: the call's images are then `(spec.c, h, w)`, and the stem makes
    /// the blocks' input from them.
    pub fn with_stem(mut self, spec: &StemSpec) -> Result<Self, String> {
        self.stem = Some(Stem::new(spec, self.input)?);
        Ok(self)
    }

    /// End the net with a head: the result of an image is then its `classes` logits.
    pub fn with_head(mut self, spec: &HeadSpec) -> Result<Self, String> {
        let mut head = Head::new(spec, self.out_shape.0)?;
        // the channel means, which the threads of an image pool in parts, in a float slot of their own
        head.means = self.float_sizes.len();
        self.float_sizes.push(self.out_shape.0);
        self.head = Some(head);
        Ok(self)
    }

    /// The shape of an image the call takes.
    pub fn input_shape(&self) -> Shape {
        match &self.stem {
            Some(s) => (s.c, s.h, s.w),
            None => self.input,
        }
    }

    /// The shape of an image's result: the output buffer's, or (classes, 1, 1) with a head.
    pub fn output_shape(&self) -> Shape {
        match &self.head {
            Some(h) => (h.classes, 1, 1),
            None => self.out_shape,
        }
    }
}

/// The conv of `spec` on inputs of `shape`, checked and laid out for the kernel.
fn prepare(spec: &ConvSpec, (c, h, w): Shape, pad: usize, act: Act) -> Result<Conv, String> {
    let ConvSpec {
        weights,
        o,
        kh,
        kw,
        stride,
        ..
    } = *spec;
    if spec.c != c {
        return Err(format!(
            "the conv reads c = {} channels, its input buffer has {c}",
            spec.c
        ));
    }
    if o == 0 || kh * kw > MAX_TAPS {
        return Err(format!(
            "need O >= 1 and kh·kw <= {MAX_TAPS}, got O = {o}, {kh}x{kw}"
        ));
    }
    let (ho, wo) = Window {
        kh,
        kw,
        stride,
        padding: pad,
    }
    .output(h, w)?;
    let k = kh * kw * c;
    let wk = words_for(k);
    if weights.len() != o * wk {
        return Err(format!(
            "weights must hold O·ceil(k/64) = {} words, got {}",
            o * wk,
            weights.len()
        ));
    }
    if let Some(r) = crate::bits::first_bad_padding(weights, k) {
        return Err(format!(
            "weights has non-zero padding bits past k = {k} (first in row {r})"
        ));
    }
    if spec.scale.len() != o || spec.shift.len() != o {
        return Err(format!("scale and shift must hold O = {o} values"));
    }
    if spec.scale.iter().chain(spec.shift).any(|v| !v.is_finite()) {
        return Err("scale and shift must be finite".into());
    }
    let p = pitch(ho, wo);
    // each tap's c bits, right-aligned in a word
    let bit = |row: &[u64], b: usize| (row[b / 64] >> (b % 64)) & 1;
    let mut tapped = vec![0u64; o * kh * kw];
    for (oc, row) in weights.chunks_exact(wk).enumerate() {
        for t in 0..kh * kw {
            tapped[oc * kh * kw + t] = (0..c).fold(0, |acc, ch| acc | (bit(row, t * c + ch) << ch));
        }
    }
    let correction = match spec.correction {
        None => None,
        Some(cl) if cl.len() == ho * wo * o && cl.iter().all(|v| v.is_finite()) => {
            let mut laid = vec![0.0; o * p];
            for (q, px) in cl.chunks_exact(o).enumerate() {
                for (oc, &v) in px.iter().enumerate() {
                    laid[blocked(q, oc, o)] = v;
                }
            }
            Some(Correction::new(&laid, o))
        }
        Some(_) => {
            return Err(format!(
                "correction must hold Ho·Wo·O = {} finite values",
                ho * wo * o
            ))
        }
    };
    let sparse = spec.csr.map(|s| Sparse::new(s, o, k, c)).transpose()?;
    let mut conv = Conv {
        c,
        o,
        kh,
        kw,
        stride,
        k,
        h,
        w,
        ho,
        wo,
        weights: tapped,
        scale: spec.scale.to_vec(),
        shift: spec.shift.to_vec(),
        correction,
        sparse,
        inside: Vec::new(),
        act,
    };
    if conv.sparse.is_some() {
        conv.inside = sparse::inside_masks(&conv, pad);
    }
    Ok(conv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correction_keeps_each_distinct_chunk_once_and_gives_back_every_value() {
        let o = 3;
        let chunk = |seed: f32| -> Vec<f32> { (0..o * CHUNK).map(|i| seed + i as f32 / 7.0).collect() };
        let zeros = vec![0.0; o * CHUNK];
        let mut negative_zero = zeros.clone();
        negative_zero[5] = -0.0; // equal to 0.0 as a float, not as bits: kept apart
        let chunks = [
            chunk(1.0),
            chunk(2.0),
            chunk(2.0),
            zeros,
            negative_zero,
            chunk(1.0),
        ];
        let laid: Vec<f32> = chunks.concat();
        let corr = Correction::new(&laid, o);
        assert_eq!(corr.blocks.len(), 4 * o * CHUNK);
        assert_eq!(corr.of_chunk, [0, 1, 1, 2, 3, 0]);
        for (q, values) in chunks.iter().enumerate() {
            for oc in 0..o {
                let want = &values[oc * CHUNK..(oc + 1) * CHUNK];
                assert!(corr
                    .run(q, oc)
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}
