"""Packed layers: the modules a packed model runs, on the kernels of the backend seam.

`PACKED_LAYERS` maps the name a method gives as its `packed_layer` to the module that runs its packed
form.

"binary" runs y = Σ_p α_p·(B_p·X) + S·X + bias (METHODS §1.8) for APB, BNN and uniform alike: X is
the (K, P) im2col matrix of the quantized input (K = C·kh·kw rows, one column per output position),
B_p packed sign matrices with one scale per output row (APB and BNN: one plane, α; k-bit uniform:
k planes of u = Σ_p 2^p·b_p with α_p = 2^p·s/2) and S an optional CSR residual (APB's
full-precision weights). Each B_p·X runs, by activation precision,

  1-bit  x ∈ {±1}:           bgemm_1x1 on packed bits — an exact integer;
  2-bit  x = (v + 3)/6, v ∈ {−3, −1, 1, 3} (DoReFa levels 0, ⅓, ⅔, 1):
         B·x = (B·v)/6 + rowsum(B)/2 with B·v from bgemm_1x2 (exact integer) and
         rowsum(B) = K − 2·popcount(B's row); two planes of a 2-bit uniform layer run as one
         bgemm_2x2 (2-bit × 2-bit, four binary products in one pass);
  float  a float GEMM on the dense Σ_p α_p·B_p;

and S·X is csr_matmul. A conv with 1- or 2-bit activations never builds X: the quantized map is
packed once per pixel (channels last), im2col_bits lowers those packed bits (the sign matrices are
repacked to their (i, j, channel) order), and csr_conv2d reads S·X's windows straight from the map.
The binary GEMMs return α_p·(B_p·X) + bias themselves (a float32 epilogue made while their products
are in cache), further planes are added in place and csr_conv2d adds S·X into that array: one (O, P)
float array per layer. BatchNorm arrives folded into a per-channel scale and shift.

"sbnn" runs SBNN's {α, β} layers (METHODS §3.7): y = α·(X ⊛ 1) + (β − α)·(X ⊛ z) + bias, from the
Golomb-Rice coded positions of the minority value (decoded once at load); see `PackedSBNN`.

"pabt" runs PaBT's multi-bit layers (METHODS §2.6): y = Σ_(i,j) s_ij·(B_i·X_j) + bias over the live
binary convolutions, X_j the im2col of sign(x − t_j): one bgemm_1x1 per term; see `PackedPaBT`.
(A PaBT layer with one term left is exported in `bnn`'s "binary" form.)

"sparse" runs y = S·X + bias for pruned layers (prune: float32 values; prune_uniform: k-bit codes
decoded once at load) on csr_conv2d / csr_matmul over the quantized input.

Everything else (pooling, shortcuts, activations) is the same functional code as training, without a
graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from .. import nn
from .. import ops as F
from ..autograd import Tensor
from ..ops.lowering import conv_output_size
from ..quant.activations import activation_quantizer
from ..quant.packing import rice_decode, unpack_codes

FOLDED = "batchnorm folded into the conv"  # the name of the identity a folded BatchNorm leaves behind


def weight_planes(prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The binary part of a layer as planes (B_p packed (O, words), α_p (O,)): W = Σ_p α_p·B_p.
    APB and BNN store one plane (α per layer or per row); uniform k-bit weights store k planes of
    u = Σ_p 2^p·b_p with α = s/2, so plane p's scale is α·2^p. The spec, which the file's checks
    read too, says which."""
    if spec.get("planes") is not None:
        planes = t[f"{prefix}.planes"]
        alpha = np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (planes.shape[1],))
        return [(np.ascontiguousarray(planes[p]), (alpha * np.float32(2 ** p)).astype(np.float32))
                for p in range(planes.shape[0])]
    bits = t[f"{prefix}.sign_bits"]
    return [(bits, np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (bits.shape[0],)).copy())]


