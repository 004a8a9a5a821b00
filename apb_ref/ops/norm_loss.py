"""Fused ops whose gradients are much cheaper (and more stable) than composing primitives:
batch normalisation (alone, or followed by a residual add and an activation), log-softmax,
cross-entropy and the distillation loss."""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Context, Function, Tensor
from . import accel
from .basic import Hardtanh, ReLU


def _stat_axes(ndim: int) -> tuple[int, ...]:
    return (0,) if ndim == 2 else (0, 2, 3)


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a·b per channel (axis 1) in one pass, without an (N, C, H, W) temporary."""
    return np.einsum("nc,nc->c", a, b) if a.ndim == 2 else np.einsum("nchw,nchw->c", a, b)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _update_running(running_mean, running_var, mu, var, momentum: float, count: int) -> None:
    """Move the running statistics (if any) towards the batch's, in place."""
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += momentum * var * (count / max(count - 1, 1))  # unbiased, as PyTorch


class BatchNormTrain(Function):
    """y = γ·(x − μ_B)/sqrt(σ²_B + ε) + β with batch statistics; updates the running ones in place."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, momentum, eps):
        count = x.size // x.shape[1]
        fast = accel.kernel("batch_norm_forward", x, gamma, beta)
        if fast is not None:  # saves x and μ instead of x̂ (recomputed in the backward)
            y, mu, var, inv_std = fast(x, gamma, beta, eps)
            ctx.save_for_backward(None, inv_std, gamma, x, mu)
        else:
            mu = x.mean(axis=_stat_axes(x.ndim), dtype=x.dtype)
            xhat = x - _per_channel(mu, x.ndim)
            var = _channel_dot(xhat, xhat) / count
            inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
            xhat *= _per_channel(inv_std, x.ndim)  # normalise in place: x − μ is not needed again
            y = xhat * _per_channel(gamma, x.ndim)
            y += _per_channel(beta, x.ndim)
            ctx.save_for_backward(xhat, inv_std, gamma)
        _update_running(running_mean, running_var, mu, var, momentum, count)
        return y

    @staticmethod
    def backward(ctx, g):
        xhat, inv_std, gamma, *x_mu = ctx.saved
        if x_mu:  # the forward ran in the fast kernels
            fast = accel.kernel("batch_norm_backward", g)
            if fast is not None:
                gx, g_sum, gx_sum, _ = fast(g, x_mu[0], gamma, x_mu[1], inv_std, ctx.needs_grad[0])
                return gx, gx_sum, g_sum
            xhat = (x_mu[0] - _per_channel(x_mu[1], g.ndim)) * _per_channel(inv_std, g.ndim)  # switched off since the forward
        axes, nd = _stat_axes(g.ndim), g.ndim
        count = g.size // g.shape[1]
        g_sum = g.sum(axis=axes)
        gx_sum = _channel_dot(g, xhat)
        gx = None
        if ctx.needs_grad[0]:
            # dx = γ/σ · (g − mean(g) − x̂·mean(g·x̂)), the standard closed form
            gx = g - _per_channel(g_sum / count, nd)
            gx -= xhat * _per_channel(gx_sum / count, nd)
            gx *= _per_channel(gamma * inv_std, nd)
        return gx, gx_sum.astype(g.dtype), g_sum.astype(g.dtype)


ACTS = {"relu": (ReLU, ()), "hardtanh": (Hardtanh, None)}  # None: the (lo, hi) arguments


class BatchNormAct(Function):
    """act(batch_norm(x) + residual) as one op, residual optional, act ReLU or Hardtanh(lo, hi).

    A ResNet block ends this way. As three ops it makes three passes over the map; on the Rust
    backend one kernel does all three in one (and the backward one pass less), bit for bit the three
    ops' results there. Elsewhere it runs `BatchNormTrain`'s and the activation's own forward and
    backward one after the other, each with its own context.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, residual, running_mean, running_var, momentum, eps, act, lo, hi):
        count = x.size // x.shape[1]
        act_fn, act_args = ACTS[act]
        act_args = (lo, hi) if act_args is None else act_args
        ctx.act, ctx.lo, ctx.hi, ctx.residual = act, lo, hi, residual is not None
        fast = accel.kernel("batch_norm_forward", x, gamma, beta, *(() if residual is None else (residual,)))
        if fast is not None:
            y, mu, var, inv_std = fast(x, gamma, beta, eps, residual=residual, act=act, lo=lo, hi=hi)
            ctx.save_for_backward(x, mu, inv_std, gamma, y)
            _update_running(running_mean, running_var, mu, var, momentum, count)
            return y
        ctx.bn, ctx.act_ctx = Context(ctx.needs_grad[:3]), Context((True,))
        y = BatchNormTrain.forward(ctx.bn, x, gamma, beta, running_mean, running_var, momentum, eps)
        return act_fn.forward(ctx.act_ctx, y if residual is None else y + residual, *act_args)

    @staticmethod
    def backward(ctx, g):
        act_fn = ACTS[ctx.act][0]
        if hasattr(ctx, "bn"):  # the forward ran op by op
            g = act_fn.backward(ctx.act_ctx, g)
            return (*BatchNormTrain.backward(ctx.bn, g), g if ctx.residual else None)
        x, mu, inv_std, gamma, y = ctx.saved
        fast = accel.kernel("batch_norm_backward", g)
        if fast is not None:
            gx, g_sum, gx_sum, g_act = fast(g, x, gamma, mu, inv_std, ctx.needs_grad[0], y=y, act=ctx.act,
                                            lo=ctx.lo, hi=ctx.hi)
            return gx, gx_sum, g_sum, g_act if ctx.residual else None
        # the Rust backend was switched off since the forward: the activation's and BatchNormTrain's
        # backward from what the fused forward kept
        act_ctx, bn = Context((True,)), Context(ctx.needs_grad[:3])
        act_ctx.save_for_backward(y)
        act_ctx.lo, act_ctx.hi = ctx.lo, ctx.hi
        bn.save_for_backward(None, inv_std, gamma, x, mu)
        g = act_fn.backward(act_ctx, g)
        return (*BatchNormTrain.backward(bn, g), g if ctx.residual else None)


