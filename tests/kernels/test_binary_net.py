"""BinaryNet: a chain of binary convs prepared once and run in one call (rust/net/).

Its oracle is its unfused composition: the same steps interpreted here in Python, one Rust
`bconv_1bit` call per conv (channels last, the kernel the per-conv path runs) and `shortcut_nhwc`
per shortcut. The two must agree bit for bit — the sparse sums too, as both add each position's
non-zeros in CSR order — on awkward nets (channels around 16/32/64, odd maps, stride 2, every
option), for every ISA path this CPU has, 1 and 2 threads, and batches of 1 and more.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import random_csr, random_packed, rust_isas
from kernel_helpers import raw_rust  # noqa: F401  (a fixture)

from apb_ref.packed.fused import shortcut_nhwc

ISAS = rust_isas()


@st.composite
def nets(draw):
    """(input (c, h, w), convs, steps, output, n, seed): ResNet-like blocks (basic or Bi-Real wiring)
    of 3×3 convs padded by 1, channels and strides drawn, each conv with or without a correction and
    a sparse part."""
    c = draw(st.sampled_from([1, 3, 16, 17, 32, 33, 64]))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    convs, steps = [], []
    fx, bx, cin, size = 0, 0, c, (h, w)

    def conv(cin, cout, stride, size):
        k = 9 * cin
        out = tuple((s + 2 - 3) // stride + 1 for s in size)
        scale = (rng.standard_normal(cout) * 2 / np.sqrt(k)).astype(np.float32)
        shift = rng.standard_normal(cout).astype(np.float32)
        correction = rng.standard_normal((*out, cout)).astype(np.float32) if rng.random() < 0.7 else None
        csr = random_csr(rng, cout, k, draw(st.sampled_from([0.0, 0.02, 0.2])))[1] if rng.random() < 0.7 else None
        convs.append((random_packed(rng, cout, k), cin, 3, 3, stride, scale, shift, correction, csr))
        return len(convs) - 1, out

    blocks = draw(st.integers(1, 3))
    for i in range(blocks):
        cout = draw(st.sampled_from(sorted({cin, min(64, 2 * cin), 64})))
        stride = draw(st.sampled_from([1, 2]))
        fs = fx
        if stride != 1 or cout != cin:
            fs = 2 if fx == 1 else 1
            steps.append(("shortcut", fx, fs, stride, cout))
        c1, mid = conv(cin, cout, stride, size)
        c2, size = conv(cout, cout, 1, mid)
        final = i == blocks - 1
        free = lambda *used: min({1, 2, 3} - set(used))  # noqa: E731
        if draw(st.booleans()):  # Bi-Real: a residual around each conv
            fm, bm = free(fs), free(bx)
            steps.append(("conv", c1, bx, fs, fm, bm))
            fx, bx = free(fm), None if final else free(bm)
            steps.append(("conv", c2, bm, fm, fx, bx))
        else:  # basic: the first conv's signs only, the shortcut added after the second
            bh = free(bx)
            steps.append(("conv", c1, bx, None, None, bh))
            fx, bx = free(fs), None if final else free(bh)
            steps.append(("conv", c2, bh, fs, fx, bx))
        cin = cout
    return (c, h, w), convs, steps, fx, draw(st.sampled_from([1, 2, 5])), draw(st.integers(0, 2**32 - 1))


def interpret(x, steps, output, pack, conv):
    """The steps in Python, channels last: float and bit buffers by number, buffer 0 the images and
    `pack` of them; `conv(layer, bits, residual, out)` gives a conv step's (float, bits)."""
    floats = {0: np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    bits = {0: pack(floats[0])}
    for step in steps:
        if step[0] == "shortcut":
            _, src, dst, stride, channels = step
            floats[dst] = np.ascontiguousarray(shortcut_nhwc(floats[src], channels, stride))
            continue
        _, layer, src, residual, f, b = step
        out = "both" if f is not None and b is not None else "float" if f is not None else "bits"
        y_float, y_bits = conv(layer, bits[src], None if residual is None else floats[residual], out)
        if f is not None:
            floats[f] = y_float
        if b is not None:
            bits[b] = y_bits
    return floats[output].transpose(0, 3, 1, 2)


def unfused(raw, x, convs, steps, output):
    """The steps one Rust `bconv_1bit` call (scalar path) or shortcut at a time."""
    def pack(nhwc):
        return raw.pack_bits(nhwc.reshape(-1, nhwc.shape[3])).reshape(*nhwc.shape[:3], -1)

    def conv(layer, bits, residual, out):
        weights, cin, kh, kw, stride, scale, shift, correction, csr = convs[layer]
        y = raw.bconv_1bit(weights, bits, cin, kh, kw, stride, 1, scale=scale, shift=shift, correction=correction,
                           csr=csr, residual=residual, clip=True, out=out, isa="scalar", threads=1)
        return y if out == "both" else (y, None) if out == "float" else (None, y)
    return interpret(x, steps, output, pack, conv)


@settings(max_examples=60, deadline=None)
@given(nets())
def test_a_binary_net_is_its_unfused_composition_bit_for_bit(raw_rust, case):
    shape, convs, steps, output, n, seed = case
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    x[:, :, 0, 0] = 0.0  # a zero input: bit 0 (+1), as pack_bits
    want = unfused(raw_rust, x, convs, steps, output)
    net = raw_rust.BinaryNet(shape, 1, convs, steps, output)
    assert net.shapes == (shape, want.shape[1:])
    for isa in ISAS:
        for threads in (1, 2):
            got = net.run(x, isa=isa, threads=threads)
            assert np.array_equal(got, want), (isa, threads)


def test_buffers_kept_between_calls_do_not_leak_into_results(raw_rust):
    """A call after calls on other images (and batch sizes) gives what a fresh net gives."""
    rng = np.random.default_rng(3)
    k = 9 * 16
    convs = [(random_packed(rng, 16, k), 16, 3, 3, 1, np.full(16, 0.1, np.float32), np.zeros(16, np.float32),
              None, random_csr(rng, 16, k, 0.1)[1])]
    steps = [("conv", 0, 0, 0, 1, 1)]
    net = raw_rust.BinaryNet((16, 6, 5), 1, convs, steps, 1)
    x = rng.standard_normal((4, 16, 6, 5)).astype(np.float32)
    first = net.run(x, threads=2)
    net.run(rng.standard_normal((7, 16, 6, 5)).astype(np.float32), threads=2)
    assert np.array_equal(net.run(x, threads=1), first)
    assert np.array_equal(raw_rust.BinaryNet((16, 6, 5), 1, convs, steps, 1).run(x[1:2]), first[1:2])


def _one_conv(rng, c=4, o=4, correction=None, csr=None):
    return (random_packed(rng, o, 9 * c), c, 3, 3, 1, np.ones(o, np.float32), np.zeros(o, np.float32),
            correction, csr)


def _sparse_conv(rng, c, o, stride):
    """A 3x3 conv of random weights, folded BatchNorm and a 10 % sparse term, no correction."""
    return (random_packed(rng, o, 9 * c), c, 3, 3, stride, rng.uniform(0.05, 0.2, o).astype(np.float32),
            rng.normal(0, 0.3, o).astype(np.float32), None, random_csr(rng, o, 9 * c, 0.1)[1])


@pytest.mark.parametrize("steps, output, message", [
    ([("conv", 0, 2, None, 1, None)], 1, "bits buffer 2 is read before it is written"),
    ([("conv", 1, 0, None, 1, None)], 1, "no conv 1"),
    ([("conv", 0, 0, None, 0, None)], 0, "buffer 0 is the input"),
    ([("conv", 0, 0, 0, 0, None)], 0, "may not be the residual"),
    ([("conv", 0, 0, None, None, None)], 1, "must write a float or a bit buffer"),
    ([("conv", 0, 0, None, 1, None)], 2, "output buffer 2 is never written"),
    ([("shortcut", 0, 1, 0, 4)], 1, "stride >= 1"),
    ([("shortcut", 0, 1, 1, 2)], 1, "channels in [4, 4096]"),
    ([("pool", 0)], 1, "must be a tuple starting with 'conv' or 'shortcut'"),
    ([("conv", 0, 0, None, 1)], 1, "must be a tuple of 6 items"),
])
def test_bad_steps_are_refused_with_what_is_wrong(raw_rust, steps, output, message):
    convs = [_one_conv(np.random.default_rng(0))]
    with pytest.raises(ValueError, match="BinaryNet: .*" + message.replace("[", r"\[").replace("]", r"\]")):
        raw_rust.BinaryNet((4, 5, 5), 1, convs, steps, output)


def test_bad_convs_are_refused_with_what_is_wrong(raw_rust):
    rng = np.random.default_rng(0)
    make = lambda convs, c=4: raw_rust.BinaryNet((c, 5, 5), 1, convs, [("conv", 0, 0, None, 1, None)], 1)  # noqa: E731
    with pytest.raises(ValueError, match="reads c = 4 channels, its input buffer has 3"):
        make([_one_conv(rng)], c=3)
    with pytest.raises(ValueError, match="correction must hold Ho·Wo·O = 100 finite values"):
        make([_one_conv(rng, correction=np.zeros((5, 5, 3), np.float32))])
    with pytest.raises(ValueError, match="correction must hold"):
        make([_one_conv(rng, correction=np.full((5, 5, 4), np.nan, np.float32))])
    bad = list(_one_conv(rng))
    bad[5] = np.array([1, np.inf, 1, 1], np.float32)
    with pytest.raises(ValueError, match="scale and shift must be finite"):
        make([tuple(bad)])
    bad = list(_one_conv(rng))
    bad[0] = np.zeros((4, 2), np.uint64)
    with pytest.raises(ValueError, match=r"weights must hold O·ceil\(k/64\) = 4 words, got 8"):
        make([tuple(bad)])
    with pytest.raises(ValueError, match="csr: "):
        make([_one_conv(rng, csr=(np.array([0, 1, 1, 1, 1]), np.array([36], np.int32), np.ones(1, np.float32)))])
    with pytest.raises(ValueError, match="need 1 <= c <= 64"):
        raw_rust.BinaryNet((65, 5, 5), 1, [], [], 0)


def test_run_refuses_bad_images(raw_rust):
    net = raw_rust.BinaryNet((4, 5, 5), 1, [_one_conv(np.random.default_rng(0))], [("conv", 0, 0, None, 1, None)], 1)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, 5, 5\)"):
        net.run(np.zeros((1, 4, 5, 6), np.float32))
    with pytest.raises(ValueError, match="float32"):
        net.run(np.zeros((1, 4, 5, 5)))
    x = np.zeros((2, 4, 5, 5), np.float32)
    x[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="x is NaN at flat index 169"):
        net.run(x)
    assert net.run(np.zeros((0, 4, 5, 5), np.float32)).shape == (0, 4, 5, 5)


