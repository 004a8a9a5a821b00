"""Mini-batch iteration: seeded shuffling, optional augmentation, per-channel normalization."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .augment import normalize, random_crop_flip

__all__ = ["batches", "num_batches"]


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batches` yields for ``n`` samples."""
    n = _positive_int("n", n, 0)
    batch_size = _positive_int("batch_size", batch_size, 1)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def _channel_vector(name: str, value, channels: int) -> np.ndarray:
    v = np.asarray(value, dtype=np.float32).reshape(-1)
    if v.size not in (1, channels):
        raise ValueError(f"{name}: expected a scalar or {channels} per-channel values, got shape {np.shape(value)}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values, got {v}")
    return v


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, rng: np.random.Generator | None = None,
            augment: bool = False, mean=None, std=None, crop_padding: int = 4,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(x_batch, y_batch)``: float32 C-contiguous (b, C, H, W) and int64 (b,).

    rng: if given, the order is ``rng.permutation(N)`` (same seed -> same batches, bit for bit);
        otherwise the stored order. Augmentation also draws from it, batch by batch.
    augment: random crop (zero padding ``crop_padding``) + horizontal flip; needs ``rng`` and 4-D ``x``.
    mean, std: if given (both), each batch becomes ``(x - mean) / std`` per channel, after augmentation
        (so padded borders normalize like black pixels, as in torchvision).
    drop_last: drop a final batch smaller than ``batch_size``; see `num_batches`.

    Arguments are checked when called (not at the first ``next``), with ValueErrors naming the argument.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    batch_size = _positive_int("batch_size", batch_size, 1)
    crop_padding = _positive_int("crop_padding", crop_padding, 0)
    if x.ndim < 2:
        raise ValueError(f"x: expected an array of samples (N, C, ...) with ndim >= 2, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y: expected shape ({len(x)},) to match x's {len(x)} samples, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or len(y) == 0):
        raise ValueError(f"y: expected integer labels, got dtype {y.dtype}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected None or a numpy.random.Generator, got {type(rng).__name__}")
    if augment:
        if rng is None:
            raise ValueError("rng: augment=True needs a numpy.random.Generator for its randomness, got None")
        if x.ndim != 4:
            raise ValueError(f"x: augment=True expects images (N, C, H, W), got shape {x.shape}")
    if (mean is None) != (std is None):
        raise ValueError(f"mean, std: expected both or neither, got mean={'set' if mean is not None else None}, "
                         f"std={'set' if std is not None else None}")
    if mean is not None:
        mean = _channel_vector("mean", mean, x.shape[1])
        std = _channel_vector("std", std, x.shape[1])
        if np.any(std <= 0):
            raise ValueError(f"std: expected values > 0, got {std}")
    return _iterate(x, y, batch_size, rng, bool(augment), mean, std, crop_padding, bool(drop_last))


def _iterate(x, y, batch_size, rng, augment, mean, std, crop_padding, drop_last):
    n = len(x)
    order = rng.permutation(n) if rng is not None else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            # Slices are views: astype copies, so callers may modify a batch without touching x.
            xb, yb = x[start:start + batch_size].astype(np.float32), y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx].astype(np.float32, copy=False), y[idx]  # fancy indexing already copied
        if augment:
            xb = random_crop_flip(xb, rng, crop_padding)
        if mean is not None:
            xb = normalize(xb, mean, std)
        yield np.ascontiguousarray(xb, dtype=np.float32), yb.astype(np.int64)
