//! The float ends of a ResNet around its binary blocks, so a whole network runs in one call: the
//! stem (a stride-1 float conv, its folded BatchNorm and hardtanh, whose output is the blocks'
//! input) and the head (global average pooling and a linear classifier).

use super::kernel::CHUNK;

/// The stem as given: float weights `(o, c, kh, kw)`, the folded BatchNorm.
pub struct StemSpec<'a> {
    pub weights: &'a [f32],
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub padding: usize,
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

/// The stem of an image `(c, h, w)`, its output `(o, h, w)` (the same size: 'same' padding).
pub(crate) struct Stem {
    pub c: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub padding: usize,
    pub h: usize,
    pub w: usize,
    pub weights: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

/// Most weights per output channel (c·kh·kw): the chunk's taps live on the stack.
pub(crate) const MAX_STEM_TAPS: usize = 27;

impl Stem {
    /// The stem making `(o, h, w)`, the blocks' input.
    pub(crate) fn new(spec: &StemSpec, (o, h, w): (usize, usize, usize)) -> Result<Stem, String> {
        let StemSpec {
            weights,
            c,
            kh,
            kw,
            padding,
            scale,
            shift,
        } = *spec;
        if c == 0 || o > 64 || c * kh * kw > MAX_STEM_TAPS || kh != 2 * padding + 1 || kw != 2 * padding + 1 {
            return Err(format!(
                "stem: need 1 <= c·kh·kw <= {MAX_STEM_TAPS}, O <= 64 and kh = kw = 2·padding + 1 (the \
                 output the size of the input), got c = {c}, O = {o}, {kh}x{kw}, padding {padding}"
            ));
        }
        if weights.len() != o * c * kh * kw || scale.len() != o || shift.len() != o {
            return Err(format!(
                "stem: weights must hold O·c·kh·kw = {} values and scale, shift O = {o} (the blocks' input channels)",
                o * c * kh * kw
            ));
        }
        if weights.iter().chain(scale).chain(shift).any(|v| !v.is_finite()) {
            return Err("stem: weights, scale and shift must be finite".into());
        }
        Ok(Stem {
            c,
            o,
            kh,
            kw,
            padding,
            h,
            w,
            weights: weights.to_vec(),
            scale: scale.to_vec(),
            shift: shift.to_vec(),
        })
    }

    /// `run.len()` values of channel `ch` of the image `x` `(c, h, w)` as the image with a zero
    /// border has them: row `y`, from column `x0` on (both counted in the bordered image).
    #[inline(always)]
    pub(crate) fn padded_run(&self, x: &[f32], ch: usize, y: usize, x0: usize, run: &mut [f32]) {
        let (p, h, w) = (self.padding, self.h, self.w);
        run.fill(0.0);
        // the image's columns within the run
        let (from, to) = (x0.max(p), (x0 + run.len()).min(p + w));
        if (p..p + h).contains(&y) && from < to {
            run[from - x0..to - x0].copy_from_slice(&x[(ch * h + y - p) * w + from - p..][..to - from]);
        }
    }
}

/// The head as given: linear weights `(classes, c)` and bias.
pub struct HeadSpec<'a> {
    pub weights: &'a [f32],
    pub classes: usize,
    pub bias: Option<&'a [f32]>,
}

pub(crate) struct Head {
    pub classes: usize,
    /// The float slot of an image's channel means (set by the net that ends with this head).
    pub means: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Head {
    /// The head on maps of `c` channels.
    pub(crate) fn new(spec: &HeadSpec, c: usize) -> Result<Head, String> {
        let HeadSpec {
            weights,
            classes,
            bias,
        } = *spec;
        if classes == 0 || c > 64 || weights.len() != classes * c || bias.is_some_and(|b| b.len() != classes)
        {
            return Err(format!(
                "head: weights must hold classes·c = {classes}·{c} values (c: the last map's channels, at most 64) \
                 and bias classes"
            ));
        }
        if weights.iter().chain(bias.unwrap_or(&[])).any(|v| !v.is_finite()) {
            return Err("head: weights and bias must be finite".into());
        }
        let bias = bias.map_or_else(|| vec![0.0; classes], <[f32]>::to_vec);
        Ok(Head {
            classes,
            means: 0,
            weights: weights.to_vec(),
            bias,
        })
    }

    /// The means of `means.len()` consecutive channels of one image's last map, `c` channels of
    /// `positions`, blocked ([`super::blocked`]); `src` is the map from the first channel's first run
    /// on. Each sums its positions lane by lane over the chunks, then the lanes pairwise (vector adds,
    /// not one chain of scalar ones).
    pub(crate) fn pool(&self, src: &[f32], c: usize, positions: usize, means: &mut [f32]) {
        for (ch, m) in means.iter_mut().enumerate() {
            let mut lanes = [0f32; CHUNK];
            for (chunk, p0) in (0..positions).step_by(CHUNK).enumerate() {
                let run = &src[(chunk * c + ch) * CHUNK..][..CHUNK.min(positions - p0)];
                for (a, &v) in lanes.iter_mut().zip(run) {
                    *a += v;
                }
            }
            let mut n = CHUNK;
            while n > 1 {
                n /= 2;
                for l in 0..n {
                    lanes[l] += lanes[l + n];
                }
            }
            *m = lanes[0] / positions as f32;
        }
    }

    /// The logits of an image from its `c` channel means.
    pub(crate) fn logits(&self, means: &[f32], out: &mut [f32]) {
        let c = means.len();
        for (k, logit) in out.iter_mut().enumerate() {
            let row = &self.weights[k * c..(k + 1) * c];
            *logit = row.iter().zip(means).map(|(w, m)| w * m).sum::<f32>() + self.bias[k];
        }
    }
}
