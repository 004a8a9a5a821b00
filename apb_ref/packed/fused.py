"""Bits between layers: on the Rust backend ResNet-20's binary blocks run as one `BinaryNet` call
(`rust/net/`: every conv fused, the maps between them packed), with the stem and the head too when
they qualify (`whole_forward`); 1-bit blocks outside its bounds run one `bconv_1bit` call per conv.

Unfused (`PackedConv2d`, and always on the NumPy backend, which stays the readable reference), each
1-bit conv packs its float NCHW input, lowers the packed map (im2col_bits), multiplies (bgemm_1x1),
adds APB's sparse term in another pass (csr_conv2d), copies to NCHW while taking off the padding
correction, and the block then adds the shortcut and clips in further passes. Here each conv is one
pass over its output positions: the kernel gathers the windows from the packed map, multiplies, and
finishes y = folded BatchNorm − padding correction + S·x + residual, clipped (hardtanh), writing the
float map the next shortcut needs and the packed signs the next conv reads. A map is packed once,
when it enters the blocks.

A block qualifies when both convs are single-plane packed convs (APB, BNN) with their BatchNorms
folded, no ReAct shifts or activation scales, and either 1-bit activations after hardtanh or 2-bit
(DoReFa) activations after ReLU; the model's blocks are fused only if every block qualifies, with the
same activation bits. The float results equal the unfused ones up to float
rounding (the sums run in another order), so the packed network still equals the float model.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import kernels
from .. import nn
from .. import ops as F
from ..autograd import Tensor
from ..ops.lowering import conv_output_size
from ..models.resnet import BasicBlock, BiRealBlock, ResNet20
from .layers import FOLDED, Affine, FloatLayer, PackedConv2d


# activation bits -> the activation the blocks' maps go through
ACTIVATIONS = {1: F.hardtanh, 2: F.relu}


def _act_bits(block) -> int | None:
    """The activation bits of a block's convs, if both are single-plane packed convs alike."""
    bits = {conv.act_bits if isinstance(conv, PackedConv2d) and len(conv.planes) == 1 else None
            for conv in (block.conv1, block.conv2)}
    return bits.pop() if len(bits) == 1 else None


def fusable(block, act_bits: int = 1) -> bool:
    """Whether `block` computes exactly what `FusedBlocks` runs for it with `act_bits` activations."""
    return (type(block) in (BasicBlock, BiRealBlock) and act_bits in ACTIVATIONS
            and _act_bits(block) == act_bits
            and all(getattr(bn, "name", None) == FOLDED for bn in (block.bn1, block.bn2))
            and all(getattr(act, "fn", None) is ACTIVATIONS[act_bits] for act in (block.act1, block.act2))
            and not any(isinstance(shift, nn.ChannelShift) for shift in (block.shift1, block.shift2))
            and block.scale1 is None and block.scale2 is None)