def test_a_nan_y_whose_sign_a_conv_would_read_is_an_error(raw_rust):
    """−inf from the popcount term plus +inf from the sparse term: y is NaN, its sign undefined."""
    weights = np.array([[2**18 - 1]], np.uint64)  # every weight −1: with x = +1, acc = −18
    csr = (np.array([0, 2]), np.array([8, 9], np.int32), np.full(2, 3e38, np.float32))  # the centre tap
    conv = (weights, 2, 3, 3, 1, np.array([3e38], np.float32), np.zeros(1, np.float32), None, csr)
    x = np.ones((1, 2, 4, 4), np.float32)
    floats_only = raw_rust.BinaryNet((2, 4, 4), 1, [conv], [("conv", 0, 0, None, 1, None)], 1)
    assert np.isnan(floats_only.run(x)).all()
    with_signs = raw_rust.BinaryNet((2, 4, 4), 1, [conv], [("conv", 0, 0, None, 1, 1)], 1)
    with pytest.raises(ValueError, match="image 0: step 0 made a NaN y whose sign is undefined"):
        with_signs.run(x)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([1, 3]), st.sampled_from([8, 11, 16]), st.sampled_from([1, 4]), st.sampled_from([16, 40]),
       st.integers(0, 2**32 - 1))
def test_a_stem_and_a_head_are_the_float_ends_around_the_blocks(raw_rust, c0, size, n, o, seed):
    """The stem's output is the training conv's (direct path: maps at least 8 wide) · scale + shift,
    clipped, bit for bit; the head's logits are the average-pooled last map (of `o` channels, pooled
    in 32-channel groups by the threads of one image) times the classifier, to float32 rounding; every
    ISA and thread count gives the same bits."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, c0, 3, 3)) / np.sqrt(9 * c0)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, 16).astype(np.float32), rng.normal(0, 0.3, 16).astype(np.float32)
    k = 9 * 16
    convs = [(random_packed(rng, o, k), 16, 3, 3, 1, (rng.standard_normal(o) / 12).astype(np.float32),
              rng.normal(0, 0.3, o).astype(np.float32), None, random_csr(rng, o, k, 0.05)[1])]
    steps = [("conv", 0, 0, None, 1, None)] if o != 16 else [("conv", 0, 0, 0, 1, None)]  # a residual needs o = 16
    head_w, bias = rng.standard_normal((10, o)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    x = rng.standard_normal((n, c0, size, size)).astype(np.float32)

    stem_out = raw_rust.conv2d_forward(x, w, 1, 1, isa="scalar") * scale[:, None, None]
    stem_out = np.clip(stem_out + shift[:, None, None], -1, 1).astype(np.float32)
    blocks = raw_rust.BinaryNet((16, size, size), 1, convs, steps, 1)
    last = blocks.run(stem_out, threads=1).astype(np.float64)
    want = last.mean(axis=(2, 3)) @ head_w.T.astype(np.float64) + bias

    net = raw_rust.BinaryNet((16, size, size), 1, convs, steps, 1, stem=(w, 1, scale, shift))
    assert net.shapes == ((c0, size, size), (o, size, size))
    assert np.array_equal(net.run(x, threads=1), blocks.run(stem_out, threads=1))
    whole = raw_rust.BinaryNet((16, size, size), 1, convs, steps, 1, stem=(w, 1, scale, shift), head=(head_w, bias))
    got = [whole.run(x, isa=isa, threads=t) for isa in ISAS for t in (1, 2)]
    assert got[0].shape == (n, 10, 1, 1)
    assert all(np.array_equal(g, got[0]) for g in got)
    np.testing.assert_allclose(got[0][:, :, 0, 0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_bad_stems_and_heads_are_refused(raw_rust):
    rng = np.random.default_rng(0)
    make = lambda **ends: raw_rust.BinaryNet((4, 5, 5), 1, [_one_conv(rng)], [("conv", 0, 0, None, 1, None)], 1,  # noqa: E731
                                             **ends)
    ones = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="stem: need .*kh = kw = 2·padding \\+ 1"):
        make(stem=(np.ones((4, 1, 3, 3), np.float32), 0, ones, ones))
    with pytest.raises(ValueError, match="stem: weights must hold O·c·kh·kw"):
        make(stem=(np.ones((3, 1, 3, 3), np.float32), 1, ones, ones))
    with pytest.raises(ValueError, match="stem: weights, scale and shift must be finite"):
        make(stem=(np.full((4, 1, 3, 3), np.inf, np.float32), 1, ones, ones))
    with pytest.raises(ValueError, match="head: weights must hold classes·c = 10·4"):
        make(head=(np.ones((10, 5), np.float32), None))
    with pytest.raises(ValueError, match="must be a tuple of 2 items"):
        make(head=(np.ones((10, 4), np.float32),))


def _two_bit_conv(x, conv, residual):
    """One conv of a 2-bit net in NumPy, channels last, float32 in BinaryNet's order: the input's
    DoReFa levels j (v = 2j − 3, +3 on the padding), y = f32(Σ w·v)·scale + shift − correction + S·x
    (x = j/3, 0 on the padding, non-zeros added in CSR order) + residual, then ReLU."""
    weights, cin, kh, kw, stride, scale, shift, correction, csr = conv
    n, h, w, _ = x.shape
    j = np.round(np.clip(x, 0, 1) * np.float32(3))
    v = np.pad((2 * j - 3).astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=3)
    xq = np.pad((j / np.float32(3)).astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    k = kh * kw * cin
    bits = (weights[:, np.arange(k) // 64] >> (np.arange(k) % 64).astype(np.uint64)) & np.uint64(1)
    wpm = (1 - 2 * bits.astype(np.int64)).reshape(-1, kh, kw, cin)
    windows = np.stack([v[:, i:i + stride * ho:stride, jj:jj + stride * wo:stride] for i in range(kh) for jj in range(kw)], 3)
    dot = np.einsum("nyxtc,otc->nyxo", windows, wpm.reshape(len(wpm), kh * kw, cin))
    y = dot.astype(np.float32) * scale + shift
    if correction is not None:
        y = y - correction
    if csr is not None:
        xwin = np.stack([xq[:, i:i + stride * ho:stride, jj:jj + stride * wo:stride] for i in range(kh) for jj in range(kw)], 3)
        indptr, indices, data = csr
        sums = np.zeros(y.shape, np.float32)
        for o in range(len(indptr) - 1):
            for q in range(indptr[o], indptr[o + 1]):
                sums[..., o] += data[q] * xwin[..., indices[q] // cin, indices[q] % cin]
        y = y + sums
    if residual is not None:
        y = y + residual
    return np.where(y < 0, np.float32(0), y)


@settings(max_examples=40, deadline=None)
@given(nets())
def test_a_2bit_binary_net_is_its_numpy_composition_bit_for_bit(raw_rust, case):
    """2-bit maps (ReLU, DoReFa levels in two planes): the same floats as the NumPy steps, every ISA,
    1 and 2 threads."""
    shape, convs, steps, output, n, seed = case
    x = np.random.default_rng(seed).uniform(-0.3, 1.3, (n, *shape)).astype(np.float32)

    def conv(layer, bits, residual, out):  # a "bit" buffer holds the float map its planes quantize
        y = _two_bit_conv(bits, convs[layer], residual)
        return y, y
    want = interpret(x, steps, output, lambda nhwc: nhwc, conv)
    net = raw_rust.BinaryNet(shape, 1, convs, steps, output, act_bits=2)
    for isa in ISAS:
        for threads in (1, 2):
            assert np.array_equal(net.run(x, isa=isa, threads=threads), want), (isa, threads)


def test_more_threads_than_an_image_has_chunks_change_nothing(raw_rust):
    """A batch of 1 on 8 threads: the split takes as many threads as the map has 64-position chunks."""
    rng = np.random.default_rng(5)
    convs = [_one_conv(rng, csr=random_csr(rng, 4, 36, 0.2)[1])]
    steps = [("conv", 0, 0, None, 1, 1), ("conv", 0, 1, 1, 2, None)]
    for size in (3, 9, 12):  # 1, 2 and 3 chunks
        net = raw_rust.BinaryNet((4, size, size), 1, convs, steps, 2)
        x = rng.standard_normal((1, 4, size, size)).astype(np.float32)
        assert all(np.array_equal(net.run(x, threads=t), net.run(x, threads=1)) for t in (2, 3, 8))


@pytest.mark.parametrize("h, w", [(16, 16), (32, 32), (8, 24), (4, 64)])
def test_two_threads_on_one_image_give_one_threads_bits_through_a_chain_of_convs(raw_rust, h, w):
    """A batch of 1 on 2 threads, each step's chunks split between them: a chain of convs through two
    alternating buffers (basic and Bi-Real wiring, corrections, sparse terms, 1- and 2-bit maps) on
    maps of several chunks gives 1 thread's bits, call after call; so does a chain in which each conv
    writes its floats where the conv before it read its residual (one thread may still be reading
    its part there)."""
    rng = np.random.default_rng(h * w)
    c = 8
    csr = lambda: random_csr(rng, c, 9 * c, 0.1)[1]  # noqa: E731
    convs = [(random_packed(rng, c, 9 * c), c, 3, 3, 1, rng.uniform(0.05, 0.2, c).astype(np.float32),
              rng.normal(0, 0.3, c).astype(np.float32), rng.normal(0, 0.2, (h, w, c)).astype(np.float32), csr())
             for _ in range(4)]
    steps = [("conv", 0, 0, None, None, 1), ("conv", 1, 1, 0, 1, 2),     # basic block
             ("conv", 2, 2, 1, 2, 1), ("conv", 3, 1, 2, 3, 2),           # Bi-Real: a residual around each
             ("conv", 0, 2, None, None, 1), ("conv", 1, 1, 3, 1, None)]
    swapped = [("conv", 0, 0, None, 1, 1), ("conv", 1, 1, 1, 2, 2),      # floats into the last residual
               ("conv", 2, 2, 2, 1, 1), ("conv", 3, 1, 1, 2, None)]
    # two images in turn: a thread reading a map before the other has written it finds the other image's
    xs = rng.standard_normal((2, 1, c, h, w)).astype(np.float32)
    for act_bits, (steps, output) in itertools.product((1, 2), ((steps, 1), (swapped, 2))):
        net = raw_rust.BinaryNet((c, h, w), 1, convs, steps, output, act_bits=act_bits)
        want = [net.run(x, threads=1) for x in xs]
        for isa in ISAS:
            got = [net.run(xs[k % 2], isa=isa, threads=2) for k in range(30)]
            assert all(np.array_equal(g, want[k % 2]) for k, g in enumerate(got)), (act_bits, isa)


def test_nets_too_big_to_hold_are_refused_before_anything_is_allocated(raw_rust):
    conv = _one_conv(np.random.default_rng(0))
    with pytest.raises(ValueError, match="a map's buffer would exceed"):
        raw_rust.BinaryNet((4, 2**20, 2**20), 1, [conv], [("conv", 0, 0, None, 1, None)], 1)
    with pytest.raises(ValueError, match="a map's buffer would exceed"):
        raw_rust.BinaryNet((4, 2**40, 2**40), 2**60, [conv], [("conv", 0, 0, None, 1, None)], 1)


def test_arrays_of_the_wrong_rank_are_refused(raw_rust):
    conv = list(_one_conv(np.random.default_rng(0)))
    conv[5] = conv[5].reshape(4, 1)
    with pytest.raises(ValueError, match="convs\\[0\\]: scale must be a C-contiguous float32 1-D array"):
        raw_rust.BinaryNet((4, 5, 5), 1, [tuple(conv)], [("conv", 0, 0, None, 1, None)], 1)


def test_a_shortcut_onto_one_chunk_splits_by_channels(raw_rust):
    """A batch of 1 on several threads: a shortcut whose output map is one 64-position chunk is split
    by output channels (as a conv is), and each thread's channels still come out as shortcut_nhwc's."""
    rng = np.random.default_rng(6)
    convs = [_one_conv(rng, csr=random_csr(rng, 4, 36, 0.2)[1])]
    before = raw_rust.BinaryNet((4, 12, 12), 1, convs, [("conv", 0, 0, None, 1, 1)], 1)
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    want = shortcut_nhwc(before.run(x, threads=1).transpose(0, 2, 3, 1), 11, 2).transpose(0, 3, 1, 2)
    for channels, out in ((11, want), (4, None)):  # new channels on both sides, or none
        steps = [("conv", 0, 0, None, 1, 1), ("shortcut", 1, 2, 2, channels)]
        net = raw_rust.BinaryNet((4, 12, 12), 1, convs, steps, 2)
        got = [net.run(x, threads=t) for t in (1, 2, 3, 8)]
        assert got[0].shape == (1, channels, 6, 6)
        assert all(np.array_equal(g, got[0]) for g in got)
        if out is not None:
            assert np.array_equal(got[0], out)


def test_threads_pool_the_channels_their_last_conv_wrote(raw_rust):
    """A batch of 1 on 2, 3 and 8 threads, and of 2 on 3 and 8 (on 2, a thread takes each image): the
    last conv, on a one-chunk map, splits its 64 channels in 32-channel groups, and each thread goes
    straight on to pooling its own groups for the head; the logits are 1 thread's, call after call."""
    rng = np.random.default_rng(9)

    convs = [_sparse_conv(rng, 16, 64, 2), _sparse_conv(rng, 64, 64, 1)]  # 16x16 (four chunks) to 8x8 (one)
    steps = [("conv", 0, 0, None, 1, 1), ("conv", 1, 1, 1, 2, None)]
    w = (rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32)
    stem = (w, 1, rng.uniform(0.5, 2, 16).astype(np.float32), rng.normal(0, 0.3, 16).astype(np.float32))
    head = (rng.standard_normal((10, 64)).astype(np.float32), rng.standard_normal(10).astype(np.float32))
    net = raw_rust.BinaryNet((16, 16, 16), 1, convs, steps, 2, stem=stem, head=head)
    for n in (1, 2):
        xs = rng.standard_normal((2, n, 3, 16, 16)).astype(np.float32)  # two batches in turn
        want = [net.run(x, threads=1) for x in xs]
        for isa, t in itertools.product(ISAS, (2, 3, 8)):
            got = [net.run(xs[k % 2], isa=isa, threads=t) for k in range(30)]
            assert all(np.array_equal(g, want[k % 2]) for k, g in enumerate(got)), (n, isa, t)