def batch_norm_act(x, weight, bias, running_mean, running_var, momentum: float = 0.1, eps: float = 1e-5,
                   residual=None, act: str = "relu", lo: float = -1.0, hi: float = 1.0) -> Tensor:
    """act(batch_norm(x) + residual) in training mode (batch statistics) as one op (`BatchNormAct`)."""
    if act not in ACTS:
        raise ValueError(f"batch_norm_act: act must be one of {', '.join(ACTS)}, got {act!r}")
    if x.ndim not in (2, 4) or x.size // max(x.shape[1], 1) < 2:
        raise ValueError(f"batch_norm_act: x must be (N, C) or (N, C, H, W) with more than one value per "
                         f"channel, got shape {x.shape}")
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"batch_norm_act: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    c = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm_act: {name} must have shape ({c},), got {tuple(v.shape)}")
    if act == "hardtanh" and not np.float32(lo) < np.float32(hi):  # the kernels clip in float32
        raise ValueError(f"batch_norm_act: need lo < hi (as float32), got {lo} and {hi}")
    weight = weight if weight is not None else np.ones(c, x.dtype)  # as batch_norm: no affine
    bias = bias if bias is not None else np.zeros(c, x.dtype)
    return BatchNormAct.apply(x, weight, bias, residual, running_mean, running_var, momentum, eps, act, lo, hi)


def fuses_batch_norm(x) -> bool:
    """Whether `batch_norm_act` on x would run one fused kernel (elsewhere the separate ops do the same work)."""
    return accel.kernel("batch_norm_forward", x.data if isinstance(x, Tensor) else np.asarray(x)) is not None


class BatchNormEval(Function):
    """y = γ·(x − μ_run)/sqrt(σ²_run + ε) + β: an affine map per channel."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, eps):
        inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype)
        shift = _per_channel(running_mean, x.ndim)
        ctx.save_for_backward(x, shift, inv_std, gamma)
        fast = accel.kernel("batch_norm_eval", x, running_mean, gamma, beta)
        if fast is not None:
            return fast(x, running_mean, gamma * inv_std, beta)
        scale = _per_channel(gamma * inv_std, x.ndim)
        return (x - shift) * scale + _per_channel(beta, x.ndim)

    @staticmethod
    def backward(ctx, g):
        x, shift, inv_std, gamma = ctx.saved
        axes, nd = _stat_axes(g.ndim), g.ndim
        xhat = (x - shift) * _per_channel(inv_std, nd)
        gx = g * _per_channel(gamma * inv_std, nd) if ctx.needs_grad[0] else None
        return gx, (g * xhat).sum(axis=axes), g.sum(axis=axes)


def batch_norm(x, weight, bias, running_mean: np.ndarray | None, running_var: np.ndarray | None,
               training: bool, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalisation over (N,) for (N, C) inputs or (N, H, W) for (N, C, H, W) inputs."""
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},), got {tuple(v.shape)}")
    dtype = x.dtype
    weight = weight if weight is not None else np.ones(c, dtype)
    bias = bias if bias is not None else np.zeros(c, dtype)
    if training:
        if x.size // c < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, got input shape {x.shape}")
        return BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
    return BatchNormEval.apply(x, weight, bias, running_mean, running_var, eps)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y, axis)
        return y

    @staticmethod
    def backward(ctx, g):
        y, axis = ctx.saved
        return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


