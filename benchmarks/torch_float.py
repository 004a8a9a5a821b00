"""The float ResNet-20 in PyTorch, for the benchmarks' optional PyTorch column (never a dependency).

The same network as `apb_ref.models.resnet` with basic blocks: 16/32/64 channels, three stages of three
blocks, BatchNorm + ReLU, parameter-free option-A shortcuts (subsample, zero-pad channels), global
average pool, a linear classifier. `available()` says whether torch imports.
"""
from __future__ import annotations

import os


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resnet20(in_channels: int = 3, num_classes: int = 10):
    """A freshly initialised float32 ResNet-20 (torch.nn.Module)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.cout, self.stride = cout, stride

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x
            if self.stride != 1 or x.shape[1] != self.cout:
                shortcut = x[:, :, ::self.stride, ::self.stride]
                extra = self.cout - shortcut.shape[1]
                shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, extra // 2, extra - extra // 2))
            return torch.relu(out + shortcut)

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(3):
                    blocks.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.linear = nn.Linear(64, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.linear(self.blocks(x).mean(dim=(2, 3)))

    return ResNet20()


def set_threads() -> int:
    """Give torch the thread count the Rust kernels use (APB_NUM_THREADS, else every core); returns it."""
    import torch
    n = int(os.environ.get("APB_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def inference(in_channels: int = 1, num_classes: int = 10):
    """A callable running the eval-mode model on an NCHW float32 NumPy batch without autograd."""
    import torch
    set_threads()
    model = resnet20(in_channels, num_classes).eval()

    def forward(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return forward
