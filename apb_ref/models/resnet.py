"""ResNet-20 for 32×32 images (He et al. 2016, CIFAR variant): 16/32/64 channels, three stages of
three blocks, parameter-free "option A" shortcuts (subsample + zero-pad channels).

Two blocks (`block=`):
- "basic": He et al.'s block, one shortcut around two convs: act(bn2(conv2(act(bn1(conv1(x))))) + x).
- "bireal": Bi-Real Net's block (Liu et al., ECCV 2018): a real-valued shortcut around *every* conv,
  out = act(bn1(conv1(x)) + x), then act(bn2(conv2(out)) + out), so the float signal that a 1-bit
  conv's sign throws away is carried past it. Bi-Real downsamples its shortcut with an average pool
  and a 1×1 conv; here it stays option A, parameter-free, as in the basic block.

`react=True` adds ReActNet's learned activations (Liu et al., ECCV 2020) to either block: a learned
threshold per channel before each compressed conv (RSign: the conv's sign reads x − b) and RPReLU
(PReLU(x − γ) + ζ per channel) in place of the block's two activations.

`act_scale=True` multiplies each compressed conv's output by XNOR-Net's activation scale K (Rastegari
et al., ECCV 2016; `nn.ActivationScale`), computed from the input its sign reads. The BatchNorm after
such a conv then reads conv·K, so packed inference does not fold it into the conv.
"""
from __future__ import annotations

from .. import ops as F
from .. import nn
from ..quant import LayerFactory


def _identity() -> nn.Module:
    return nn.Lambda(lambda x: x, "identity")  # a block's shift without react: nothing to learn or store


def shortcut_option_a(x, out_channels: int, stride: int):
    """Identity, or take every `stride`-th pixel and zero-pad the new channels on both sides."""
    if stride == 1 and x.shape[1] == out_channels:
        return x
    x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    return F.pad(x, ((0, 0), (extra // 2, extra - extra // 2), (0, 0), (0, 0)))


class BasicBlock(nn.Module):
    # BatchNorms that read nothing but their conv's output (packed inference folds them into it)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, layers: LayerFactory, cin: int, cout: int, stride: int, act: str, react: bool = False,
                 act_scale: bool = False):
        super().__init__()
        self.shift1 = nn.ChannelShift(cin) if react else _identity()
        self.conv1 = layers.conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.shift2 = nn.ChannelShift(cout) if react else _identity()
        self.conv2 = layers.conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = (nn.RPReLU(cout), nn.RPReLU(cout)) if react else (nn.activation(act), nn.activation(act))
        self.scale1 = nn.ActivationScale(3, stride, 1) if act_scale else None
        self.scale2 = nn.ActivationScale(3, 1, 1) if act_scale else None
        if act_scale:
            self.conv_bn_pairs = ()  # each BatchNorm reads conv·K, not the conv alone
        self.cout, self.stride = cout, stride

    @staticmethod
    def _conv(conv, scale, x):
        """conv(x), times the activation scale K(x) when the block has one."""
        y = conv(x)
        return y if scale is None else y * scale(x)

    def forward(self, x):
        out = nn.batch_norm_act(self.bn1, self._conv(self.conv1, self.scale1, self.shift1(x)), self.act1)
        out = self._conv(self.conv2, self.scale2, self.shift2(out))
        return nn.batch_norm_act(self.bn2, out, self.act2, shortcut_option_a(x, self.cout, self.stride))


class BiRealBlock(BasicBlock):
    def forward(self, x):
        out = self._conv(self.conv1, self.scale1, self.shift1(x))
        out = nn.batch_norm_act(self.bn1, out, self.act1, shortcut_option_a(x, self.cout, self.stride))
        return nn.batch_norm_act(self.bn2, self._conv(self.conv2, self.scale2, self.shift2(out)), self.act2, out)


BLOCKS = {"basic": BasicBlock, "bireal": BiRealBlock}


class ResNet20(nn.Module):
    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, layers: LayerFactory, num_classes: int = 10, in_channels: int = 3,
                 act: str = "relu", widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 3,
                 block: str = "basic", react: bool = False, act_scale: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"ResNet20: block must be one of {', '.join(BLOCKS)}, got {block!r}")
        self.conv1 = layers.conv(in_channels, widths[0], 3, 1, 1, compress=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.activation(act)
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                stages.append(BLOCKS[block](layers, cin, width, 2 if (b == 0 and i > 0) else 1, act, react,
                                             act_scale))
                cin = width
        self.blocks = nn.Sequential(*stages)
        self.linear = layers.linear(widths[-1], num_classes, compress=False)

    def forward(self, x):
        x = nn.batch_norm_act(self.bn1, self.conv1(x), self.act)
        x = self.blocks(x)
        return self.linear(F.global_avg_pool2d(x))
