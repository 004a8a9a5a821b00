"""A small CNN for 8×8 digits: three 3×3 convs (32-64-128) with BatchNorm, two 2×2 max-pools and
a linear head. Trains to ~98% on scikit-learn's digits in seconds on a CPU."""
from __future__ import annotations

from .. import nn
from ..quant import LayerFactory


class DigitsCNN(nn.Module):
    def __init__(self, layers: LayerFactory, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 act: str = "relu", widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"digits_cnn: image_size must be a multiple of 4 (two 2×2 pools), got {image_size}; "
                             f"pad the images with --pad-to {-(-image_size // 4) * 4}")
        a, b, c = widths
        self.features = nn.Sequential(
            layers.conv(in_channels, a, 3, 1, 1, compress=False), nn.BatchNorm2d(a), nn.activation(act),
            layers.conv(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.activation(act), nn.MaxPool2d(2),
            layers.conv(b, c, 3, 1, 1), nn.BatchNorm2d(c), nn.activation(act), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = layers.linear(c * (image_size // 4) ** 2, num_classes, compress=False)

    def forward(self, x):
        return self.fc(self.features(x))
