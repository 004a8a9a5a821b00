"""Lowering helpers shared by the conv ops and the kernel oracles: the sign convention, spatial
padding, strided windows, the conv output size and the im2col copy. Plain NumPy, no autograd."""
from __future__ import annotations

import numpy as np

from .parallel import over_slices


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = sign(−0.0) = +1 (the bit convention: the value pack_bits packs), in x's dtype."""
    return np.where(x < 0, np.array(-1, x.dtype), np.array(1, x.dtype))  # no float64 temporary


def conv_output_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output positions along one axis of a convolution or pooling window (the one formula)."""
    return (size + 2 * padding - k) // stride + 1


def pad_hw(x: np.ndarray, pad_h: int, pad_w: int | None = None, value: float = 0.0) -> np.ndarray:
    """Constant-pad the two spatial axes (np.pad is several times slower for this one case)."""
    pad_w = pad_h if pad_w is None else pad_w
    if pad_h == 0 and pad_w == 0:
        return x
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * pad_h, w + 2 * pad_w), value, dtype=x.dtype)
    xp[:, :, pad_h:pad_h + h, pad_w:pad_w + w] = x
    return xp


def window(start: int, count: int, stride: int) -> slice:
    """The `count` positions start, start+stride, ... as a slice."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def im2col_columns(xp: np.ndarray, kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """(C·kh·kw, N·Ho·Wo) lowering of an already padded (N, C, Hp, Wp) array, rows ordered (c, i, j)
    like weight.reshape(O, -1); no checks. Channels are copied in slices on all cores: the copy is
    memory-bound and bounds the speed of a NumPy conv."""
    n, c = xp.shape[:2]
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=xp.dtype)

    def fill(cs: slice) -> None:
        for i in range(kh):
            for j in range(kw):
                cols[cs, i, j] = xp[:, cs, window(i, ho, stride), window(j, wo, stride)].swapaxes(0, 1)
    over_slices(fill, c, cols.size)
    return cols.reshape(c * kh * kw, n * ho * wo)