def padding_columns(chw: tuple[int, int, int], kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """P, the (C·kh·kw, Ho·Wo) im2col of an image that is 1 on the zero padding and 0 inside: W·P is what
    padded taps packed as +1 add where the float model adds 0."""
    c, h, w = chw
    border = np.ones((1, c, h + 2 * padding, w + 2 * padding), dtype=np.float32)
    border[:, :, padding:padding + h, padding:padding + w] = 0
    return kernels.im2col(border, kh, kw, stride, 0, layout="columns")


class PackedLinearCore(nn.Module):
    """Σ_p α_p·(B_p·X) + S·X + bias for X given as columns (K rows, one column per output position)."""

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray]):
        super().__init__()
        self.k, self.act_bits = int(spec["k"]), int(spec["act_bits"])
        self.planes = weight_planes(prefix, spec, t)
        self.out_features = self.planes[0][0].shape[0]
        self.sparse = f"{prefix}.csr_values" in t  # a residual S (APB); BNN and uniform have none
        if self.sparse:
            self.indptr = t[f"{prefix}.csr_indptr"].astype(np.int64)
            self.indices = t[f"{prefix}.csr_indices"].astype(np.int32)
            self.values = t[f"{prefix}.csr_values"].astype(np.float32)
        self.bias = t.get(f"{prefix}.bias")
        # the float model's own activation quantizer (element-wise, so applied to the activation map
        # before im2col: kh·kw times fewer elements than the columns)
        self.act = activation_quantizer(self.act_bits)
        if self.act_bits == 32:  # the float path multiplies by the dense binary part itself
            self.dense = self.binary_part()
        # The binary GEMMs finish y = α_p·(B_p·X) (+ bias on the first plane) themselves, as float32
        # product·scale + shift per row: 1-bit B·X is the product; 2-bit B·X = (B·v)/6 + rowsum(B)/2.
        o = self.out_features
        bias = np.zeros(o, np.float32) if self.bias is None else self.bias.astype(np.float32)
        self.epilogues = []
        # two planes W = α·(2·B_hi + B_lo) against 2-bit inputs: one bgemm_2x2 (four binary products in
        # one pass) instead of a bgemm_1x2 per plane; its epilogue uses rowsum(2·B_hi + B_lo)
        (lo_bits, lo_alpha), *rest = self.planes
        self.two_by_two = self.act_bits == 2 and len(rest) == 1  # α_1 = 2·α_0 (weight_planes)
        if self.two_by_two:
            row_sums = sum(2 ** p * (self.k - 2 * np.bitwise_count(b).sum(axis=1).astype(np.int64))
                           for p, (b, _) in enumerate(self.planes))
            self.epilogues.append({"scale": (lo_alpha / np.float32(6)).astype(np.float32),
                                   "shift": (lo_alpha * (row_sums / 2) + bias).astype(np.float32)})
        for p, (bits, alpha) in enumerate([] if self.two_by_two else self.planes):
            shift = bias if p == 0 else np.zeros(o, np.float32)
            if self.act_bits == 1:
                self.epilogues.append({"scale": alpha.copy(), "shift": shift.copy()})
            if self.act_bits == 2:
                row_sums = self.k - 2 * np.bitwise_count(bits).sum(axis=1).astype(np.int64)
                self.epilogues.append({"scale": (alpha / np.float32(6)).astype(np.float32),
                                       "shift": (alpha * (row_sums / 2) + shift).astype(np.float32)})

    def binary_part(self) -> np.ndarray:
        """Σ_p α_p·B_p as a dense (O, K) float32 matrix."""
        return sum(alpha[:, None] * kernels.unpack_bits(bits, self.k) for bits, alpha in self.planes).astype(np.float32)

    def _planes_gemm(self, gemm, weights, *operands) -> np.ndarray:
        """Σ_p (the plane's GEMM with its epilogue): one float32 (O, P) array, summed in place."""
        if self.two_by_two and gemm is kernels.bgemm_1x2:
            return kernels.bgemm_2x2(weights[1], weights[0], *operands, self.k, **self.epilogues[0])
        y = None
        for bits, epilogue in zip(weights, self.epilogues):
            part = gemm(bits, *operands, self.k, **epilogue)
            y = part if y is None else np.add(y, part, out=y)
        return y

    def matmul(self, cols: np.ndarray) -> np.ndarray:
        """(K, P) quantized input columns (one per output position) -> (O, P) outputs."""
        weights = [bits for bits, _ in self.planes]
        if self.act_bits == 1:
            # pack straight from the (K, P) columns: no transposed float copy
            y = self._planes_gemm(kernels.bgemm_1x1, weights, kernels.pack_bits(cols, layout="columns"))
        elif self.act_bits == 2:
            # cols = (v + 3)/6 holds float32(j/3), j = 0..3, and in float32 j/3·6 − 3 is exactly 2j − 3
            # (pack_2bit would refuse anything else); in place, so one (K, P) temporary, not two
            v = cols * np.float32(6)
            v -= 3
            y = self._planes_gemm(kernels.bgemm_1x2, weights, *kernels.pack_2bit(v, layout="columns"))
        else:
            y = self.dense @ cols
            if self.bias is not None:
                y += self.bias[:, None]
        if self.sparse:
            y += kernels.csr_matmul(self.indptr, self.indices, self.values, cols)
        return y


