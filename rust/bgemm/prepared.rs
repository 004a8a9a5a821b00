//! A B operand packed into the microkernels' panels once, for many products against it.
//!
//! In a network's layer B is the weights: the same for every input. With the activations as A (rows
//! = output pixels, read in place) and the weights prepared as B (columns = output channels), the
//! product is the layer's output channels-last, and no call packs anything: at K = 576 the per-call
//! packing was about a tenth of the work. [`bgemm_prepared`] computes exactly what [`super::bgemm`]
//! computes for the same operands.

use super::{check, family, panel, run, Columns, Family, Kind};
use crate::bits::words_for;
use crate::isa::Isa;

/// B's planes as given and as panels for one ISA's microkernels and one product kind.
pub struct Prepared {
    kind: Kind,
    fam: Family,
    n: usize,
    k: usize,
    /// B's planes as given (the dot-product columns read them in place).
    planes: Vec<Vec<u64>>,
    /// Panel `i` is `words[spans[i]]`, every one starting on a cache line.
    words: panel::Words,
    spans: Vec<std::ops::Range<usize>>,
}

impl Prepared {
    /// Pack the PB planes of `b` (`n × words_for(k)` words each) for `kind` products on `isa`.
    pub fn new(kind: Kind, b: &[&[u64]], n: usize, k: usize, isa: Isa) -> Result<Self, String> {
        let name = kind.name();
        // the operand checks of a product with no rows of A, so the messages are bgemm's (and
        // nothing is allocated before B's lengths are known to match n and k)
        check(kind, &vec![&[][..]; kind.planes().0], b, 0, n, k, None, &[])?;
        let fam = family(isa).ok_or_else(|| format!("{name}: isa {isa} is not available"))?;
        Self::for_family(fam, kind, b, n, k)
    }

    /// [`Prepared::new`] for the microkernels of `fam`, the operands checked.
    pub(super) fn for_family(
        fam: Family,
        kind: Kind,
        b: &[&[u64]],
        n: usize,
        k: usize,
    ) -> Result<Self, String> {
        let name = kind.name();
        let w = words_for(k);
        let columns = Columns::new(fam, kind, n, w);
        let wt = if fam.nibbles { 2 * w } else { w };
        let mut spans = Vec::with_capacity(columns.panels);
        for p in 0..columns.panels {
            let (_, _, nr) = columns.panel(p);
            let start = spans
                .last()
                .map_or(0, |s: &std::ops::Range<usize>| s.end.next_multiple_of(8));
            spans.push(start..start + panel::panel_len(wt, b.len(), nr * fam.lanes));
        }
        let mut words = panel::Words::default();
        words.resize(spans.last().map_or(0, |s| s.end));
        for (p, span) in spans.iter().enumerate() {
            let (c0, cols, nr) = columns.panel(p);
            let dst = &mut words.as_mut_slice()[span.clone()];
            // SAFETY: `fam` runs on this CPU (`family(isa)` checked it; or a test's portable family).
            if !unsafe { (fam.fill)(b, w, c0, cols, nr * fam.lanes, fam.nibbles, dst) } {
                return Err(format!("{name}: internal error: panel {p} was not packed"));
            }
        }
        Ok(Prepared {
            kind,
            fam,
            n,
            k,
            planes: b.iter().map(|p| p.to_vec()).collect(),
            words,
            spans,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn isa(&self) -> Isa {
        self.fam.isa
    }

    /// Columns of the product (rows of B).
    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held: the panels and the planes as given.
    pub fn bytes(&self) -> usize {
        8 * (self.words.as_slice().len() + self.planes.iter().map(Vec::len).sum::<usize>())
    }

    /// Panel `i`'s words (empty past the last).
    pub(super) fn panel(&self, i: usize) -> &[u64] {
        self.spans
            .get(i)
            .map_or(&[], |span| &self.words.as_slice()[span.clone()])
    }
}

/// `out = A·Bᵀ` (row-major `(m, b.n())`) for `b`'s kind and ISA on `threads` threads, `a` holding PA
/// planes of `m × words_for(b.k())` words: [`super::bgemm`] with B's panels packed beforehand.
pub fn bgemm_prepared(
    a: &[&[u64]],
    m: usize,
    b: &Prepared,
    threads: usize,
    out: &mut [i32],
) -> Result<(), String> {
    // B's planes as slices, without an allocation per call (a kind has at most two)
    let held: [&[u64]; 2] = std::array::from_fn(|p| b.planes.get(p).map_or(&[][..], Vec::as_slice));
    let planes = &held[..b.planes.len().min(2)];
    check(b.kind, a, planes, m, b.n, b.k, None, out)?;
    run(
        b.fam,
        b.kind,
        a,
        planes,
        Some(b),
        (m, b.n, b.k),
        threads,
        None,
        out,
    )
}
