//! `BinaryNet`: a chain of 1-bit convs (ResNet blocks with bits between layers) prepared once and run
//! image by image in one call, so no float map crosses to Python between layers and nothing is
//! re-laid out or allocated per layer.
//!
//! A net is a list of steps over numbered buffers. Float buffers are planar, `(channels, pitch)`
//! with `pitch` = Ho·Wo rounded up to the kernel's chunk; bit buffers hold one u64 word per pixel
//! (the channels' signs, C ≤ 64) with a zero border of `pad` pixels, the padding every conv reads.
//! Buffer 0 of each kind is the input: the call's float image and its signs. The steps:
//! * `Conv`: the binary conv `layer` on a bit buffer, plus its epilogue (folded BatchNorm, padding
//!   correction, sparse term, residual, hardtanh), writing a float buffer, a bit buffer or both;
//! * `Shortcut`: ResNet's option-A shortcut (every stride-th pixel, new channels zero on both
//!   sides) from one float buffer to another.
//!
//! Each conv computes exactly what `bconv_1bit` (crate::bconv) computes for it, bit for bit
//! ([`kernel`] says how). Images are shared out to the threads; each thread keeps its buffers, and
//! the net keeps them between calls.

pub(crate) mod kernel;
mod sparse;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::bconv::Csr;
use crate::bits::words_for;
use crate::conv::Window;
use crate::isa::Isa;
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
    pub pitch: usize,
    /// `(o, kh·kw)` words: each tap's c weight bits.
    pub weights: Vec<u64>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    /// `(o, pitch)`, planar.
    pub correction: Option<Vec<f32>>,
    pub sparse: Option<Sparse>,
}

/// What one conv of one image reads and writes (planar floats, padded bit maps).
pub(crate) struct ConvIo<'a> {
    pub input: &'a [u64],
    pub residual: Option<&'a [f32]>,
    pub float: Option<&'a mut [f32]>,
    pub bits: Option<&'a mut [u64]>,
    pub pad: usize,
}

/// A map's shape: channels, height, width.
type Shape = (usize, usize, usize);

fn pitch(h: usize, w: usize) -> usize {
    (h * w).div_ceil(CHUNK) * CHUNK
}

/// The buffers one thread works in.
struct Buffers {
    floats: Vec<Vec<f32>>,
    bits: Vec<Vec<u64>>,
}

pub struct BinaryNet {
    pad: usize,
    input: Shape,
    output: usize,
    out_shape: Shape,
    convs: Vec<Conv>,
    steps: Vec<Step>,
    /// Per step, the shape of a shortcut's source.
    sources: Vec<Shape>,
    float_sizes: Vec<usize>,
    bits_sizes: Vec<usize>,
    /// Buffers of earlier calls, one set per thread that ran.
    spare: Mutex<Vec<Buffers>>,
}