class PackedConv2d(PackedLinearCore):
    def __init__(self, prefix, spec, t):
        super().__init__(prefix, spec, t)
        self.channels, self.kh, self.kw = spec["weight_shape"][1:]
        self.stride, self.padding = int(spec["stride"]), int(spec["padding"])
        self.packed_input = self.act_bits in (1, 2)  # the map itself is packed (`_packed_forward`)
        self.out_scale = np.ones(self.out_features, np.float32)  # a folded BatchNorm's scale (`fold`)
        if self.packed_input:
            # These paths lower packed bits (im2col_bits), whose K order is (i, j, channel): the sign
            # matrices are repacked once in that order.
            self.planes_hwc = [self._taps_first(bits) for bits, _ in self.planes]

    def _taps_first(self, bits: np.ndarray) -> np.ndarray:
        signs = kernels.unpack_bits(bits, self.k)
        signs = signs.reshape(-1, self.channels, self.kh, self.kw).transpose(0, 2, 3, 1)
        return kernels.pack_bits(np.ascontiguousarray(signs).reshape(len(signs), -1))

    def forward(self, x):
        n, _, h, w = x.shape
        ho = conv_output_size(h, self.kh, self.stride, self.padding)
        wo = conv_output_size(w, self.kw, self.stride, self.padding)
        if self.packed_input:
            y = self._packed_forward(np.ascontiguousarray(x.data)).reshape(self.out_features, n, ho, wo)
        else:
            xq = np.ascontiguousarray(self.act(x).data)
            cols = kernels.im2col(xq, self.kh, self.kw, self.stride, self.padding, layout="columns")
            y = self.matmul(cols).reshape(self.out_features, n, ho, wo)
        nchw = y.transpose(1, 0, 2, 3)
        if self.packed_input and self.padding:  # subtract while copying to NCHW: one pass, not two
            return Tensor(np.subtract(nchw, self._padding_correction(x.shape[1:]), out=np.empty(nchw.shape, y.dtype)))
        return Tensor(np.ascontiguousarray(nchw))

    def fold(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Fold a following per-channel y·scale + shift (a BatchNorm that reads only this layer's
        output) into the layer: the GEMMs' epilogues, the residual's values and the padding
        correction are scaled per output channel, and the shift joins the first plane's. Only for
        the 1- and 2-bit paths, whose epilogue makes it free."""
        if not self.packed_input:
            raise ValueError("PackedConv2d.fold: only layers with 1- or 2-bit activations fold a BatchNorm")
        scale, shift = np.asarray(scale, np.float32), np.asarray(shift, np.float32)
        self.epilogues = [{"scale": e["scale"] * scale, "shift": e["shift"] * scale + (shift if p == 0 else 0)}
                          for p, e in enumerate(self.epilogues)]
        if self.sparse:
            self.values = self.values * scale[np.repeat(np.arange(self.out_features), np.diff(self.indptr))]
        self.out_scale = self.out_scale * scale
        self.__dict__.pop("_corrections", None)
        self.__dict__.pop("_fused", None)

    def fused_operands(self, h: int, w: int) -> dict[str, Any]:
        """`bconv_1bit`'s arguments for this layer on an h×w map (1-bit activations, one plane; see
        `fused.py`): the weights in (i, j, channel) order, the epilogue, the padding correction
        channels last, and S with its columns renumbered from (channel, i, j) to (i, j, channel)."""
        cache = self.__dict__.setdefault("_fused", {})
        if (h, w) not in cache:
            correction = None
            if self.padding:
                correction = np.ascontiguousarray(self._padding_correction((self.channels, h, w)).transpose(1, 2, 0))
            csr = None
            if self.sparse:
                taps = self.kh * self.kw
                columns = (self.indices % taps) * self.channels + self.indices // taps
                csr = (self.indptr, columns.astype(np.int32), self.values)
            cache[(h, w)] = {"weights": self.planes_hwc[0], **self.epilogues[0], "correction": correction,
                             "csr": csr}
        return cache[(h, w)]

    def _lowered(self, packed: np.ndarray, shape) -> np.ndarray:
        """im2col_bits of a map packed per pixel ((N·H·W, words) uint64 for an (N, C, H, W) map)."""
        n, c, h, w = shape
        return kernels.im2col_bits(packed.reshape(n, h, w, -1), c, self.kh, self.kw, self.stride, self.padding)

    def _packed_forward(self, x: np.ndarray) -> np.ndarray:
        """Σ_p α_p·(B_p·X) + S·X + bias with X, the im2col of the quantized map, never built: the map is packed
        once per pixel (channels last), lowered on packed bits, and S·X reads its windows of the map.

        1-bit: pack_bits packs signs, so x itself is packed (no ±1 copy) and csr_conv2d reads sign(x).
        A NaN in the map is therefore an error naming its position (the float model reads it as +1).
        2-bit: the DoReFa map xq = (v + 3)/6 is packed as the planes of v, B·X = (B·v)/6 + rowsum(B)/2.
        Either way a padded tap packs as +1 (1-bit) or v = +3 (2-bit), which adds B·P where the float
        model adds 0: `_padding_correction` takes it off.
        """
        n, c, h, w = x.shape
        # Each pixel's channels are packed straight from NCHW (a batch of (C, H·W) matrices packed
        # down their columns): the (N·H·W, W) words of the map channels last, no transposed copy.
        if self.act_bits == 1:
            bits = kernels.pack_bits(x.reshape(n, c, h * w), layout="columns")
            y = self._planes_gemm(kernels.bgemm_1x1, self.planes_hwc, self._lowered(bits, x.shape))
            sparse_input, signs = x, True
        else:
            xq = np.ascontiguousarray(self.act(Tensor(x)).data)
            # v = 6·xq − 3 is exactly 2j − 3 for the levels j/3 (see PackedLinearCore.matmul)
            v = xq * np.float32(6)
            v -= 3
            hi, lo = kernels.pack_2bit(v.reshape(n, c, h * w), layout="columns")
            y = self._planes_gemm(kernels.bgemm_1x2, self.planes_hwc, self._lowered(hi, x.shape),
                                  self._lowered(lo, x.shape))
            sparse_input, signs = xq, False
        # y = α·(B·X) + bias, this call's own float32 array: S·X goes straight into it
        if self.sparse:
            kernels.csr_conv2d(self.indptr, self.indices, self.values, sparse_input, self.kh, self.kw, self.stride,
                               self.padding, signs=signs, add_to=y)
        return y

    def _padding_correction(self, chw) -> np.ndarray:
        """W·P, W = Σ_p α_p·B_p: what the zero padding wrongly adds to the popcount terms in the 1- and
        2-bit paths.

        A padded zero packs as bit 0, i.e. +1 (1-bit), or as v = +3, whose B·v/6 + B/2 is B (2-bit),
        while the float model multiplies it by 0 (S·X sees the zero itself and needs no correction).
        P is the im2col of an image that is 1 on the padding and 0 inside, so W·P (O, Ho, Wo) is
        exactly the surplus; it depends only on the input size, so it is computed once per size.
        """
        cache = self.__dict__.setdefault("_corrections", {})
        if chw not in cache:
            _, h, w = chw
            p = self.padding
            cols = padding_columns(chw, self.kh, self.kw, self.stride, p)
            ho, wo = conv_output_size(h, self.kh, self.stride, p), conv_output_size(w, self.kw, self.stride, p)
            surplus = self.out_scale[:, None] * (self.binary_part() @ cols)
            cache[chw] = surplus.reshape(self.out_features, ho, wo)
        return cache[chw]


class PackedSparse(nn.Module):
    """A pruned layer: y = S·X + bias with S in CSR (`prune`, and `prune_uniform` whose k-bit codes
    are decoded to float32 values here, once): csr_conv2d reads each non-zero's window of the
    quantized input map, csr_matmul multiplies a linear layer's input."""

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray], layer: nn.Module = None):
        super().__init__()
        shape = spec["weight_shape"]
        self.out_features, self.k = shape[0], int(spec["k"])
        self.conv = len(shape) == 4
        if self.conv:
            self.kh, self.kw = shape[2:]
            self.stride, self.padding = int(spec["stride"]), int(spec["padding"])
        self.indptr = t[f"{prefix}.csr_indptr"].astype(np.int64)
        self.indices = t[f"{prefix}.csr_indices"].astype(np.int32)
        self.values = self.decode(spec, t, prefix) if spec["code_bits"] else t[f"{prefix}.csr_values"].astype(np.float32)
        self.bias = t.get(f"{prefix}.bias")
        self.act = activation_quantizer(int(spec["act_bits"]))

    def decode(self, spec, t, prefix) -> np.ndarray:
        """value = (s/2)·(2c − 2^k + 1) for each survivor's code c (prune_uniform's packed form)."""
        bits, nnz = int(spec["code_bits"]), int(spec["nnz"])
        u = 2 * unpack_codes(t[f"{prefix}.csr_codes"], nnz) - (2 ** bits - 1)
        half_step = np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (self.out_features,))
        return (half_step[np.repeat(np.arange(self.out_features), np.diff(self.indptr))] * u).astype(np.float32)

    def forward(self, x):
        xq = np.ascontiguousarray(self.act(x).data)
        if self.conv:
            n, _, h, w = xq.shape
            ho = conv_output_size(h, self.kh, self.stride, self.padding)
            wo = conv_output_size(w, self.kw, self.stride, self.padding)
            y = kernels.csr_conv2d(self.indptr, self.indices, self.values, xq, self.kh, self.kw, self.stride,
                                   self.padding).reshape(self.out_features, n, ho, wo).transpose(1, 0, 2, 3)
            shape = (1, -1, 1, 1)
        else:
            y = kernels.csr_matmul(self.indptr, self.indices, self.values, np.ascontiguousarray(xq.T)).T
            shape = (1, -1)
        y = np.ascontiguousarray(y)
        if self.bias is not None:
            y += self.bias.reshape(shape)
        return Tensor(y)


