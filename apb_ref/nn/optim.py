"""Optimizers (SGD, Adam, AdamW) and epoch-based learning-rate schedules, with PyTorch semantics.

A *parameter* is any object with two attributes (duck typing):

    .data   np.ndarray (float32 or float64) — updated IN PLACE, never rebound
    .grad   np.ndarray of the same shape, or None ("no gradient this step": the parameter is skipped)

and optionally `.name` (used in error messages). Updates keep the parameter's dtype: the gradient
is cast to it, the optimizer state is kept in it, and Python-float hyper-parameters are "weak"
scalars under NumPy 2, so float32 stays float32. Same inputs give the same numbers bit for bit.

Per-parameter state is keyed by position, ``(group index, parameter index)``, so a checkpoint made
with `state_dict()` resumes bit for bit in a fresh optimizer built over the same parameter list.

Typical loop::

    opt = build_optimizer("sgd", model.parameters(), lr=0.1, weight_decay=5e-4)
    sched = build_scheduler("cosine", opt, epochs=200, warmup=5)   # sets the epoch-0 lr
    for epoch in range(200):
        for batch in loader:
            opt.zero_grad(); loss(batch).backward(); opt.step()
        sched.step()                                               # lr for the next epoch
"""
from __future__ import annotations

import bisect
import copy
import math
from typing import Any, Callable, Iterable

import numpy as np

from ..ops import accel

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW",
    "LRScheduler", "ConstantLR", "CosineLR", "StepLR", "WarmupLR",
    "build_optimizer", "build_scheduler",
]