def log_softmax(x, axis: int = -1) -> Tensor:
    return LogSoftmax.apply(x, axis)


class CrossEntropy(Function):
    """Mean over the batch of −Σ_k t_k·log softmax(z)_k, with t = (1−ε)·onehot(y) + ε/K."""

    @staticmethod
    def forward(ctx, logits, target, smoothing):
        n, k = logits.shape
        fast = accel.kernel("cross_entropy_forward", logits)
        # a Python number ε (NumPy rounds ε/K and 1 − ε to float32; NumPy floats would add in float64)
        if fast is not None and type(smoothing) in (int, float):
            ctx.target = np.asarray(target, dtype=np.int64)
            ctx.smoothing = smoothing
            total, logp = fast(logits, ctx.target, smoothing / k, 1.0 - smoothing)
            ctx.save_for_backward(logp, None)  # t is formed again in backward
            return np.asarray(-np.float32(total) / n, dtype=logits.dtype)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        t = np.full((n, k), smoothing / k, dtype=logits.dtype)
        t[np.arange(n), target] += 1.0 - smoothing
        ctx.save_for_backward(logp, t)
        return np.asarray(-(t * logp).sum() / n, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        logp, t = ctx.saved
        if t is None:
            (n, k), smoothing = logp.shape, ctx.smoothing
            fast = accel.kernel("cross_entropy_backward", logp)
            if fast is not None and getattr(g, "dtype", None) == np.float32 and np.ndim(g) == 0:
                return fast(float(g), logp, ctx.target, smoothing / k, 1.0 - smoothing), None
            t = np.full((n, k), smoothing / k, dtype=logp.dtype)
            t[np.arange(n), ctx.target] += 1.0 - smoothing
        return g * (np.exp(logp) - t) / logp.shape[0], None


def cross_entropy(logits, target, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of (N, K) logits against (N,) integer class labels."""
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, K), got shape {logits.shape}")
    if target.shape != (logits.shape[0],) or target.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: target must be ({logits.shape[0]},) integers, got shape {target.shape} dtype {target.dtype}")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"cross_entropy: target labels must lie in [0, {logits.shape[1]}), got range [{target.min()}, {target.max()}]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    return CrossEntropy.apply(logits, target, label_smoothing)


class Distillation(Function):
    """Knowledge distillation (Hinton et al. 2015): T²·mean over the batch of −Σ_k q_k·log softmax(z/T)_k,
    q = softmax(teacher/T) a constant. Its gradient, T·(softmax(z/T) − q)/N, is that of T²·KL(q ‖ p)."""

    @staticmethod
    def forward(ctx, logits, teacher, temperature):
        n = logits.shape[0]
        logp = _log_softmax_rows(logits / temperature)
        q = np.exp(_log_softmax_rows(teacher / temperature)).astype(logits.dtype)
        ctx.save_for_backward(logp, q, temperature)
        return np.asarray(-(temperature ** 2) * (q * logp).sum() / n, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        logp, q, temperature = ctx.saved
        return (g * temperature * (np.exp(logp) - q) / logp.shape[0]).astype(logp.dtype), None


def _log_softmax_rows(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def distillation(logits, teacher_logits, temperature: float = 1.0) -> Tensor:
    """The distillation loss of (N, K) student logits against a teacher's (N, K) logits (no gradient
    to the teacher) at `temperature` > 0."""
    teacher = np.asarray(teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits)
    if logits.ndim != 2 or teacher.shape != logits.shape:
        raise ValueError(f"distillation: student and teacher logits must be the same (N, K), got {logits.shape} "
                         f"and {teacher.shape}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"distillation: temperature must be a finite number > 0, got {temperature!r}")
    return Distillation.apply(logits, teacher, float(temperature))
