"""2-D convolution and pooling on NCHW tensors, vectorised with strided slices (no loops over pixels
or batch items; the only Python loops run over kernel offsets).

Two ways to lower a convolution to matrix products, both exact:

* ``im2col`` (any stride): copy every kernel offset's view of the padded input into a matrix
  ``cols`` of shape (C·kh·kw, N·Ho·Wo) and do one GEMM ``W (O, C·kh·kw) @ cols``.
* ``rowshift`` (stride 1, the common case): copy only the kw *horizontal* shifts into a matrix of
  shape (C·kw, N·Hp·Wo), flattened so that moving the kernel down one row is moving the slice start
  by Wo columns. The conv is then kh GEMMs on overlapping column slices of that one matrix. It
  writes kh times less memory than im2col, which is what bounds CPU speed at these sizes; the price
  is computing (Hp − Ho) throw-away rows per image. Both are gradient-checked.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from . import accel
from .lowering import conv_output_size, im2col_columns, pad_hw, window
from .parallel import over_slices

ALGORITHMS = ("auto", "im2col", "rowshift")


def _swap01(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` with its first two axes swapped ((O, N, …) <-> (N, O, …)),
    copied in slices on all cores: these strided copies bound the speed of a NumPy conv."""
    out = np.empty((a.shape[1], a.shape[0]) + a.shape[2:], dtype=a.dtype)
    over_slices(lambda s: np.copyto(out[s], a[:, s].swapaxes(0, 1)), out.shape[0], a.size)
    return out


class Conv2dIm2col(Function):
    """Its array work runs in the training backend's kernels when those are on (`accel`): the same
    im2col lowering, one image at a time, with no transposes between layouts."""

    @staticmethod
    def forward(ctx, x, w, stride, padding):
        fast = accel.kernel("conv2d_forward", x, w)
        if fast is not None:
            ctx.save_for_backward(None, w, x.shape, stride, padding, x)
            return fast(x, w, stride, padding)
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(wd, kw, stride, padding)
        cols = im2col_columns(pad_hw(x, padding), kh, kw, stride, ho, wo)  # (C·kh·kw, N·Ho·Wo)
        y = w.reshape(o, -1) @ cols  # (O, N·Ho·Wo)
        ctx.save_for_backward(cols, w, x.shape, stride, padding)
        return _swap01(y.reshape(o, n, ho, wo))

    @staticmethod
    def backward(ctx, g):
        cols, w, x_shape, stride, padding, *x = ctx.saved
        n, c, h, wd = x_shape
        o, _, kh, kw = w.shape
        ho, wo = g.shape[2:]
        if x:  # the forward ran in the fast kernels: so do both products
            both = accel.kernel("conv2d_backward", g) if ctx.needs_grad[0] and ctx.needs_grad[1] else None
            if both is not None:  # one pass over g for the two
                gx, gw = both(x[0], g, w, stride, padding)
                return gx, gw
            weight_grad, input_grad = (accel.kernel(f"conv2d_backward_{of}", g) for of in ("weight", "input"))
            if weight_grad is not None and input_grad is not None:
                gw = weight_grad(x[0], g, kh, kw, stride, padding) if ctx.needs_grad[1] else None
                gx = input_grad(g, w, h, wd, stride, padding) if ctx.needs_grad[0] else None
                return gx, gw
            cols = im2col_columns(pad_hw(x[0], padding), kh, kw, stride, ho, wo)  # switched off since the forward
        g2 = _swap01(g).reshape(o, -1)
        gw = (cols @ g2.T).T.reshape(w.shape) if ctx.needs_grad[1] else None
        gx = None
        if ctx.needs_grad[0]:
            dcols = (w.reshape(o, -1).T @ g2).reshape(c, kh, kw, n, ho, wo)
            dxp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=g.dtype)
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, window(i, ho, stride), window(j, wo, stride)] += dcols[:, i, j].transpose(1, 0, 2, 3)
            gx = np.ascontiguousarray(dxp[:, :, padding:padding + h, padding:padding + wd])
        return gx, gw