def sbnn_positions(prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray]) -> np.ndarray:
    """The positions of an SBNN layer's minority value, decoded from its Golomb-Rice streams
    (ValueError on an inconsistent stream: `rice_decode` trusts nothing)."""
    shape = spec["weight_shape"]
    return rice_decode(t[f"{prefix}.rice_quotients"], t[f"{prefix}.rice_remainders"], int(spec["positions"]),
                       int(spec["rice_k"]), shape[0] * int(spec["k"]))


class PackedSBNN(nn.Module):
    """SBNN's {α, β} layer: W = α·1 + (β − α)·Z, Z = 1 where a weight is at β. With X the quantized
    input's columns (the im2col matrix of a conv; K rows, one column per output position):

        y = α·(1ᵀX) + (β − α)·(Z·X) + bias

    1ᵀX, the box-sum of each window over all its K inputs, is computed once per layer and shared by
    every output channel. The rest depends on the activations' precision:

    float   the minority value m (stored positions) and the other value o: W = o·1 + (m − o)·M, so
            y = o·(1ᵀX) + (m − o)·(M·X) + bias with M·X a sparse product (csr_conv2d / csr_matmul of
            the positions, all values m − o): work in proportion to the minority count.
    1-bit   x ∈ {±1}. With the signs s = 2z − 1 of a row, z = (1 + s)/2 and x·z = (x·1 + x·s)/2, so
            W's row is φ + τ·s (φ = (α + β)/2, τ = (β − α)/2) and y = φ·(1ᵀX) + τ·(S·X) + bias:
            S·X is bgemm_1x1 on the sign bits and 1ᵀX is bgemm_1x1 against a row of +1s (all bits
            0), K − 2·popcount of each column. Both exact integers.
    2-bit   x = (v + 3)/6 (DoReFa, METHODS §7.4): S·x = (S·v)/6 + rowsum(S)/2 from bgemm_1x2, and
            1ᵀx = (1ᵀv)/6 + K/2 from bgemm_1x2 against the row of +1s.

    In the popcount paths a row whose weights are all at one value (z ≡ 0: every weight α; or
    z ≡ 1) has no sign row: its output is that value times the shared box-sum, so such filters cost
    nothing. Each row is y_o = c_o·(1ᵀX) + d_o·(s_o·X) + e_o (c = φ, d = τ for the others; c = α or β,
    d = 0 for constant rows; e = bias), which is also what a folded BatchNorm rescales. As in
    PackedConv2d, a conv with 1- or 2-bit inputs lowers the packed map with im2col_bits (sign rows
    repacked in its (i, j, channel) order), and its padded taps pack as x = 1, so W·P is subtracted
    (`_padding_correction`).
    """

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray], layer: nn.Module = None):
        super().__init__()
        shape = spec["weight_shape"]
        o, self.k = shape[0], int(spec["k"])
        self.out_features = o
        self.conv = len(shape) == 4
        if self.conv:
            self.channels, self.kh, self.kw = shape[1:]
            self.stride, self.padding = int(spec["stride"]), int(spec["padding"])
        self.act_bits = int(spec["act_bits"])
        self.act = activation_quantizer(self.act_bits)
        self.packed_input = self.conv and self.act_bits in (1, 2)
        alpha, beta = (np.float32(v) for v in t[f"{prefix}.levels"])
        bias = t.get(f"{prefix}.bias")
        self.bias = np.zeros(o, np.float32) if bias is None else bias.astype(np.float32)
        positions = sbnn_positions(prefix, spec, t)
        at_beta = spec["minority"] == "beta"
        minority, other = (beta, alpha) if at_beta else (alpha, beta)
        if self.act_bits == 32:  # y = o·(1ᵀX) + (m − o)·(M·X) + bias, M the minority positions (CSR)
            rows, cols = np.divmod(positions, self.k)
            self.other = other
            self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=o))]).astype(np.int64)
            self.indices = cols.astype(np.int32)
            self.values = np.full(len(positions), minority - other, np.float32)
            return
        below = np.ones(o * self.k, dtype=bool)  # 1 where a weight is at α: the sign bit of s = 2z − 1
        below[positions] = False
        if not at_beta:
            np.logical_not(below, out=below)
        below = below.reshape(o, self.k)
        ones = self.k - below.sum(axis=1)  # weights at β per row
        varying = (ones > 0) & (ones < self.k)
        self.rows = np.flatnonzero(varying)  # rows with both values: a sign row each
        self.all_rows = len(self.rows) == o
        self.c = np.where(varying, (alpha + beta) / np.float32(2), np.where(ones == self.k, beta, alpha)).astype(np.float32)
        self.d = np.where(varying, (beta - alpha) / np.float32(2), np.float32(0)).astype(np.float32)
        self.e = self.bias.copy()
        self.row_sums = (2 * ones[self.rows] - self.k).astype(np.float32)  # rowsum(S) for the 2-bit epilogue
        below = below[self.rows]
        self.sign_bits = kernels.pack_mask(below)  # S in (c, i, j) order (the padding correction's too)
        self.plus_row = np.zeros((1, -(-self.k // 64)), np.uint64)  # a row of +1s: its product with X is 1ᵀX
        self.gemm_bits = self.sign_bits
        if self.packed_input:  # im2col_bits orders K as (i, j, channel)
            taps_first = below.reshape(-1, self.channels, self.kh, self.kw).transpose(0, 2, 3, 1)
            self.gemm_bits = kernels.pack_mask(np.ascontiguousarray(taps_first).reshape(len(below), self.k))

    # --- the popcount paths (1- and 2-bit activations) --------------------------------------------
    def _popcount(self, gemm, operands: tuple[np.ndarray, ...]) -> np.ndarray:
        """y = c·(1ᵀX) + d·(S·X) + e for X given as packed operands (1-bit: its bits; 2-bit: the two
        planes of v): one float32 (O, P) array."""
        box = gemm(self.plus_row, *operands, self.k)[0].astype(np.float32)  # 1ᵀx (1-bit) or 1ᵀv (2-bit)
        if self.act_bits == 1:
            scale, shift = self.d[self.rows], None
        else:
            box = box / np.float32(6) + np.float32(self.k / 2)
            d = self.d[self.rows]
            scale, shift = (d / np.float32(6)).astype(np.float32), (d * (self.row_sums / 2)).astype(np.float32)
        y = np.multiply.outer(self.c, box)
        y += self.e[:, None]
        if len(self.rows):
            part = gemm(self.gemm_bits, *operands, self.k, scale=scale, shift=shift)
            if self.all_rows:
                y += part
            else:
                y[self.rows] += part
        return y

    def matmul(self, cols: np.ndarray) -> np.ndarray:
        """(K, P) quantized input columns -> (O, P) outputs."""
        if self.act_bits == 32:
            y = kernels.csr_matmul(self.indptr, self.indices, self.values, cols)
            y += self.other * cols.sum(axis=0)
            y += self.bias[:, None]
            return y
        if self.act_bits == 1:
            return self._popcount(kernels.bgemm_1x1, (kernels.pack_bits(cols, layout="columns"),))
        v = cols * np.float32(6)  # exactly 2j − 3 for the DoReFa levels j/3 (PackedLinearCore.matmul)
        v -= 3
        return self._popcount(kernels.bgemm_1x2, kernels.pack_2bit(v, layout="columns"))

    def forward(self, x):
        if not self.conv:
            xq = self.act(x).data
            return Tensor(np.ascontiguousarray(self.matmul(np.ascontiguousarray(xq.T)).T))
        n, c, h, w = x.shape
        ho = conv_output_size(h, self.kh, self.stride, self.padding)
        wo = conv_output_size(w, self.kw, self.stride, self.padding)
        if self.act_bits == 32:
            y = self._float_conv(np.ascontiguousarray(self.act(x).data))
        elif self.act_bits == 1:
            bits = kernels.pack_bits(np.ascontiguousarray(x.data).reshape(n, c, h * w), layout="columns")
            y = self._popcount(kernels.bgemm_1x1, (self._lowered(bits, x.shape),))
        else:
            v = np.ascontiguousarray(self.act(x).data) * np.float32(6)
            v -= 3
            hi, lo = kernels.pack_2bit(v.reshape(n, c, h * w), layout="columns")
            y = self._popcount(kernels.bgemm_1x2, (self._lowered(hi, x.shape), self._lowered(lo, x.shape)))
        nchw = y.reshape(self.out_features, n, ho, wo).transpose(1, 0, 2, 3)
        if self.packed_input and self.padding:
            return Tensor(np.subtract(nchw, self._padding_correction(x.shape[1:]), out=np.empty(nchw.shape, y.dtype)))
        return Tensor(np.ascontiguousarray(nchw))

    def _float_conv(self, xq: np.ndarray) -> np.ndarray:
        """o·(x ⊛ 1) + (m − o)·(x ⊛ M) + bias for a float map: the box-sum is the channel sum's kh×kw
        window sums (zero padding, as the float model), M·X reads the map's windows (csr_conv2d)."""
        channel_sum = xq.sum(axis=1, keepdims=True)
        box = kernels.im2col(channel_sum, self.kh, self.kw, self.stride, self.padding, layout="columns").sum(axis=0)
        y = kernels.csr_conv2d(self.indptr, self.indices, self.values, xq, self.kh, self.kw, self.stride, self.padding)
        y += self.other * box
        y += self.bias[:, None]
        return y

    def _lowered(self, packed: np.ndarray, shape) -> np.ndarray:
        n, c, h, w = shape
        return kernels.im2col_bits(packed.reshape(n, h, w, -1), c, self.kh, self.kw, self.stride, self.padding)

    def fold(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Fold a following per-channel y·scale + shift (a BatchNorm) into c, d and e (the 1- and
        2-bit paths of a conv)."""
        if not self.packed_input:
            raise ValueError("PackedSBNN.fold: only conv layers with 1- or 2-bit activations fold a BatchNorm")
        scale, shift = np.asarray(scale, np.float32), np.asarray(shift, np.float32)
        self.c, self.d, self.e = self.c * scale, self.d * scale, self.e * scale + shift
        self.__dict__.pop("_corrections", None)

    def _padding_correction(self, chw) -> np.ndarray:
        """W·P with W's rows c_o·1 + d_o·s_o: what padded taps (packed as x = 1) add where the float
        model adds 0 (P the im2col of an image that is 1 on the padding, as in PackedConv2d)."""
        cache = self.__dict__.setdefault("_corrections", {})
        if chw not in cache:
            _, h, w = chw
            p = self.padding
            cols = padding_columns(chw, self.kh, self.kw, self.stride, p)
            surplus = np.multiply.outer(self.c, cols.sum(axis=0))
            if len(self.rows):
                signs = kernels.unpack_bits(self.sign_bits, self.k)
                surplus[self.rows] += self.d[self.rows, None] * (signs @ cols)
            ho, wo = conv_output_size(h, self.kh, self.stride, p), conv_output_size(w, self.kw, self.stride, p)
            cache[chw] = surplus.reshape(self.out_features, ho, wo)
        return cache[chw]


class PackedPaBT(nn.Module):
    """PaBT's multi-bit layer (METHODS §2.6): m weight sign planes B_i, n activation thresholds t_j and
    one scale row s_ij = c_ij·α_i·β_j per live binary convolution (i, j):

        y = Σ_(i,j) s_ij·(B_i·X_j) + bias,   X_j the im2col of H_j(x) = sign(x − t_j)

    Each activation base is packed once (x − t_j in float32, the same difference the float model
    takes, so the same signs), and each term is one bgemm_1x1 whose epilogue applies s_ij (and the
    bias, on the first term), summed in place. A conv lowers the packed maps with im2col_bits (the
    sign planes repacked once in its (i, j, channel) order); its padded taps pack as +1 where the
    float model pads H_j(x) with 0, so Σ s_ij·(B_i·P) is subtracted (`_padding_correction`). A
    following BatchNorm folds into the epilogues (`fold`)."""

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray], layer: nn.Module = None):
        super().__init__()
        shape = spec["weight_shape"]
        self.out_features, self.k = shape[0], int(spec["k"])
        self.conv = len(shape) == 4
        self.packed_input = self.conv  # every path is a popcount path
        planes = t[f"{prefix}.planes"]
        self.thresholds = [np.float32(v) for v in t[f"{prefix}.thresholds"]]
        self.terms = [(int(i), int(j)) for i, j in spec["terms"]]
        scales = t[f"{prefix}.scales"].astype(np.float32)
        bias = t.get(f"{prefix}.bias")
        bias = np.zeros(self.out_features, np.float32) if bias is None else bias.astype(np.float32)
        self.epilogues = [{"scale": scales[n].copy(), "shift": bias.copy() if n == 0 else np.zeros_like(bias)}
                          for n in range(len(self.terms))]
        self.planes = [np.ascontiguousarray(p) for p in planes]  # (c, i, j) order: the padding correction's
        self.gemm_planes = self.planes
        self.out_scale = np.ones(self.out_features, np.float32)
        if self.conv:
            self.channels, self.kh, self.kw = shape[1:]
            self.stride, self.padding = int(spec["stride"]), int(spec["padding"])
            self.gemm_planes = [self._taps_first(p) for p in self.planes]

    def _taps_first(self, bits: np.ndarray) -> np.ndarray:
        signs = kernels.unpack_bits(bits, self.k)
        signs = signs.reshape(-1, self.channels, self.kh, self.kw).transpose(0, 2, 3, 1)
        return kernels.pack_bits(np.ascontiguousarray(signs).reshape(len(signs), -1))

    def _terms(self, operands: dict[int, np.ndarray]) -> np.ndarray:
        """Σ over the terms of bgemm_1x1(B_i, X_j) with its epilogue: one float32 (O, P) array."""
        y = None
        for (i, j), epilogue in zip(self.terms, self.epilogues):
            part = kernels.bgemm_1x1(self.gemm_planes[i], operands[j], self.k, **epilogue)
            y = part if y is None else np.add(y, part, out=y)
        return y

    def forward(self, x):
        data = np.ascontiguousarray(x.data)
        if not self.conv:  # (N, K): each base's signs packed per row, then the terms as (O, N)
            operands = {j: kernels.pack_bits(data - t) for j, t in enumerate(self.thresholds)}
            return Tensor(np.ascontiguousarray(self._terms(operands).T))
        n, c, h, w = data.shape
        ho = conv_output_size(h, self.kh, self.stride, self.padding)
        wo = conv_output_size(w, self.kw, self.stride, self.padding)
        operands = {}
        for j, t in enumerate(self.thresholds):
            bits = kernels.pack_bits((data - t).reshape(n, c, h * w), layout="columns")
            operands[j] = kernels.im2col_bits(bits.reshape(n, h, w, -1), c, self.kh, self.kw, self.stride, self.padding)
        y = self._terms(operands)
        nchw = y.reshape(self.out_features, n, ho, wo).transpose(1, 0, 2, 3)
        if self.padding:
            return Tensor(np.subtract(nchw, self._padding_correction(data.shape[1:]), out=np.empty(nchw.shape, y.dtype)))
        return Tensor(np.ascontiguousarray(nchw))

    def fold(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Fold a following per-channel y·scale + shift (a BatchNorm) into the terms' epilogues."""
        if not self.packed_input:
            raise ValueError("PackedPaBT.fold: only conv layers fold a BatchNorm")
        scale, shift = np.asarray(scale, np.float32), np.asarray(shift, np.float32)
        self.epilogues = [{"scale": e["scale"] * scale, "shift": e["shift"] * scale + (shift if n == 0 else 0)}
                          for n, e in enumerate(self.epilogues)]
        self.out_scale = self.out_scale * scale
        self.__dict__.pop("_corrections", None)

    def _padding_correction(self, chw) -> np.ndarray:
        """Σ_(i,j) s_ij·(B_i·P): what the padded taps, packed as +1, add where the float model adds 0."""
        cache = self.__dict__.setdefault("_corrections", {})
        if chw not in cache:
            _, h, w = chw
            p = self.padding
            cols = padding_columns(chw, self.kh, self.kw, self.stride, p)
            surplus = np.zeros((self.out_features, cols.shape[1]), np.float32)
            for (i, _), epilogue in zip(self.terms, self.epilogues):
                surplus += epilogue["scale"][:, None] * (kernels.unpack_bits(self.planes[i], self.k) @ cols)
            ho, wo = conv_output_size(h, self.kh, self.stride, p), conv_output_size(w, self.kw, self.stride, p)
            cache[chw] = surplus.reshape(self.out_features, ho, wo)
        return cache[chw]


class PackedLinear(PackedLinearCore):
    def forward(self, x):
        xq = self.act(x).data
        return Tensor(np.ascontiguousarray(self.matmul(np.ascontiguousarray(xq.T)).T))


class FloatLayer(nn.Module):
    """A full-precision conv or linear layer with its stored float32 weights."""

    def __init__(self, prefix, spec, t, layer: nn.Module):
        super().__init__()
        self.weight, self.bias = t[f"{prefix}.weight"], t.get(f"{prefix}.bias")
        self.conv = isinstance(layer, nn.Conv2d)
        self.stride, self.padding = getattr(layer, "stride", 1), getattr(layer, "padding", 0)
        self.act = activation_quantizer(int(spec["act_bits"]))

    def forward(self, x):
        x = self.act(x)
        if self.conv:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        y = x @ Tensor(np.ascontiguousarray(self.weight.T))
        return y + self.bias if self.bias is not None else y


class Affine(nn.Module):
    """Folded BatchNorm: y = x·scale + shift per channel."""

    def __init__(self, prefix, spec, t, layer=None):
        super().__init__()
        self.scale, self.shift = t[f"{prefix}.scale"], t[f"{prefix}.shift"]

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x.data * self.scale.reshape(shape)
        y += self.shift.reshape(shape)  # in place: one temporary map, not two
        return Tensor(y)


def binary_layer(prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray], layer: nn.Module) -> nn.Module:
    """The "binary" packed layer: PackedConv2d for a 4-D weight, PackedLinear for a 2-D one."""
    return PackedConv2d(prefix, spec, t) if len(spec["weight_shape"]) == 4 else PackedLinear(prefix, spec, t)


# packed_layer name (WeightQuantizer.packed_layer, or the export's own kinds) -> what builds its module
def learned_params(prefix, spec, t, layer):
    """A small float module with learned per-channel vectors (ReActNet's RSign shift, RPReLU): the
    freshly built module itself, its parameters set from the file; it runs the training code."""
    for name in spec["params"]:
        getattr(layer, name).data[...] = t[f"{prefix}.{name}"]
    return layer


PACKED_LAYERS = {"binary": binary_layer, "sparse": PackedSparse, "sbnn": PackedSBNN, "pabt": PackedPaBT,
                 "float": FloatLayer, "affine": Affine, "params": learned_params}
