//! Convolution pieces for packed inference: im2col on packed bits, and the sparse residual S·X
//! computed from the activation map instead of from its im2col matrix.
//!
//! Both mirror `apb_ref.kernels.reference` (`im2col_bits`, `csr_conv2d`), which documents the
//! contracts. They move little data and do little arithmetic per byte, so they are portable code
//! (the compiler vectorizes the stride-1 row updates) without ISA paths: compiled for AVX2 as well,
//! csr_conv2d measured no faster. Threads split the work.

use crate::bits::{first_bad_padding, words_for, WORD_BITS};

/// A convolution's window geometry over an `h × w` input.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// `(ho, wo)`, or an error if the kernel does not fit or an argument is out of range.
    pub fn output(&self, h: usize, w: usize) -> Result<(usize, usize), String> {
        if self.kh == 0 || self.kw == 0 || self.stride == 0 {
            return Err(format!(
                "kh, kw and stride must be >= 1, got {}, {}, {}",
                self.kh, self.kw, self.stride
            ));
        }
        let (Some(hp), Some(wp)) = (self.padded(h), self.padded(w)) else {
            return Err(format!(
                "padding {} overflows the padded input size",
                self.padding
            ));
        };
        if hp < self.kh || wp < self.kw {
            return Err(format!(
                "a {}x{} kernel does not fit a {h}x{w} input with padding {}",
                self.kh, self.kw, self.padding
            ));
        }
        Ok(((hp - self.kh) / self.stride + 1, (wp - self.kw) / self.stride + 1))
    }

    /// `size + 2·padding`, or None if that overflows.
    fn padded(&self, size: usize) -> Option<usize> {
        self.padding.checked_mul(2).and_then(|p| p.checked_add(size))
    }

    /// The input coordinate of output position `o` at tap `t`, if inside `0..size` (else padding).
    #[inline]
    pub(crate) fn source(&self, o: usize, t: usize, size: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.padding)
            .filter(|&s| s < size)
    }
}

/// OR the `c` bits of `src` (a packed pixel, padding bits zero) into `dst` starting at bit `at`
/// (im2col_bits, and bconv's window gather).
#[inline]
pub(crate) fn append_bits(dst: &mut [u64], at: usize, src: &[u64]) {
    for (q, &word) in src.iter().enumerate() {
        let bit = at + q * WORD_BITS;
        let (i, shift) = (bit / WORD_BITS, bit % WORD_BITS);
        if let Some(d) = dst.get_mut(i) {
            *d |= word << shift;
        }
        if shift != 0 {
            // The high bits that did not fit; zero unless the pixel's bits cross a word boundary
            // (then word i + 1 exists, since those bits lie below K).
            if let Some(d) = dst.get_mut(i + 1) {
                *d |= word >> (WORD_BITS - shift);
            }
        }
    }
}