def _number(name: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """`float(value)` if `ok` accepts it, else ValueError naming the argument (NaN is always rejected)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not ok(x):  # every comparison with NaN is False
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return x


def _label(p: Any, gi: int, pi: int) -> str:
    name = getattr(p, "name", None)
    return f"param_groups[{gi}]['params'][{pi}]" + (f" ({name!r})" if name else "")


# --------------------------------------------------------------------------------------------
# Optimizer base
# --------------------------------------------------------------------------------------------

class Optimizer:
    """Holds parameter groups and per-parameter state; subclasses implement `step`.

    `params` is an iterable of parameters, or a list of group dicts
    ``{"params": [...], "lr": ..., "weight_decay": ..., ...}`` whose keys override `defaults`.
    Extra keys are kept (a scheduler adds ``initial_lr``; a group may carry a ``name``).
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        items = list(params)
        if not items:
            raise ValueError("params: expected a non-empty iterable of parameters or group dicts, got an empty one")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[tuple[int, int], dict[str, Any]] = {}
        seen: set[int] = set()
        for gi, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(f"params: group {gi} must be a dict with a 'params' key, got {group!r}")
            group = {**self.defaults, **group, "params": list(group["params"])}
            for pi, p in enumerate(group["params"]):
                data = getattr(p, "data", None)
                if not (isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.floating)):
                    raise ValueError(f"params: {_label(p, gi, pi)} needs a floating np.ndarray .data, "
                                     f"got {type(data).__name__}")
                if id(p) in seen:
                    raise ValueError(f"params: {_label(p, gi, pi)} appears more than once")
                seen.add(id(p))
            self.param_groups.append(self._check_group(group))

    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise one group's hyper-parameters (subclasses)."""
        raise NotImplementedError

    def _grads(self, gi: int):
        """Yield ``(param index, param, gradient in the param's dtype)`` for params that have a grad."""
        for pi, p in enumerate(self.param_groups[gi]["params"]):
            if p.grad is None:
                continue
            g = np.asarray(p.grad, dtype=p.data.dtype)  # no copy when the dtype already matches
            if g.shape != p.data.shape:
                raise ValueError(f"grad of {_label(p, gi, pi)}: expected shape {p.data.shape}, got {g.shape}")
            yield pi, p, g

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the hyper-parameters and per-parameter state.

        ``{"param_groups": [{<hyper-parameters>, "num_params": n}, ...],
           "state": {(group index, param index): {"step": int, "exp_avg": array, ...}}}``
        """
        groups = [{**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}, "num_params": len(g["params"])}
                  for g in self.param_groups]
        state = {key: copy.deepcopy(s) for key, s in self.state.items()}
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; groups and parameter counts and shapes must match."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param groups, got {len(groups)}")
        new_groups = []
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if saved["num_params"] != len(group["params"]):
                raise ValueError(f"state_dict: group {gi} expected {len(group['params'])} params, "
                                 f"got {saved['num_params']}")
            hyper = {k: copy.deepcopy(v) for k, v in saved.items() if k != "num_params"}
            new_groups.append(self._check_group({**hyper, "params": group["params"]}))
        new_state = {}
        for (gi, pi), saved in state_dict["state"].items():
            if not (0 <= gi < len(new_groups) and 0 <= pi < len(new_groups[gi]["params"])):
                raise ValueError(f"state_dict: state key {(gi, pi)} names no parameter")
            p = new_groups[gi]["params"][pi]
            entry = {}
            for k, v in saved.items():
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(f"state_dict: state[{(gi, pi)}][{k!r}] expected shape {p.data.shape} "
                                         f"for {_label(p, gi, pi)}, got {v.shape}")
                    entry[k] = np.array(v, dtype=p.data.dtype, copy=True)
                else:
                    entry[k] = copy.deepcopy(v)
            new_state[(gi, pi)] = entry
        for group, new in zip(self.param_groups, new_groups):  # in place: outside references stay valid
            group.clear()
            group.update(new)
        self.state = new_state


def _in_place(g: np.ndarray, *written: np.ndarray | None) -> bool:
    """Whether an in-place twin may update `written` (None: absent): C-contiguous, aligned and
    writeable (so the update lands in them, not in a copy), and none overlaps the gradient or another."""
    arrays = [a for a in written if a is not None]
    return (all(a.flags.c_contiguous and a.flags.aligned and a.flags.writeable for a in arrays)
            and not any(np.may_share_memory(a, b) for i, a in enumerate(arrays) for b in [g, *arrays[i + 1:]]))


def _weak(*values: Any) -> bool:
    """Whether every hyper-parameter is a Python float, which NumPy 2 rounds to float32 before computing
    in float32 (a NumPy float64 scalar would make it compute in float64; the twins follow the former)."""
    return all(type(x) is float for x in values)


# --------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay (as torch.optim.SGD).

    For each parameter p with gradient g, learning rate lr, momentum μ, dampening τ, weight decay λ::

        d = g + λ·p                                  (if λ ≠ 0)
        if μ ≠ 0:
            b = d                 on the first step  (the buffer starts as the first gradient)
            b = μ·b + (1 − τ)·d   afterwards
            d = d + μ·b  if nesterov  else  b
        p = p − lr·d
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        group["lr"] = _number("lr", group["lr"], lambda x: x >= 0, "a number >= 0")
        group["momentum"] = _number("momentum", group["momentum"], lambda x: 0 <= x < 1, "a number in [0, 1)")
        group["dampening"] = _number("dampening", group["dampening"], lambda x: 0 <= x <= 1, "a number in [0, 1]")
        group["weight_decay"] = _number("weight_decay", group["weight_decay"], lambda x: x >= 0, "a number >= 0")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov: requires momentum > 0 and dampening == 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")
        return group

    def step(self) -> None:
        for gi, group in enumerate(self.param_groups):
            lr, mu, tau = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for pi, p, d in self._grads(gi):
                if self._fast_step(gi, pi, p, d, lr, mu, tau, wd, nesterov):
                    continue
                if wd != 0:
                    d = d + wd * p.data  # a new array: p.grad is never modified
                if mu != 0:
                    state = self.state.setdefault((gi, pi), {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(d, copy=True, order="C")  # an array even for 0-d
                    else:
                        buf *= mu
                        buf += d if tau == 0 else (1 - tau) * d
                    d = d + mu * buf if nesterov else buf
                np.subtract(p.data, lr * d, out=p.data)

    def _fast_step(self, gi, pi, p, g, lr, mu, tau, wd, nesterov) -> bool:
        """The step above by the training backend's in-place twin (`sgd_step`, bit for bit the same)
        when it has one for these arrays; False (nothing done) otherwise."""
        state = self.state.setdefault((gi, pi), {}) if mu != 0 else None
        buf = None if state is None else state.get("momentum_buffer")
        fast = accel.kernel("sgd_step", p.data, g, *(() if buf is None else (buf,)))
        if fast is None or not _in_place(g, p.data, buf) or not _weak(lr, mu, tau, wd):
            return False
        first = state is not None and buf is None
        if first:
            buf = np.empty_like(p.data)  # C-contiguous as p.data is; the twin fills it with d
        fast(p.data, g, buf, first, lr=lr, momentum=mu, dampening=None if tau == 0 else 1 - tau,
             weight_decay=None if wd == 0 else wd, nesterov=nesterov)
        if first:
            state["momentum_buffer"] = buf
        return True


# --------------------------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------------------------

class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (as torch.optim.Adam, amsgrad=False).

    For each parameter p with gradient g, step count t (per parameter, from 1), lr, betas (β1, β2),
    eps ε and weight decay λ::

        g = g + λ·p                                  (if λ ≠ 0)
        m = β1·m + (1 − β1)·g                        (m, v start at zero)
        v = β2·v + (1 − β2)·g·g
        p = p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
    """

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _check_group(self, group):
        group["lr"] = _number("lr", group["lr"], lambda x: x >= 0, "a number >= 0")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(_number(f"betas[{i}]", b, lambda x: 0 <= x < 1, "a number in [0, 1)")
                               for i, b in enumerate(betas))
        group["eps"] = _number("eps", group["eps"], lambda x: x > 0, "a number > 0")
        group["weight_decay"] = _number("weight_decay", group["weight_decay"], lambda x: x >= 0, "a number >= 0")
        return group

    def step(self) -> None:
        for gi, group in enumerate(self.param_groups):
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for pi, p, g in self._grads(gi):
                state = self.state.setdefault((gi, pi), {})
                if not state:
                    state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
                if self._fast_step(p, g, state, lr, beta1, beta2, eps, wd):
                    continue
                if wd != 0:
                    if self._decoupled:
                        p.data *= 1 - lr * wd
                    else:
                        g = g + wd * p.data
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                step_size = lr / (1 - beta1 ** t)
                denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps
                p.data -= step_size * (m / denom)

    def _fast_step(self, p, g, state, lr, beta1, beta2, eps, wd) -> bool:
        """The step above by the training backend's in-place twin (`adam_step`, bit for bit the same)
        when it has one for these arrays; False (nothing done) otherwise."""
        m, v = state["exp_avg"], state["exp_avg_sq"]
        fast = accel.kernel("adam_step", p.data, m, v, g)
        t = state["step"] + 1
        step_size = lr / (1 - beta1 ** t)  # a NumPy float64 (from a NumPy integer t): NumPy's own code runs
        if fast is None or not _in_place(g, p.data, m, v) or not _weak(lr, beta1, beta2, eps, wd, step_size):
            return False
        state["step"] = t
        decoupled = wd != 0 and self._decoupled
        fast(p.data, m, v, g, beta1=beta1, one_minus_beta1=1 - beta1, beta2=beta2, one_minus_beta2=1 - beta2,
             bias2_sqrt=math.sqrt(1 - beta2 ** t), eps=eps, step_size=step_size,
             l2=wd if wd != 0 and not decoupled else None, decay=1 - lr * wd if decoupled else None)
        return True