@pytest.mark.parametrize("h, w", [(32, 32), (16, 16), (32, 16)])
def test_two_threads_through_a_stage_transition_give_one_threads_bits(raw_rust, h, w):
    """A batch of 1 on 2 threads through a basic block that halves the map (an option-A shortcut that
    runs with the stride-2 conv after it, then a conv with the shortcut as residual), to a map of
    several chunks or of one: two images in turn give 1 thread's bits, for 1- and 2-bit maps and
    every ISA."""
    rng = np.random.default_rng(h + w)

    convs = [_sparse_conv(rng, c, o, stride) for c, o, stride in ((8, 8, 1), (8, 16, 2), (16, 16, 1), (16, 16, 1))]
    steps = [("conv", 0, 0, None, 1, 1), ("shortcut", 1, 2, 2, 16), ("conv", 1, 1, None, None, 2),
             ("conv", 2, 2, 2, 3, 3), ("conv", 3, 3, 3, 4, None)]
    xs = rng.standard_normal((2, 1, 8, h, w)).astype(np.float32)
    for act_bits in (1, 2):
        net = raw_rust.BinaryNet((8, h, w), 1, convs, steps, 4, act_bits=act_bits)
        want = [net.run(x, threads=1) for x in xs]
        for isa in ISAS:
            got = [net.run(xs[k % 2], isa=isa, threads=2) for k in range(30)]
            assert all(np.array_equal(g, want[k % 2]) for k, g in enumerate(got)), (act_bits, isa)