impl BinaryNet {
    /// Check and prepare a net for `input` = (c, h, w) images; every conv pads by `pad`; the result
    /// is float buffer `output`.
    pub fn new(
        input: Shape,
        pad: usize,
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
        // Shapes flow through the steps: a buffer is read only after a step (or the input) wrote it.
        let (mut floats, mut bits): (Vec<Option<Shape>>, Vec<Option<Shape>>) =
            (vec![Some(input)], vec![Some(input)]);
        let (mut float_sizes, mut bits_sizes) = (vec![0usize], vec![0usize]);
        let mut prepared: Vec<Option<Conv>> = convs.iter().map(|_| None).collect();
        let mut sources = vec![(0, 0, 0); steps.len()];
        let read = |bufs: &[Option<Shape>], id: usize, what: &str, at: usize| -> Result<Shape, String> {
            bufs.get(id)
                .copied()
                .flatten()
                .ok_or_else(|| format!("step {at}: {what} buffer {id} is read before it is written"))
        };
        fn write(
            bufs: &mut Vec<Option<Shape>>,
            sizes: &mut Vec<usize>,
            id: usize,
            shape: Shape,
            size: usize,
        ) -> Result<(), String> {
            if id == 0 {
                return Err("buffer 0 is the input and may not be written".into());
            }
            if id > 1024 {
                return Err(format!("buffer {id}: at most 1024 buffers"));
            }
            if bufs.len() <= id {
                bufs.resize(id + 1, None);
                sizes.resize(id + 1, 0);
            }
            bufs[id] = Some(shape);
            sizes[id] = sizes[id].max(size);
            Ok(())
        }
        let fsize = |(c, h, w): Shape| {
            c.checked_mul(pitch(h, w))
                .ok_or("a float map's size overflows".to_string())
        };
        let bsize = |(_, h, w): Shape| {
            (h + 2 * pad)
                .checked_mul(w + 2 * pad)
                .ok_or("a bit map's size overflows".to_string())
        };
        float_sizes[0] = fsize(input)?;
        bits_sizes[0] = bsize(input)?;
        for (at, step) in steps.iter().enumerate() {
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
                    let shape = read(&bits, input, "bits", at)?;
                    let conv =
                        prepare(spec, shape, pad).map_err(|e| format!("step {at} (conv {layer}): {e}"))?;
                    let out = (conv.o, conv.ho, conv.wo);
                    if let Some(r) = residual {
                        let got = read(&floats, r, "float", at)?;
                        if got != out {
                            return Err(format!(
                                "step {at}: residual buffer {r} holds {got:?}, the conv makes {out:?}"
                            ));
                        }
                    }
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
                    if let Some(f) = float {
                        write(&mut floats, &mut float_sizes, f, out, fsize(out)?)
                            .map_err(|e| format!("step {at}: {e}"))?;
                    }
                    if let Some(b) = out_bits {
                        write(&mut bits, &mut bits_sizes, b, out, bsize(out)?)
                            .map_err(|e| format!("step {at}: {e}"))?;
                    }
                    if let Some(p) = &prepared[layer] {
                        if (p.c, p.h, p.w) != shape {
                            return Err(format!("step {at}: conv {layer} is used on inputs of two shapes"));
                        }
                    }
                    prepared[layer] = Some(conv);
                }
                Step::Shortcut {
                    src,
                    dst,
                    stride,
                    channels,
                } => {
                    let (c, h, w) = read(&floats, src, "float", at)?;
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
                    write(&mut floats, &mut float_sizes, dst, out, fsize(out)?)
                        .map_err(|e| format!("step {at}: {e}"))?;
                }
            }
        }
        let out_shape = read(&floats, output, "float", steps.len())
            .map_err(|_| format!("output buffer {output} is never written"))?;
        let convs = prepared
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.ok_or_else(|| format!("conv {i} is used by no step")))
            .collect::<Result<_, _>>()?;
        Ok(BinaryNet {
            pad,
            input,
            output,
            out_shape,
            convs,
            steps: steps.to_vec(),
            sources,
            float_sizes,
            bits_sizes,
            spare: Mutex::new(Vec::new()),
        })
    }

    pub fn input_shape(&self) -> Shape {
        self.input
    }

    pub fn output_shape(&self) -> Shape {
        self.out_shape
    }

    /// Run `n` images `x` `(n, c, h, w)` into `out` `(n, c', h', w')` with the kernels of `isa` on up
    /// to `threads` threads (images are the unit of work). Errors on a NaN input or a NaN y whose
    /// sign a later conv would read.
    pub fn run(&self, x: &[f32], n: usize, out: &mut [f32], isa: Isa, threads: usize) -> Result<(), String> {
        let (c, h, w) = self.input;
        let (oc, oh, ow) = self.out_shape;
        let (per_in, per_out) = (c * h * w, oc * oh * ow);
        if Some(x.len()) != n.checked_mul(per_in) || Some(out.len()) != n.checked_mul(per_out) {
            return Err(format!(
                "x must hold n·{c}·{h}·{w} and out n·{oc}·{oh}·{ow} values for n = {n}"
            ));
        }
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = x.iter().position(|v| v.is_nan()) {
            return Err(format!("x is NaN at flat index {i}; its sign is undefined"));
        }
        let items: Vec<(usize, &mut [f32])> = out.chunks_mut(per_out).enumerate().collect();
        let first_nan = AtomicUsize::new(usize::MAX);
        let lease = || Lease {
            buffers: self
                .spare
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_else(|| self.buffers()),
            home: &self.spare,
        };
        crate::threads::run_claimed_with(threads, items, lease, |b, (i, out)| {
            if let Some(step) = self.image(isa, &mut b.buffers, &x[i * per_in..(i + 1) * per_in], out) {
                first_nan.fetch_min(i * self.steps.len() + step, Ordering::Relaxed);
            }
            true
        })?;
        match first_nan.into_inner() {
            usize::MAX => Ok(()),
            at => Err(format!(
                "image {}: step {} made a NaN y whose sign is undefined (scale, shift, correction and csr data must be finite)",
                at / self.steps.len(),
                at % self.steps.len()
            )),
        }
    }

    fn buffers(&self) -> Buffers {
        Buffers {
            floats: self.float_sizes.iter().map(|&s| vec![0.0; s]).collect(),
            bits: self.bits_sizes.iter().map(|&s| vec![0; s]).collect(),
        }
    }

    /// One image through every step; the step that made a NaN y, if one did.
    fn image(&self, isa: Isa, b: &mut Buffers, x: &[f32], out: &mut [f32]) -> Option<usize> {
        let (c, h, w) = self.input;
        let (p, pad) = (h * w, self.pad);
        for ch in 0..c {
            b.floats[0][ch * pitch(h, w)..][..p].copy_from_slice(&x[ch * p..(ch + 1) * p]);
        }
        kernel::pack_input(isa, x, self.input, &mut b.bits[0], pad);
        for (at, step) in self.steps.iter().enumerate() {
            match *step {
                Step::Conv {
                    layer,
                    input,
                    residual,
                    float,
                    bits,
                } => {
                    let conv = &self.convs[layer];
                    let mut fout = float.map(|f| std::mem::take(&mut b.floats[f]));
                    let mut bout = bits.map(|i| std::mem::take(&mut b.bits[i]));
                    if let Some(bo) = bout.as_mut() {
                        clear_border(bo, conv.ho, conv.wo, pad);
                    }
                    let io = ConvIo {
                        input: &b.bits[input],
                        residual: residual.map(|r| &b.floats[r][..]),
                        float: fout.as_deref_mut(),
                        bits: bout.as_deref_mut(),
                        pad,
                    };
                    let nan = kernel::conv(isa, conv, io);
                    if let (Some(f), Some(v)) = (float, fout) {
                        b.floats[f] = v;
                    }
                    if let (Some(i), Some(v)) = (bits, bout) {
                        b.bits[i] = v;
                    }
                    if nan {
                        return Some(at);
                    }
                }
                Step::Shortcut {
                    src,
                    dst,
                    stride,
                    channels,
                } => {
                    let from = self.sources[at];
                    let (ho, wo) = (from.1.div_ceil(stride), from.2.div_ceil(stride));
                    let mut d = std::mem::take(&mut b.floats[dst]);
                    shortcut(&b.floats[src], from, &mut d, (channels, ho, wo), stride);
                    b.floats[dst] = d;
                }
            }
        }
        let (oc, oh, ow) = self.out_shape;
        let src = &b.floats[self.output];
        for ch in 0..oc {
            out[ch * oh * ow..(ch + 1) * oh * ow].copy_from_slice(&src[ch * pitch(oh, ow)..][..oh * ow]);
        }
        None
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

/// Zero the `pad`-pixel border of a padded `(ho + 2·pad, wo + 2·pad)` bit map.
fn clear_border(bits: &mut [u64], ho: usize, wo: usize, pad: usize) {
    let wp = wo + 2 * pad;
    bits[..pad * wp].fill(0);
    bits[(ho + pad) * wp..(ho + 2 * pad) * wp].fill(0);
    for y in pad..ho + pad {
        bits[y * wp..y * wp + pad].fill(0);
        bits[(y + 1) * wp - pad..(y + 1) * wp].fill(0);
    }
}

/// ResNet's option-A shortcut on planar maps: every `stride`-th pixel, the new channels zero on
/// both sides (half before, the rest after), positions past ho·wo zero.
fn shortcut(src: &[f32], (c, h, w): Shape, dst: &mut [f32], (oc, ho, wo): Shape, stride: usize) {
    let (sp, dp) = (pitch(h, w), pitch(ho, wo));
    let before = (oc - c) / 2;
    dst[..oc * dp].fill(0.0);
    for ch in 0..c {
        let (s, d) = (&src[ch * sp..], &mut dst[(ch + before) * dp..]);
        for y in 0..ho {
            for x in 0..wo {
                d[y * wo + x] = s[y * stride * w + x * stride];
            }
        }
    }
}

/// The conv of `spec` on inputs of `shape`, checked and laid out for the kernel.
fn prepare(spec: &ConvSpec, (c, h, w): Shape, pad: usize) -> Result<Conv, String> {
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
            let mut planar = vec![0.0; o * p];
            for (q, px) in cl.chunks_exact(o).enumerate() {
                for (oc, &v) in px.iter().enumerate() {
                    planar[oc * p + q] = v;
                }
            }
            Some(planar)
        }
        Some(_) => {
            return Err(format!(
                "correction must hold Ho·Wo·O = {} finite values",
                ho * wo * o
            ))
        }
    };
    let sparse = spec.csr.map(|s| Sparse::new(s, o, k, c)).transpose()?;
    Ok(Conv {
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
        pitch: p,
        weights: tapped,
        scale: spec.scale.to_vec(),
        shift: spec.shift.to_vec(),
        correction,
        sparse,
    })
}