/// im2col on packed bits: `bits` is `(n, h, w, words_for(c))` (each pixel's channel signs packed),
/// `out` `(n·ho·wo, words_for(kh·kw·c))` with each row's bits ordered (i, j, channel); taps on the
/// padding stay 0. Returns an error, never panics, on inconsistent sizes or non-zero padding bits.
#[allow(clippy::too_many_arguments)] // the layer's own parameters
pub fn im2col_bits(
    bits: &[u64],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    win: Window,
    threads: usize,
    out: &mut [u64],
) -> Result<(), String> {
    let wc = words_for(c);
    if c == 0 {
        return Err("c must be >= 1".into());
    }
    let pixels = n.checked_mul(h).and_then(|p| p.checked_mul(w));
    if pixels.and_then(|p| p.checked_mul(wc)) != Some(bits.len()) {
        return Err(format!(
            "bits must hold n·h·w·ceil(c/64) = {n}·{h}·{w}·{wc} words, got {}",
            bits.len()
        ));
    }
    if let Some(p) = first_bad_padding(bits, c) {
        return Err(format!(
            "bits has non-zero padding bits past c = {c} (first at pixel {p}); pack with pack_bits"
        ));
    }
    let (ho, wo) = win.output(h, w)?;
    let k = win
        .kh
        .checked_mul(win.kw)
        .and_then(|t| t.checked_mul(c))
        .ok_or("kh·kw·c overflows")?;
    let wk = words_for(k);
    let rows = n.checked_mul(ho).and_then(|r| r.checked_mul(wo));
    if rows.and_then(|r| r.checked_mul(wk)) != Some(out.len()) {
        return Err(format!(
            "out must hold n·ho·wo·ceil(k/64) = {n}·{ho}·{wo}·{wk} words, got {}",
            out.len()
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    // Items of whole output image rows (wo pixels each), about 32 KiB of output apiece: one row of a
    // small map is too little work to be worth claiming from the shared queue.
    let row_words = wo * wk;
    let rows_per_item = (4096 / row_words).max(1);
    let gather = RowGather::new(bits, h, w, c, win, (ho, wo));
    let items: Vec<(usize, &mut [u64])> = out.chunks_mut(rows_per_item * row_words).enumerate().collect();
    crate::threads::run_claimed(threads, items, |(item, block)| {
        for (t, row_out) in block.chunks_exact_mut(row_words).enumerate() {
            gather.fill(item * rows_per_item + t, row_out);
        }
        true
    })?;
    Ok(())
}

/// The lowered rows of a packed map, one output image row (wo positions) at a time: what
/// `im2col_bits` writes, and what `bconv_1bit` gathers per task. Sizes are the caller's, checked.
pub(crate) struct RowGather<'a> {
    bits: &'a [u64],
    h: usize,
    w: usize,
    c: usize,
    wc: usize,
    wk: usize,
    ho: usize,
    win: Window,
    /// Each tap column's span of output columns that read inside the map (the rest read padding, 0).
    spans: Vec<Option<Span>>,
    /// c divides 64: then wc = 1 and every tap is a single shifted word.
    one_word_taps: bool,
}

impl<'a> RowGather<'a> {
    pub(crate) fn new(
        bits: &'a [u64],
        h: usize,
        w: usize,
        c: usize,
        win: Window,
        (ho, wo): (usize, usize),
    ) -> Self {
        RowGather {
            bits,
            h,
            w,
            c,
            wc: words_for(c),
            wk: words_for(win.kh * win.kw * c),
            ho,
            win,
            spans: (0..win.kw).map(|j| Span::new(j, w, wo, &win)).collect(),
            one_word_taps: WORD_BITS.is_multiple_of(c),
        }
    }

    /// The `wo` lowered rows (`wk` words each, bits in (i, j, channel) order) of output row
    /// `r = image·ho + oy` into `row_out`, taps on the padding 0.
    pub(crate) fn fill(&self, r: usize, row_out: &mut [u64]) {
        let (win, wc, wk, c) = (self.win, self.wc, self.wk, self.c);
        let (img, oy) = (r / self.ho, r % self.ho);
        row_out.fill(0);
        // Tap by tap over the whole output row: one input row, one bit offset, a run of pixels.
        for i in 0..win.kh {
            let Some(y) = win.source(oy, i, self.h) else {
                continue;
            };
            let row_len = self.w * wc;
            let Some(in_row) = self
                .bits
                .get((img * self.h + y) * row_len..(img * self.h + y + 1) * row_len)
            else {
                continue;
            };
            for (j, span) in self.spans.iter().enumerate() {
                let Some(span) = span else { continue };
                let at = (i * win.kw + j) * c;
                let Some(dst_run) = row_out.get_mut(span.lo * wk..span.hi * wk) else {
                    continue;
                };
                let dsts = dst_run.chunks_exact_mut(wk);
                // Span: the pixel of output column lo + t is span.src + t·stride < w.
                let pixel = |t: usize| (span.src + t * win.stride) * wc;
                if self.one_word_taps {
                    // c divides 64 (so wc = 1): the tap's bits never cross a word boundary.
                    let (word, shift) = (at / WORD_BITS, at % WORD_BITS);
                    for (t, dst) in dsts.enumerate() {
                        dst[word] |= in_row[pixel(t)] << shift;
                    }
                } else {
                    for (t, dst) in dsts.enumerate() {
                        append_bits(dst, at, &in_row[pixel(t)..pixel(t) + wc]);
                    }
                }
            }
        }
    }
}

/// S·X for a conv: `S` CSR `(o, c·kh·kw)` with columns ordered (channel, i, j), `x` `(n, c, h, w)`
/// (taken as sign(x), ±1 with sign(0) = +1, when `signs`), `out` `(o, n·ho·wo)`. Each non-zero adds
/// its scaled window of the input (padding reads as 0) to its row. With `accumulate` S·X is added to
/// what `out` holds, else `out` is overwritten.
#[allow(clippy::too_many_arguments)] // the layer's own parameters
pub fn csr_conv2d(
    indptr: &[i64],
    indices: &[i32],
    data: &[f32],
    x: &[f32],
    shape: [usize; 4],
    win: Window,
    signs: bool,
    accumulate: bool,
    threads: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let [n, c, h, w] = shape;
    let taps = win.kh.checked_mul(win.kw).ok_or("kh·kw overflows")?;
    let k = c.checked_mul(taps).ok_or("c·kh·kw overflows")?;
    let m = crate::spmm::validate(indptr, indices, data.len(), k).map_err(|e| e.to_string())?;
    let size = n
        .checked_mul(c)
        .and_then(|s| s.checked_mul(h))
        .and_then(|s| s.checked_mul(w));
    if size != Some(x.len()) {
        return Err(format!(
            "x must hold n·c·h·w = {n}·{c}·{h}·{w} values, got {}",
            x.len()
        ));
    }
    let (ho, wo) = win.output(h, w)?;
    let p = n
        .checked_mul(ho)
        .and_then(|v| v.checked_mul(wo))
        .unwrap_or(usize::MAX);
    if p.checked_mul(m) != Some(out.len()) {
        return Err(format!(
            "out must hold o·n·ho·wo = {m}·{n}·{ho}·{wo} values, got {}",
            out.len()
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    // One image per item, all output channels: the image's planes of x are read once and its part of
    // every row of `out` (o segments of ho·wo values) stays in cache while the non-zeros add to it.
    // Row by row, each non-zero would stream a whole n·ho·wo row and its input planes through memory.
    // validate() checked indptr is non-decreasing and ends at nnz, and every column is in [0, k).
    let rows: Vec<Vec<Tap>> = indptr
        .windows(2)
        .map(|r| {
            let (s, e) = (r[0] as usize, r[1] as usize);
            let nonzeros = indices[s..e].iter().zip(&data[s..e]);
            nonzeros
                .filter_map(|(&col, &v)| Tap::new(col as usize, v, taps, &win, (h, w), (ho, wo)))
                .collect()
        })
        .collect();
    let mut segments: Vec<Vec<&mut [f32]>> = (0..n).map(|_| Vec::with_capacity(m)).collect();
    for row in out.chunks_mut(p) {
        for (img, segment) in row.chunks_mut(ho * wo).enumerate() {
            segments[img].push(segment);
        }
    }
    // Stride 1 works on zero-padded planes (`Image::add_padded`), each worker its own copy, unless
    // the padding would make them much larger than the image (then the padding is mostly zeros).
    let plane = h * w;
    let padded = match (win.padded(h), win.padded(w)) {
        (Some(hp), Some(wp)) if win.stride == 1 && plane > 0 => c
            .checked_mul(hp)
            .and_then(|l| l.checked_mul(wp))
            .filter(|&l| l <= 4usize.saturating_mul(c * plane).saturating_add(1 << 16))
            .map(|_| (hp, wp)),
        _ => None,
    };
    let image = Image {
        rows: &rows,
        win,
        h,
        w,
        ho,
        wo,
        signs,
        accumulate,
    };
    // With fewer images than about 4 items per thread (a batch of one, say), each image's rows are
    // split into groups too, so every thread still gets work.
    let groups = (4 * threads.max(1)).div_ceil(n).clamp(1, m.max(1));
    let rows_per_item = m.div_ceil(groups).max(1);
    let mut items = Vec::new();
    for (img, mut outs) in segments.into_iter().enumerate() {
        let mut row0 = 0;
        while !outs.is_empty() {
            let rest = outs.split_off(rows_per_item.min(outs.len()));
            items.push((img, row0, outs));
            row0 += rows_per_item;
            outs = rest;
        }
    }
    let scratch = || (vec![0f32; padded.map_or(0, |(hp, wp)| c * hp * wp)], Vec::new());
    crate::threads::run_claimed_with(threads, items, scratch, |scratch, (img, row0, mut outs)| {
        let x = &x[img * c * plane..][..c * plane];
        match padded {
            Some(hw) => image.add_padded(x, hw, row0, &mut outs, scratch),
            None => image.add(x, row0, &mut outs),
        }
        true
    })?;
    Ok(())
}

/// What every image of a `csr_conv2d` call shares: the placed non-zeros of each row of S and the
/// geometry.
struct Image<'a> {
    rows: &'a [Vec<Tap>],
    win: Window,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    signs: bool,
    accumulate: bool,
}

impl Image<'_> {
    /// [`Image::add`] for stride 1, through zero-padded planes: with `x` padded to `W = w + 2·padding`
    /// columns and the output computed `W` wide (its last `kw − 1` columns discarded), output `q`
    /// reads padded input `q + i·W + j` at tap (i, j), so a tap is one long axpy over the whole image
    /// instead of `ho` short ones (8 values each on an 8×8 map). `scratch` holds the padded planes
    /// (their borders stay 0; 1-bit maps are stored as sign(x)) and the wide output.
    fn add_padded(
        &self,
        x: &[f32],
        (hp, wp): (usize, usize),
        row0: usize,
        outs: &mut [&mut [f32]],
        scratch: &mut (Vec<f32>, Vec<f32>),
    ) {
        let (h, w, ho, wo, p) = (self.h, self.w, self.ho, self.wo, self.win.padding);
        let (padded, wide) = scratch;
        for (src, dst) in x.chunks_exact(h * w).zip(padded.chunks_exact_mut(hp * wp)) {
            for (row, prow) in src.chunks_exact(w).zip(dst[p * wp..].chunks_exact_mut(wp)) {
                for (d, &v) in prow[p..p + w].iter_mut().zip(row) {
                    *d = if self.signs { sign(v) } else { v };
                }
            }
        }
        let len = (ho - 1) * wp + wo; // the wide output up to its last kept value
        wide.resize(ho * wp, 0.0);
        for (taps, out) in self.rows[row0..].iter().zip(outs) {
            wide.fill(0.0);
            if self.accumulate {
                for (o, wrow) in out.chunks_exact(wo).zip(wide.chunks_exact_mut(wp)) {
                    wrow[..wo].copy_from_slice(o);
                }
            }
            for tap in taps {
                let start = tap.ch * hp * wp + tap.i * wp + tap.j;
                axpy::<false>(&mut wide[..len], tap.v, &padded[start..start + len], 1);
            }
            for (o, wrow) in out.chunks_exact_mut(wo).zip(wide.chunks_exact(wp)) {
                o.copy_from_slice(&wrow[..wo]);
            }
        }
    }

    /// Add S·X of one image, `x` its `(c, h, w)` planes, to `outs`, its `ho·wo` segments of the rows
    /// `row0 ..` of S.
    fn add(&self, x: &[f32], row0: usize, outs: &mut [&mut [f32]]) {
        let (h, w, wo, stride) = (self.h, self.w, self.wo, self.win.stride);
        for (taps, out) in self.rows[row0..].iter().zip(outs) {
            if !self.accumulate {
                out.fill(0.0);
            }
            for tap in taps {
                let (rows, cols) = (&tap.rows, &tap.cols);
                let xplane = &x[tap.ch * h * w..][..h * w];
                for (r, oy) in (rows.lo..rows.hi).enumerate() {
                    let xrow = &xplane[(rows.src + r * stride) * w + cols.src..][..w - cols.src];
                    let segment = &mut out[oy * wo + cols.lo..oy * wo + cols.hi];
                    if self.signs {
                        axpy::<true>(segment, tap.v, xrow, stride);
                    } else {
                        axpy::<false>(segment, tap.v, xrow, stride);
                    }
                }
            }
        }
    }
}

/// The output positions `lo..hi` along one axis whose input position at a tap lies inside the map
/// (the others read padding), and `src`, the input position of `lo`; the next ones follow at the
/// stride.
struct Span {
    lo: usize,
    hi: usize,
    src: usize,
}

impl Span {
    /// Along an axis with `size` input and `out` output positions, at tap offset `t`; None if every
    /// output position reads padding.
    fn new(t: usize, size: usize, out: usize, win: &Window) -> Option<Span> {
        let lo = win.padding.saturating_sub(t).div_ceil(win.stride);
        let hi = (size + win.padding)
            .saturating_sub(t)
            .div_ceil(win.stride)
            .min(out);
        // lo·stride ≥ padding − t, so src is inside 0..size (and so is every position up to hi).
        (lo < hi).then(|| Span {
            lo,
            hi,
            src: lo * win.stride + t - win.padding,
        })
    }
}

/// One non-zero of a row of S, placed: its value, its input channel, and the spans of output rows and
/// columns that read inside the map at its kernel position.
struct Tap {
    v: f32,
    ch: usize,
    i: usize,
    j: usize,
    rows: Span,
    cols: Span,
}

impl Tap {
    /// The tap of column `col` (order (channel, i, j)) with value `v`; None if it only ever meets
    /// padding.
    fn new(
        col: usize,
        v: f32,
        taps: usize,
        win: &Window,
        in_hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> Option<Tap> {
        let (ch, i, j) = (col / taps, (col % taps) / win.kw, col % win.kw);
        let rows = Span::new(i, in_hw.0, out_hw.0, win)?;
        let cols = Span::new(j, in_hw.1, out_hw.1, win)?;
        Some(Tap {
            v,
            ch,
            i,
            j,
            rows,
            cols,
        })
    }
}

/// `out[t] += v·x[t·stride]` over `out`'s length (`x` holds at least `(len − 1)·stride + 1` values),
/// with x read as sign(x) (±1, sign(0) = +1) when `SIGNS`. Generic so that each variant is a
/// branch-free loop; stride 1 gets the plain-slice loop the compiler vectorizes, other strides plain
/// indexing (`step_by` iterators cost several times more per value).
#[inline]
pub(crate) fn axpy<const SIGNS: bool>(out: &mut [f32], v: f32, x: &[f32], stride: usize) {
    let term = |xv: f32| v * if SIGNS { sign(xv) } else { xv };
    if stride == 1 {
        for (o, &xv) in out.iter_mut().zip(x) {
            *o += term(xv);
        }
    } else {
        for (t, o) in out.iter_mut().enumerate() {
            *o += term(x[t * stride]);
        }
    }
}

/// ±1 with sign(0) = sign(−0.0) = +1, the 1-bit activation (bit convention of `apb_ref.kernels`).
#[inline]
fn sign(x: f32) -> f32 {
    if x < 0.0 {
        -1.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Plain per-element oracles, straight from the definitions.
    fn im2col_bits_oracle(bits: &[u64], n: usize, h: usize, w: usize, c: usize, win: Window) -> Vec<u64> {
        let (ho, wo) = win.output(h, w).unwrap();
        let (wc, k) = (words_for(c), win.kh * win.kw * c);
        let wk = words_for(k);
        let mut out = vec![0u64; n * ho * wo * wk];
        for img in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = (img * ho + oy) * wo + ox;
                    for i in 0..win.kh {
                        for j in 0..win.kw {
                            let (Some(y), Some(x)) = (win.source(oy, i, h), win.source(ox, j, w)) else {
                                continue;
                            };
                            for ch in 0..c {
                                let p = (img * h + y) * w + x;
                                let bit = (bits[p * wc + ch / 64] >> (ch % 64)) & 1;
                                let t = (i * win.kw + j) * c + ch;
                                out[row * wk + t / 64] |= bit << (t % 64);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn im2col_bits_matches_the_oracle_on_awkward_shapes() {
        let mut rng = Rng(0x5eed_0005);
        for c in [1, 3, 16, 31, 32, 63, 64, 65, 100, 128] {
            for (kh, kw, stride, padding) in [
                (3, 3, 1, 1),
                (3, 3, 2, 1),
                (1, 1, 2, 0),
                (2, 3, 1, 2),
                (3, 1, 3, 0),
            ] {
                let (n, h, w) = (2, 5, 4);
                let win = Window {
                    kh,
                    kw,
                    stride,
                    padding,
                };
                let bits = rng.packed_rows(n * h * w, c);
                let want = im2col_bits_oracle(&bits, n, h, w, c, win);
                for threads in [1, 3] {
                    let mut out = vec![u64::MAX; want.len()];
                    im2col_bits(&bits, n, h, w, c, win, threads, &mut out).unwrap();
                    assert_eq!(out, want, "c={c} win={win:?} threads={threads}");
                }
            }
        }
    }

    #[test]
    fn csr_conv2d_matches_dense_sums() {
        let mut rng = Rng(0x5eed_0009);
        let (n, c, h, w, o) = (2, 3, 5, 6, 4);
        // Stride 1 runs on padded planes, except with a padding that would dwarf the map (the last).
        let windows = [
            (3, 3, 1, 1),
            (3, 3, 2, 1),
            (1, 1, 1, 0),
            (2, 3, 2, 2),
            (2, 3, 1, 4),
            (3, 3, 1, 150),
        ];
        for (kh, kw, stride, padding) in windows {
            let win = Window {
                kh,
                kw,
                stride,
                padding,
            };
            let k = c * kh * kw;
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|_| (rng.next() % 7) as f32 - 3.0)
                .collect();
            // every third entry non-zero, small integers: sums are exact in float32
            let dense: Vec<f32> = (0..o * k)
                .map(|t| if t % 3 == 0 { (t % 5) as f32 - 2.0 } else { 0.0 })
                .collect();
            let (mut indptr, mut indices, mut data) = (vec![0i64], vec![], vec![]);
            for r in 0..o {
                for (col, &v) in dense[r * k..(r + 1) * k].iter().enumerate() {
                    if v != 0.0 {
                        indices.push(col as i32);
                        data.push(v);
                    }
                }
                indptr.push(indices.len() as i64);
            }
            let (ho, wo) = win.output(h, w).unwrap();
            for signs in [false, true] {
                let xs: Vec<f32> = x.iter().map(|&v| if signs { sign(v) } else { v }).collect();
                let mut want = vec![0f32; o * n * ho * wo];
                for r in 0..o {
                    for img in 0..n {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let mut s = 0f32;
                                for ch in 0..c {
                                    for i in 0..kh {
                                        for j in 0..kw {
                                            if let (Some(y), Some(xx)) =
                                                (win.source(oy, i, h), win.source(ox, j, w))
                                            {
                                                s += dense[r * k + (ch * kh + i) * kw + j]
                                                    * xs[((img * c + ch) * h + y) * w + xx];
                                            }
                                        }
                                    }
                                }
                                want[(r * n + img) * ho * wo + oy * wo + ox] = s;
                            }
                        }
                    }
                }
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; want.len()]; // overwritten
                    let mut sum = vec![1.0f32; want.len()]; // added to
                    for (accumulate, out) in [(false, &mut out), (true, &mut sum)] {
                        let shape = [n, c, h, w];
                        csr_conv2d(
                            &indptr, &indices, &data, &x, shape, win, signs, accumulate, threads, out,
                        )
                        .unwrap();
                    }
                    assert_eq!(out, want, "win={win:?} signs={signs}");
                    let want_sum: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
                    assert_eq!(sum, want_sum, "win={win:?} signs={signs} accumulating");
                }
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        let win = Window {
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 0,
        };
        let mut out = vec![0u64; 4];
        assert!(im2col_bits(&[0; 4], 1, 2, 2, 16, win, 1, &mut out).is_err()); // 3x3 does not fit 2x2
        let huge = Window {
            padding: usize::MAX / 2 + 1,
            ..win
        };
        assert!(huge.output(5, 5).is_err()); // 2·padding + h overflows: an error, not a wrapped size
        assert!(im2col_bits(&[0; 3], 1, 2, 2, 16, Window { kh: 1, kw: 1, ..win }, 1, &mut out).is_err());
        assert!(im2col_bits(
            &[1 << 20; 4],
            1,
            2,
            2,
            16,
            Window { kh: 1, kw: 1, ..win },
            1,
            &mut out
        )
        .is_err());
        // an index past K = 1, and an x one value short
        let mut fout = vec![0f32; 4];
        let one = Window { kh: 1, kw: 1, ..win };
        for (indptr, indices, data, x) in [
            (&[0i64, 1][..], &[99i32][..], &[1.0f32][..], &[0.0f32; 4][..]),
            (&[0, 0], &[], &[], &[0.0; 3]),
        ] {
            let r = csr_conv2d(
                indptr,
                indices,
                data,
                x,
                [1, 1, 2, 2],
                one,
                false,
                false,
                1,
                &mut fout,
            );
            assert!(r.is_err());
        }
    }
}