def fuse_blocks(model: nn.Module) -> None:
    """Replace a ResNet-20's `blocks` by `FusedBlocks` when every block qualifies (see the module
    docs), and run the whole model as one `BinaryNet` when its ends qualify too (`whole_forward`)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not len(blocks):
        return
    act_bits = _act_bits(blocks[0])
    if all(fusable(b, act_bits) for b in blocks):
        model.blocks = FusedBlocks(blocks, act_bits)
        if _ends_fusable(model):
            model.forward = functools.partial(whole_forward, model)  # this instance's forward


def _ends_fusable(model) -> bool:
    """A ResNet20's stem (float 'same' conv, folded BatchNorm, hardtanh) and head (average pooling,
    float linear layer) in the form `BinaryNet` runs."""
    conv, linear = model.conv1, model.linear
    return (type(model) is ResNet20 and isinstance(conv, FloatLayer) and conv.conv and conv.stride == 1
            and conv.bias is None and getattr(conv.act, "bits", None) == 32
            and conv.weight.shape[2] == conv.weight.shape[3] == 2 * conv.padding + 1
            and conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3] <= 27
            and conv.weight.shape[0] == model.blocks.unfused[0].conv1.channels
            and isinstance(model.bn1, Affine) and getattr(model.act, "fn", None) is ACTIVATIONS[model.blocks.act_bits]
            and isinstance(linear, FloatLayer) and not linear.conv and getattr(linear.act, "bits", None) == 32)


def whole_forward(model, x):
    """A fused ResNet20's forward: on the Rust backend the stem, the blocks and the head in one
    `BinaryNet` call (the stem sums as the Rust training conv does, so the blocks see the same
    signs; pooling and the classifier round in their own order); else the model's own forward."""
    blocks = model.blocks
    if kernels.get_backend() == "rust" and isinstance(blocks, FusedBlocks):
        n, c, h, w = x.shape

        def prepare():
            stem = (model.conv1.weight, model.conv1.padding, model.bn1.scale, model.bn1.shift)
            head = (model.linear.weight, model.linear.bias)
            return blocks.prepare(model.conv1.weight.shape[0], h, w, stem, head)
        net = blocks.net(("whole", c, h, w), prepare)
        if net is not None:
            return Tensor(net.run(np.ascontiguousarray(x.data, dtype=np.float32)).reshape(n, -1))
    return type(model).forward(model, x)


def shortcut_nhwc(x: np.ndarray, out_channels: int, stride: int) -> np.ndarray:
    """`resnet.shortcut_option_a` channels last: every `stride`-th pixel, new channels zero on both sides."""
    if stride == 1 and x.shape[3] == out_channels:
        return x
    x = x[:, ::stride, ::stride, :]
    extra = out_channels - x.shape[3]
    return np.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class FusedBlocks(nn.Module):
    """The blocks as one `BinaryNet` call on the Rust backend (else, 1-bit, one channels-last
    `bconv_1bit` call per conv); the original modules on NumPy."""

    def __init__(self, blocks: nn.Sequential, act_bits: int = 1):
        super().__init__()
        self.unfused, self.act_bits = blocks, act_bits
        self._nets = {}  # (c, h, w) -> the blocks prepared as one BinaryNet, or None

    def forward(self, x):
        if kernels.get_backend() != "rust":
            return self.unfused(x)
        n, c, h, w = x.shape
        net = self.net((c, h, w), lambda: self.prepare(c, h, w))
        if net is not None:
            return Tensor(net.run(np.ascontiguousarray(x.data, dtype=np.float32)))
        if self.act_bits != 1:  # the per-conv fused path is 1-bit only
            return self.unfused(x)
        x = np.ascontiguousarray(x.data.transpose(0, 2, 3, 1))  # NHWC
        bits = kernels.pack_bits(x.reshape(-1, c)).reshape(n, h, w, -1)
        last = len(self.unfused) - 1
        for i, block in enumerate(self.unfused):
            x, bits = self._block(block, x, bits, final=i == last)
        return Tensor(x.transpose(0, 3, 1, 2))

    def net(self, key, make):
        """The `BinaryNet` cached under `key` (an input shape), made by `make()` on first use."""
        if key not in self._nets:
            self._nets[key] = make()
        return self._nets[key]

    def prepare(self, c: int, h: int, w: int, stem=None, head=None):
        """The blocks as one Rust `BinaryNet` for (c, h, w) maps: the same `bconv_1bit` operands, wired
        as `_block` wires them; with `stem` and `head` (`BinaryNet`'s arguments), the whole network.
        None when a layer is outside what it runs (every conv must pad alike, have at most 3×3 taps
        and at most 64 input and output channels)."""
        convs = [conv for block in self.unfused for conv in (block.conv1, block.conv2)]
        if (len({conv.padding for conv in convs}) != 1
                or any(cv.kh * cv.kw > 9 or max(cv.channels, cv.out_features) > 64 for cv in convs)):
            return None
        plan = _Plan()
        fx, bx, size = 0, 0, (h, w)  # the input's float and bit buffers
        last = len(self.unfused) - 1
        for i, block in enumerate(self.unfused):
            fs = fx if block.stride == 1 and block.conv1.channels == block.cout else \
                plan.shortcut(fx, block.stride, block.cout)
            conv1, mid = plan.conv(block.conv1, size)
            conv2, size = plan.conv(block.conv2, mid)
            final = i == last
            if isinstance(block, BiRealBlock):
                fm, bm = plan.step(conv1, bx, fs, floats=True, signs=True)
                fx, bx = plan.step(conv2, bm, fm, floats=True, signs=not final)
            else:
                _, bh = plan.step(conv1, bx, None, floats=False, signs=True)
                fx, bx = plan.step(conv2, bh, fs, floats=True, signs=not final)
        return kernels.binary_net((c, h, w), convs[0].padding, plan.convs, plan.steps, fx, self.act_bits, stem, head)

    @staticmethod
    def _block(block, x, bits, final):
        shortcut = shortcut_nhwc(x, block.cout, block.stride)
        if isinstance(block, BiRealBlock):  # out = act(bn1(conv1(x)) + x); act(bn2(conv2(out)) + out)
            out, out_bits = _bconv(block.conv1, bits, residual=shortcut, out="both")
            return _bconv(block.conv2, out_bits, residual=out, out="float" if final else "both")
        # basic: act(bn2(conv2(act(bn1(conv1(x))))) + x); conv2 reads only the signs of act(bn1(...)),
        # and hardtanh keeps every sign
        hidden_bits = _bconv(block.conv1, bits, out="bits")
        return _bconv(block.conv2, hidden_bits, residual=shortcut, out="float" if final else "both")