class AdamW(Adam):
    """Adam with decoupled weight decay (as torch.optim.AdamW): before the Adam step, with λ ≠ 0::

        p = p · (1 − lr·λ)

    and the gradient is NOT changed by λ. The rest is the `Adam` update.
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (epoch based)
# --------------------------------------------------------------------------------------------

class LRScheduler:
    """Sets every group's ``lr`` from a pure function of the epoch and the group's ``initial_lr``.

    Construction records ``initial_lr`` in each group (if absent) and applies epoch 0; each `step()`
    advances one epoch and applies ``get_lr(last_epoch)``. Call `step()` at the end of each epoch.
    """

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def get_lr(self, epoch: int) -> list[float]:
        """The learning rate of each group at `epoch` (pure: no side effects)."""
        raise NotImplementedError

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(self.last_epoch)):
            group["lr"] = lr

    def step(self) -> None:
        """Advance one epoch and set the new learning rates."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self._apply()

    @staticmethod
    def _check_epoch(epoch: int) -> None:
        if not (isinstance(epoch, (int, np.integer)) and epoch >= 0):
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")


class ConstantLR(LRScheduler):
    """lr(e) = initial_lr."""

    def get_lr(self, epoch: int) -> list[float]:
        self._check_epoch(epoch)
        return list(self.base_lrs)


class CosineLR(LRScheduler):
    """Cosine annealing, the closed form of torch's CosineAnnealingLR::

        lr(e) = η_min + (lr0 − η_min) · (1 + cos(π·e / T_max)) / 2        for e ≤ T_max

    For e > T_max the lr stays at η_min (torch would start rising again).
    """

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0):
        if not (isinstance(t_max, (int, np.integer)) and t_max >= 1):
            raise ValueError(f"t_max: expected an int >= 1, got {t_max!r}")
        self.t_max = int(t_max)
        self.eta_min = _number("eta_min", eta_min, lambda x: x >= 0, "a number >= 0")
        super().__init__(optimizer)

    def get_lr(self, epoch: int) -> list[float]:
        self._check_epoch(epoch)
        e = min(epoch, self.t_max)
        factor = (1 + math.cos(math.pi * e / self.t_max)) / 2
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]


