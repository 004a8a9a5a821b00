"""VGG-Small (Zhang et al. 2018, LQ-Nets; as in IR-Net): 128-128-256-256-512-512 3×3 convs,
a 2×2 max-pool after every second conv, BatchNorm and an activation after each, one linear head."""
from __future__ import annotations

from .. import nn
from ..quant import LayerFactory


class VGGSmall(nn.Module):
    def __init__(self, layers: LayerFactory, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 act: str = "relu", widths: tuple[int, ...] = (128, 128, 256, 256, 512, 512)):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"vgg_small: image_size must be a multiple of 8 (three 2×2 pools), got {image_size}; "
                             f"pad the images with --pad-to {-(-image_size // 8) * 8}")
        body, cin = [], in_channels
        for i, width in enumerate(widths):
            body.append(layers.conv(cin, width, 3, 1, 1, compress=i > 0))
            if i % 2 == 1:
                body.append(nn.MaxPool2d(2))
            body += [nn.BatchNorm2d(width), nn.activation(act)]
            cin = width
        self.features = nn.Sequential(*body, nn.Flatten())
        self.fc = layers.linear(cin * (image_size // 8) ** 2, num_classes, compress=False)

    def forward(self, x):
        return self.fc(self.features(x))
