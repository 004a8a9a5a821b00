"""Packed layers: the modules a packed model runs, on the kernels of the backend seam.

`PACKED_LAYERS` maps the name a method gives as its `packed_layer` to the module that runs its packed
form. "binary" runs y = α·(B·X) + S·X + bias (METHODS §1.8) for APB and BNN alike: X is the (K, P)
im2col matrix of the quantized input (K = C·kh·kw rows, one column per output position), B the packed
sign matrix, α one scale per output row (APB stores one for the layer) and S an optional CSR residual
(APB's full-precision weights; BNN has none). B·X runs, by activation precision,

  1-bit  x ∈ {±1}:           bgemm_1x1 on packed bits — an exact integer;
  2-bit  x = (v + 3)/6, v ∈ {−3, −1, 1, 3} (DoReFa levels 0, ⅓, ⅔, 1):
         B·x = (B·v)/6 + rowsum(B)/2 with B·v from bgemm_1x2 (exact integer) and
         rowsum(B) = K − 2·popcount(B's row);
  float  a float GEMM on the ±1 sign matrix;

and S·X is csr_matmul. A conv with 1- or 2-bit activations never builds X: the quantized map is
packed once per pixel (channels last), im2col_bits lowers those packed bits (the sign matrix is
repacked to its (i, j, channel) order), and csr_conv2d reads S·X's windows straight from the map.
The binary GEMMs return α·(B·X) + bias themselves (a float32 epilogue made while their products are
in cache) and csr_conv2d adds S·X into that array: one (O, P) float array per layer. BatchNorm
arrives folded into a per-channel scale and shift. Everything else (pooling, shortcuts, activations)
is the same functional code as training, without a graph.
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


class PackedLinearCore(nn.Module):
    """α·(B·X) + S·X + bias for X given as columns (K rows, one column per output position)."""

    def __init__(self, prefix: str, spec: dict[str, Any], t: dict[str, np.ndarray]):
        super().__init__()
        self.k, self.act_bits = int(spec["k"]), int(spec["act_bits"])
        self.sign_bits = t[f"{prefix}.sign_bits"]
        self.out_features = self.sign_bits.shape[0]
        # α per output row: APB stores one for the layer, BNN one per channel
        self.alpha = np.broadcast_to(t[f"{prefix}.alpha"].astype(np.float32), (self.out_features,)).copy()
        self.sparse = f"{prefix}.csr_values" in t  # a residual S (APB); BNN has none
        if self.sparse:
            self.indptr = t[f"{prefix}.csr_indptr"].astype(np.int64)
            self.indices = t[f"{prefix}.csr_indices"].astype(np.int32)
            self.values = t[f"{prefix}.csr_values"].astype(np.float32)
        self.bias = t.get(f"{prefix}.bias")
        # the float model's own activation quantizer (element-wise, so applied to the activation map
        # before im2col: kh·kw times fewer elements than the columns)
        self.act = activation_quantizer(self.act_bits)
        if self.act_bits == 32:  # the float path multiplies by the ±1 matrix itself
            self.signs = kernels.unpack_bits(self.sign_bits, self.k)
        # The binary GEMMs finish y = α·(B·X) + bias themselves, as float32 product·scale + shift per
        # row: 1-bit B·X is the product; 2-bit B·X = (B·v)/6 + rowsum(B)/2 with B·v the product.
        o = self.out_features
        bias = np.zeros(o, np.float32) if self.bias is None else self.bias.astype(np.float32)
        if self.act_bits == 1:
            self.epilogue = {"scale": self.alpha.copy(), "shift": bias}
        if self.act_bits == 2:
            row_sums = self.k - 2 * np.bitwise_count(self.sign_bits).sum(axis=1).astype(np.int64)
            self.epilogue = {"scale": (self.alpha / np.float32(6)).astype(np.float32),
                             "shift": (self.alpha * (row_sums / 2) + bias).astype(np.float32)}

    def matmul(self, cols: np.ndarray) -> np.ndarray:
        """(K, P) quantized input columns (one per output position) -> (O, P) outputs."""
        if self.act_bits == 1:
            # pack straight from the (K, P) columns: no transposed float copy
            y = kernels.bgemm_1x1(self.sign_bits, kernels.pack_bits(cols, layout="columns"), self.k, **self.epilogue)
        elif self.act_bits == 2:
            # cols = (v + 3)/6 holds float32(j/3), j = 0..3, and in float32 j/3·6 − 3 is exactly 2j − 3
            # (pack_2bit would refuse anything else); in place, so one (K, P) temporary, not two
            v = cols * np.float32(6)
            v -= 3
            hi, lo = kernels.pack_2bit(v, layout="columns")
            y = kernels.bgemm_1x2(self.sign_bits, hi, lo, self.k, **self.epilogue)
        else:
            y = self.alpha[:, None] * (self.signs @ cols)
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
            # matrix is repacked once in that order.
            signs = kernels.unpack_bits(self.sign_bits, self.k)
            signs = signs.reshape(-1, self.channels, self.kh, self.kw).transpose(0, 2, 3, 1)
            self.sign_bits_hwc = kernels.pack_bits(np.ascontiguousarray(signs).reshape(len(signs), -1))

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
        output) into the layer: the GEMM's epilogue, the residual's values and the padding
        correction are scaled per output channel, and the shift joins the epilogue's. Only for the
        1- and 2-bit paths, whose epilogue makes it free."""
        if not self.packed_input:
            raise ValueError("PackedConv2d.fold: only layers with 1- or 2-bit activations fold a BatchNorm")
        scale, shift = np.asarray(scale, np.float32), np.asarray(shift, np.float32)
        self.epilogue = {"scale": self.epilogue["scale"] * scale, "shift": self.epilogue["shift"] * scale + shift}
        if self.sparse:
            self.values = self.values * scale[np.repeat(np.arange(self.out_features), np.diff(self.indptr))]
        self.out_scale = self.out_scale * scale
        self.__dict__.pop("_corrections", None)

    def _lowered(self, packed: np.ndarray, shape) -> np.ndarray:
        """im2col_bits of a map packed per pixel ((N·H·W, words) uint64 for an (N, C, H, W) map)."""
        n, c, h, w = shape
        return kernels.im2col_bits(packed.reshape(n, h, w, -1), c, self.kh, self.kw, self.stride, self.padding)

    def _packed_forward(self, x: np.ndarray) -> np.ndarray:
        """α·(B·X) + S·X + bias with X, the im2col of the quantized map, never built: the map is packed
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
            y = kernels.bgemm_1x1(self.sign_bits_hwc, self._lowered(bits, x.shape), self.k, **self.epilogue)
            sparse_input, signs = x, True
        else:
            xq = np.ascontiguousarray(self.act(Tensor(x)).data)
            # v = 6·xq − 3 is exactly 2j − 3 for the levels j/3 (see PackedLinearCore.matmul)
            v = xq * np.float32(6)
            v -= 3
            hi, lo = kernels.pack_2bit(v.reshape(n, c, h * w), layout="columns")
            y = kernels.bgemm_1x2(self.sign_bits_hwc, self._lowered(hi, x.shape), self._lowered(lo, x.shape),
                                  self.k, **self.epilogue)
            sparse_input, signs = xq, False
        # y = α·(B·X) + bias, this call's own float32 array: S·X goes straight into it
        if self.sparse:
            kernels.csr_conv2d(self.indptr, self.indices, self.values, sparse_input, self.kh, self.kw, self.stride,
                               self.padding, signs=signs, add_to=y)
        return y

    def _padding_correction(self, chw) -> np.ndarray:
        """α·B·P: what the zero padding wrongly adds to the popcount term in the 1- and 2-bit paths.

        A padded zero packs as bit 0, i.e. +1 (1-bit), or as v = +3, whose B·v/6 + B/2 is B (2-bit),
        while the float model multiplies it by 0 (S·X sees the zero itself and needs no correction).
        P is the im2col of an image that is 1 on the padding and 0 inside, so α·B·P (O, Ho, Wo) is
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
            signs = kernels.unpack_bits(self.sign_bits, self.k)
            surplus = (self.alpha * self.out_scale)[:, None] * (signs @ cols)
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
PACKED_LAYERS = {"binary": binary_layer, "float": FloatLayer, "affine": Affine}