class StepLR(LRScheduler):
    """Multi-step decay (torch's MultiStepLR): lr(e) = lr0 · γ^(number of milestones ≤ e)."""

    def __init__(self, optimizer: Optimizer, milestones: list[int], gamma: float = 0.1):
        milestones = list(milestones)
        if not all(isinstance(m, (int, np.integer)) and m >= 0 for m in milestones):
            raise ValueError(f"milestones: expected a list of ints >= 0, got {milestones!r}")
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = _number("gamma", gamma, lambda x: x > 0, "a number > 0")
        super().__init__(optimizer)

    def get_lr(self, epoch: int) -> list[float]:
        self._check_epoch(epoch)
        factor = self.gamma ** bisect.bisect_right(self.milestones, epoch)
        return [base * factor for base in self.base_lrs]


class WarmupLR(LRScheduler):
    """Linear warm-up, then another schedule shifted by the warm-up length (W = warmup_epochs)::

        lr(e) = lr0 · (e + 1) / (W + 1)      for e < W
        lr(e) = after.get_lr(e − W)          for e ≥ W

    `after` must drive the same optimizer; it is only queried (its own `step` is never needed).
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: int, after: LRScheduler):
        if not (isinstance(warmup_epochs, (int, np.integer)) and warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs: expected an int >= 0, got {warmup_epochs!r}")
        if not isinstance(after, LRScheduler) or after.optimizer is not optimizer:
            raise ValueError(f"after: expected an LRScheduler of the same optimizer, got {after!r}")
        self.warmup_epochs = int(warmup_epochs)
        self.after = after
        super().__init__(optimizer)

    def get_lr(self, epoch: int) -> list[float]:
        self._check_epoch(epoch)
        if epoch < self.warmup_epochs:
            return [base * (epoch + 1) / (self.warmup_epochs + 1) for base in self.base_lrs]
        return self.after.get_lr(epoch - self.warmup_epochs)


# --------------------------------------------------------------------------------------------
# Builders (used by the CLI and the training loop)
# --------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "constant")


def build_optimizer(name: str, params_or_groups, lr: float, weight_decay: float,
                    momentum: float = 0.9, nesterov: bool = False) -> Optimizer:
    """``"sgd"`` → SGD(lr, momentum, weight_decay, nesterov); ``"adam"`` / ``"adamw"`` → Adam / AdamW(lr,
    weight_decay). `momentum` is used by SGD only; `nesterov=True` with Adam is an error."""
    key = str(name).lower()
    if key == "sgd":
        return SGD(params_or_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if key in ("adam", "adamw"):
        if nesterov:
            raise ValueError(f"nesterov: only valid with 'sgd', got nesterov=True with {name!r}")
        cls = Adam if key == "adam" else AdamW
        return cls(params_or_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"name: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")


def build_scheduler(name: str, opt: Optimizer, epochs: int, warmup: int = 0, steps_per_epoch: int = 1) -> LRScheduler:
    """A schedule over `epochs` epochs, with an optional linear warm-up of `warmup` epochs.

    The named schedule covers the N = epochs − warmup epochs after the warm-up:
    ``"cosine"`` → CosineLR(t_max=N); ``"step"`` → StepLR(milestones=[⌊N/2⌋, ⌊3N/4⌋], γ=0.1), milestones
    at 0 dropped; ``"constant"`` → ConstantLR. With warmup > 0 it is wrapped in WarmupLR.

    With `steps_per_epoch` = S > 1 the schedule counts batches instead of epochs (epochs·S ticks, the
    warm-up and milestones scaled by S): call `step()` after every batch and the cosine anneals smoothly
    to its end instead of holding each epoch's value for the whole epoch.
    """
    if not (isinstance(steps_per_epoch, (int, np.integer)) and steps_per_epoch >= 1):
        raise ValueError(f"steps_per_epoch: expected an int >= 1, got {steps_per_epoch!r}")
    if steps_per_epoch > 1:
        epochs, warmup = epochs * int(steps_per_epoch), warmup * int(steps_per_epoch)
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"name: expected one of {', '.join(SCHEDULERS)}, got {name!r}")
    if not (isinstance(epochs, (int, np.integer)) and epochs >= 1):
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if not (isinstance(warmup, (int, np.integer)) and 0 <= warmup < epochs):
        raise ValueError(f"warmup: expected an int in [0, epochs={epochs}), got {warmup!r}")
    n = int(epochs - warmup)
    if key == "cosine":
        after: LRScheduler = CosineLR(opt, t_max=n)
    elif key == "step":
        after = StepLR(opt, milestones=[m for m in (int(0.5 * n), int(0.75 * n)) if m > 0])
    else:
        after = ConstantLR(opt)
    return WarmupLR(opt, warmup, after) if warmup else after