def _fill_shifted(grid: np.ndarray, x: np.ndarray, pad_h: int, pad_w: int) -> None:
    """grid[c, j, n, r, t] = x_padded[n, c, r, t + j]: the kw horizontal shifts of the zero-padded
    input, written straight from x (padding a copy first would cost one more pass)."""
    h, w = x.shape[2:]
    wo = grid.shape[-1]
    xt = x.transpose(1, 0, 2, 3)
    grid[:, :, :, :pad_h] = 0
    grid[:, :, :, pad_h + h:] = 0
    for j in range(grid.shape[1]):
        shift = j - pad_w  # output column t reads input column t + shift
        lo, hi = max(0, -shift), min(wo, w - shift)
        rows = grid[:, j, :, pad_h:pad_h + h]
        rows[..., :lo] = 0
        rows[..., hi:] = 0
        rows[..., lo:hi] = xt[..., lo + shift:hi + shift]


def _rowshift(x: np.ndarray, w: np.ndarray, pad_h: int, pad_w: int):
    """Stride-1 convolution by row shifts. Returns y (N, O, Ho, Wo) and the `shifted` matrix."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    hp, ho, wo = h + 2 * pad_h, h + 2 * pad_h - kh + 1, wd + 2 * pad_w - kw + 1
    length = n * hp * wo  # output computed on every padded row; rows >= ho are discarded
    # rows of `shifted`: (channel, horizontal shift); columns: (image, padded row, output column),
    # plus a zero margin so that the slice for the lowest kernel row stays inside the buffer.
    shifted = np.empty((c * kw, length + (kh - 1) * wo), dtype=x.dtype)
    shifted[:, length:] = 0
    grid = shifted[:, :length].reshape(c, kw, n, hp, wo)
    over_slices(lambda cs: _fill_shifted(grid[cs], x[:, cs], pad_h, pad_w), c, grid.size)
    y = np.ascontiguousarray(w[:, :, 0, :]).reshape(o, c * kw) @ shifted[:, :length]
    for i in range(1, kh):  # kernel row i reads the same matrix i output rows further on
        y += np.ascontiguousarray(w[:, :, i, :]).reshape(o, c * kw) @ shifted[:, i * wo:i * wo + length]
    return _swap01(y.reshape(o, n, hp, wo)[:, :, :ho]), shifted


class Conv2dRowShift(Function):
    @staticmethod
    def forward(ctx, x, w, padding):
        y, shifted = _rowshift(x, w, padding, padding)
        ctx.save_for_backward(shifted, w, x.shape, padding)
        return y

    @staticmethod
    def backward(ctx, g):
        shifted, w, x_shape, padding = ctx.saved
        n, c, h, wd = x_shape
        o, _, kh, kw = w.shape
        ho, wo = g.shape[2:]
        hp = h + 2 * padding
        length = n * hp * wo
        gw = None
        if ctx.needs_grad[1]:
            g_grid = np.empty((o, n, hp, wo), dtype=g.dtype)
            g_grid[:, :, ho:] = 0  # the discarded rows contribute nothing
            over_slices(lambda s: np.copyto(g_grid[s, :, :ho], g[:, s].swapaxes(0, 1)), o, g.size)
            g_grid = g_grid.reshape(o, length)
            gw = np.empty(w.shape, dtype=g.dtype)
            for i in range(kh):
                # (shifted @ gᵀ)ᵀ rather than g @ shiftedᵀ: BLAS is ~3x faster with the long axis inside
                gw[:, :, i, :] = (shifted[:, i * wo:i * wo + length] @ g_grid.T).T.reshape(o, c, kw)
        gx = None
        if ctx.needs_grad[0]:
            # The input gradient of a stride-1 conv is a "full" conv of g with the kernel rotated
            # by 180° and its in/out channels swapped: the same row-shift routine serves.
            w_flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            gx, _ = _rowshift(g, w_flipped, kh - 1 - padding, kw - 1 - padding)
        return gx, gw


def conv2d(x, w, bias=None, stride: int = 1, padding: int = 0, algorithm: str = "auto") -> Tensor:
    """y[n, o] = Σ_c x[n, c] ⋆ w[o, c] (+ bias[o]); x (N, C, H, W), w (O, C, kh, kw)."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d: x must be (N, C, H, W) and w (O, C, kh, kw), got shapes {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels but w expects {w.shape[1]} (w shape {w.shape})")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d: need stride >= 1 and padding >= 0, got stride={stride} padding={padding}")
    if conv_output_size(x.shape[2], w.shape[2], stride, padding) < 1 or conv_output_size(x.shape[3], w.shape[3], stride, padding) < 1:
        raise ValueError(f"conv2d: kernel {w.shape[2:]} does not fit input {x.shape[2:]} with padding {padding}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    rowshift_fits = stride == 1 and padding < min(w.shape[2], w.shape[3])
    if algorithm == "rowshift" and not rowshift_fits:
        raise ValueError(f"conv2d: algorithm 'rowshift' needs stride 1 and padding < kernel size, got stride={stride} padding={padding}")
    fast = accel.kernel("conv2d_forward", x.data if isinstance(x, Tensor) else np.asarray(x)) is not None
    if algorithm == "rowshift" or (algorithm == "auto" and rowshift_fits and w.shape[2] > 1 and not fast):
        y = Conv2dRowShift.apply(x, w, padding)
    else:
        y = Conv2dIm2col.apply(x, w, stride, padding)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


# --- pooling -----------------------------------------------------------------------------------
def _windows(xp: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(N, C, Ho, Wo, k·k) copy of every pooling window."""
    view = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return view.reshape(view.shape[:4] + (k * k,))


class MaxPool2d(Function):
    @staticmethod
    def forward(ctx, x, k, stride, padding):
        fast = accel.kernel("max_pool_forward", x)
        if fast is not None:
            y, winner = fast(x, k, stride, padding)
            ctx.save_for_backward(winner, x.shape, k, stride, padding)
            return y
        windows = _windows(pad_hw(x, padding, value=-np.inf), k, stride)
        winner = windows.argmax(axis=-1)
        ctx.save_for_backward(winner, x.shape, k, stride, padding)
        return np.take_along_axis(windows, winner[..., None], axis=-1)[..., 0]

    @staticmethod
    def backward(ctx, g):
        winner, (n, c, h, w), k, stride, padding = ctx.saved
        fast = accel.kernel("max_pool_backward", g)
        if fast is not None and winner.dtype == np.int64:
            return fast(g, winner, h, w, k, stride, padding)
        ho, wo = g.shape[2:]
        dxp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=g.dtype)
        for idx in range(k * k):  # overlapping windows add up
            i, j = divmod(idx, k)
            dxp[:, :, window(i, ho, stride), window(j, wo, stride)] += g * (winner == idx)
        return dxp[:, :, padding:padding + h, padding:padding + w]


class AvgPool2d(Function):
    """Mean over each window, zero padding counted (PyTorch's count_include_pad=True)."""

    @staticmethod
    def forward(ctx, x, k, stride, padding):
        ctx.save_for_backward(x.shape, k, stride, padding)
        fast = accel.kernel("avg_pool_forward", x)
        if fast is not None:
            return fast(x, k, stride, padding)
        return _windows(pad_hw(x, padding), k, stride).mean(axis=-1, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        (n, c, h, w), k, stride, padding = ctx.saved
        fast = accel.kernel("avg_pool_backward", g)
        if fast is not None:
            return fast(g, h, w, k, stride, padding)
        ho, wo = g.shape[2:]
        share = g / np.asarray(k * k, dtype=g.dtype)
        dxp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=g.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, :, window(i, ho, stride), window(j, wo, stride)] += share
        return dxp[:, :, padding:padding + h, padding:padding + w]


def _check_pool(name: str, x, k: int, stride: int, padding: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: x must be (N, C, H, W), got shape {x.shape}")
    if k < 1 or stride < 1 or padding < 0 or padding > k // 2:
        raise ValueError(f"{name}: need kernel >= 1, stride >= 1, 0 <= padding <= kernel//2; got {k}, {stride}, {padding}")
    if min(x.shape[2:]) + 2 * padding < k:
        raise ValueError(f"{name}: kernel {k} is larger than the padded input {x.shape[2:]}")


def max_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0) -> Tensor:
    stride = kernel_size if stride is None else stride
    _check_pool("max_pool2d", x, kernel_size, stride, padding)
    return MaxPool2d.apply(x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size: int, stride: int | None = None, padding: int = 0) -> Tensor:
    stride = kernel_size if stride is None else stride
    _check_pool("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2d.apply(x, kernel_size, stride, padding)


def global_avg_pool2d(x) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean over every spatial position."""
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d: x must be (N, C, H, W), got shape {x.shape}")
    return x.mean(axis=(2, 3))
