"""Training-time augmentation and normalization, vectorized over the batch (no Python loop over images)."""
from __future__ import annotations

import numpy as np

__all__ = ["random_crop_flip", "normalize"]


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, padding: int = 4, flip: bool = True) -> np.ndarray:
    """Random crop after zero padding, plus random horizontal flip, per image.

    x: (B, C, H, W) float. Each image is zero-padded by ``padding`` on every side, a window of the
    original size is taken at an offset drawn uniformly from [0, 2*padding] in each axis, and with
    probability 1/2 the window is mirrored left-right. Randomness, in this order: row offsets (B,),
    column offsets (B,), flips (B,), all from ``rng``. Returns a new float32 (B, C, H, W) C-contiguous array.
    """
    b, c, h, w = x.shape
    rows = np.broadcast_to(np.arange(h), (b, h))
    cols = np.broadcast_to(np.arange(w), (b, w))
    src = x
    if padding > 0:
        src = np.zeros((b, c, h + 2 * padding, w + 2 * padding), dtype=np.float32)
        src[:, :, padding:padding + h, padding:padding + w] = x
        rows = rows + rng.integers(0, 2 * padding + 1, size=b)[:, None]
        cols = cols + rng.integers(0, 2 * padding + 1, size=b)[:, None]
    if flip:
        mirrored = rng.random(b) < 0.5
        # Reversing the column index of the window is a flip of the cropped image.
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    # One gather: out[i, ch, r, q] = src[i, ch, rows[i, r], cols[i, q]].
    out = src[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel (axis 1), float32. mean, std: float32 (C,) or (1,)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32, copy=False)
