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
from ..quant.packing import unpack_codes


def weight_planes(prefix: str, t: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The binary part of a layer as planes (B_p packed (O, words), α_p (O,)): W = Σ_p α_p·B_p.
    APB and BNN store one plane (α per layer or per row); uniform k-bit weights store k planes of
    u = Σ_p 2^p·b_p with α = s/2, so plane p's scale is α·2^p."""
    if f"{prefix}.planes" in t:
        planes = t[f"{prefix}.planes"]
        alpha = np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (planes.shape[1],))
        return [(np.ascontiguousarray(planes[p]), (alpha * np.float32(2 ** p)).astype(np.float32))
                for p in range(planes.shape[0])]
    bits = t[f"{prefix}.sign_bits"]
    return [(bits, np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (bits.shape[0],)).copy())]


class PackedLinearCore(nn.Module):
    """Σ_p α_p·(B_p·X) + S·X + bias for X given as columns (K rows, one column per output position)."""

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray]):
        super().__init__()
        self.k, self.act_bits = int(spec["k"]), int(spec["act_bits"])
        self.planes = weight_planes(prefix, t)
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
        self.two_by_two = (self.act_bits == 2 and len(rest) == 1 and self.k >= 9
                           and np.array_equal(rest[0][1], 2 * lo_alpha))
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
            c, h, w = chw
            p = self.padding
            border = np.ones((1, c, h + 2 * p, w + 2 * p), dtype=np.float32)
            border[:, :, p:p + h, p:p + w] = 0
            cols = kernels.im2col(border, self.kh, self.kw, self.stride, 0, layout="columns")
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
PACKED_LAYERS = {"binary": binary_layer, "sparse": PackedSparse, "float": FloatLayer, "affine": Affine}