class _Plan:
    """A `BinaryNet`'s convs and steps. Each step writes the lowest-numbered buffers it does not read
    (0 is the input): what a step reads was written by the step before it or is the block's input."""

    def __init__(self):
        self.convs, self.steps = [], []

    @staticmethod
    def _free(*reads) -> int:
        return min(set(range(1, len(reads) + 2)) - set(reads))

    def conv(self, conv: PackedConv2d, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """The conv's index and its output size on an input of `size`."""
        ops = conv.fused_operands(*size)
        self.convs.append((ops["weights"], conv.channels, conv.kh, conv.kw, conv.stride, ops["scale"], ops["shift"],
                           ops["correction"], ops["csr"]))
        out = tuple(conv_output_size(s, k, conv.stride, conv.padding) for s, k in zip(size, (conv.kh, conv.kw)))
        return len(self.convs) - 1, out

    def shortcut(self, src: int, stride: int, channels: int) -> int:
        dst = self._free(src)
        self.steps.append(("shortcut", src, dst, stride, channels))
        return dst

    def step(self, conv: int, bits: int, residual: int | None, *, floats: bool, signs: bool):
        """Conv `conv` on bit buffer `bits` (+ float buffer `residual`): the float and bit buffers it
        writes (None for an output it does not make)."""
        f = self._free(*([] if residual is None else [residual])) if floats else None
        b = self._free(bits) if signs else None
        self.steps.append(("conv", conv, bits, residual, f, b))
        return f, b


def _bconv(conv: PackedConv2d, bits: np.ndarray, residual=None, out="both"):
    """One packed conv (+ folded BatchNorm, + residual, hardtanh) on a packed NHWC map."""
    n, h, w, _ = bits.shape
    ops = conv.fused_operands(h, w)
    y = kernels.bconv_1bit(ops["weights"], bits, conv.channels, conv.kh, conv.kw, conv.stride, conv.padding,
                           scale=ops["scale"], shift=ops["shift"], correction=ops["correction"], csr=ops["csr"],
                           residual=residual, clip=True, out=out)
    return (y, None) if out == "float" else y
