"""Modules: containers of parameters and buffers with a `forward`, in PyTorch's shape."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np

from .. import ops as F
from ..autograd import Tensor


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates (always requires grad)."""

    def __init__(self, data: Any, name: str | None = None):
        array = np.array(data)  # a copy the module owns
        if array.dtype.kind != "f":
            array = array.astype(np.float32)
        super().__init__(array, requires_grad=True, name=name)


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def kaiming_normal(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator, gain: float = math.sqrt(2.0)) -> np.ndarray:
    """N(0, gain²/fan_in): He initialisation, what CIFAR ResNets use."""
    return (rng.standard_normal(shape) * (gain / math.sqrt(fan_in))).astype(np.float32)


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """U(−1/√fan_in, 1/√fan_in): PyTorch's default for Conv2d/Linear weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Module:
    """Base class. Assigning a Parameter or Module attribute registers it, in definition order."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        kind = self._parameters if isinstance(value, Parameter) else self._modules if isinstance(value, Module) else None
        for registry in (self._parameters, self._modules, self._buffers):
            if registry is not kind:
                registry.pop(name, None)
        if kind is not None:
            kind[name] = value  # replacing keeps the position (Sequential order)
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """State that is saved and loaded but not trained (e.g. BatchNorm running statistics)."""
        setattr(self, name, value)
        self._buffers[name] = value

    # --- traversal -----------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, module in self.named_modules():
            for name in module._buffers:
                yield (f"{prefix}.{name}" if prefix else name), getattr(module, name)

    # --- modes ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, by dotted name."""
        state: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = p.data.copy()
        for name, b in self.named_buffers():
            state[name] = np.array(b, copy=True)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy values in place (optimizers keep their references). Names and shapes must match."""
        own = dict(self.named_parameters())
        buffers = {name: (module, key) for prefix, module in self.named_modules()
                   for key in module._buffers for name in [f"{prefix}.{key}" if prefix else key]}
        missing = [k for k in list(own) + list(buffers) if k not in state]
        unexpected = [k for k in state if k not in own and k not in buffers]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in state.items():
            value = np.asarray(value)
            if name in own:
                target = own[name].data
            elif name in buffers:
                module, key = buffers[name]
                target = getattr(module, key)
            else:
                continue
            if np.shape(target) != value.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, the model expects {np.shape(target)}")
            if isinstance(target, np.ndarray):
                target[...] = value  # in place: optimizers and views keep their references
            else:  # a plain Python value kept as a buffer is replaced
                module, key = buffers[name]
                module.register_buffer(key, value.copy())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, module in self._modules.items():
            lines.append("  " + f"({name}): {module!r}".replace("\n", "\n  "))
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


class Sequential(Module):
    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, rng: np.random.Generator | None = None, init: str = "kaiming_uniform"):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size), ("stride", stride)):
            if int(v) < 1:
                raise ValueError(f"Conv2d: {name} must be >= 1, got {v}")
        rng = _default_rng(rng)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        w = kaiming_normal(shape, fan_in, rng) if init == "kaiming_normal" else kaiming_uniform(shape, fan_in, rng)
        self.weight = Parameter(w)
        self.bias = Parameter(kaiming_uniform((out_channels,), fan_in, rng)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng: np.random.Generator | None = None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: features must be >= 1, got {in_features} and {out_features}")
        rng = _default_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(kaiming_uniform((out_features, in_features), in_features, rng))
        self.bias = Parameter(kaiming_uniform((out_features,), in_features, rng)) if bias else None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input (N, {self.in_features}), got shape {x.shape}")
        y = F.matmul(x, F.transpose(self.weight))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class BatchNorm(Module):
    """Base of BatchNorm1d and BatchNorm2d."""

    expected_ndim = 0

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))

    def forward(self, x):
        if x.ndim != self.expected_ndim:
            raise ValueError(f"{type(self).__name__}: expected a {self.expected_ndim}-d input, got shape {x.shape}")
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return str(self.num_features)


class BatchNorm2d(BatchNorm):
    expected_ndim = 4


class BatchNorm1d(BatchNorm):
    expected_ndim = 2


class ChannelShift(Module):
    """y = x − b with one learned b per channel (NCHW). Before a sign it is ReActNet's RSign: a learned
    threshold per channel, sign(x − b)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = Parameter(np.zeros(channels, np.float32))

    def forward(self, x):
        return x - self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return str(self.bias.shape[0])


class ActivationScale(Module):
    """XNOR-Net's activation scale for a k×k conv (Rastegari et al., ECCV 2016): K = box_k(mean_c |x|),
    the mean magnitude over channels averaged over each window (zero padding counted), one value per
    output position, (N, 1, Ho, Wo). A binary conv's output times K is closer to the float conv's.
    Nothing is learned; the gradient flows through K as through any op."""

    def __init__(self, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        magnitude = F.mean(F.relu(x) + F.relu(-x), axis=1, keepdims=True)  # |x| from registered ops
        k = self.kernel_size
        box = Tensor(np.full((1, 1, k, k), 1.0 / (k * k), dtype=magnitude.dtype))
        return F.conv2d(magnitude, box, None, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class RPReLU(Module):
    """ReActNet's RPReLU per channel (NCHW): y = PReLU(x − γ) + ζ, PReLU(z) = max(z, 0) + a·min(z, 0),
    with γ, ζ (initially 0) and the slope a (initially 0.25) learned."""

    def __init__(self, channels: int, slope: float = 0.25):
        super().__init__()
        self.gamma = Parameter(np.zeros(channels, np.float32))
        self.slope = Parameter(np.full(channels, slope, np.float32))
        self.zeta = Parameter(np.zeros(channels, np.float32))

    def forward(self, x):
        z = x - self.gamma.reshape(1, -1, 1, 1)
        return F.relu(z) - self.slope.reshape(1, -1, 1, 1) * F.relu(-z) + self.zeta.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return str(self.gamma.shape[0])


class Lambda(Module):
    """Wrap a parameter-free function as a module (activations, pooling, reshapes)."""

    def __init__(self, fn: Callable, name: str | None = None):
        super().__init__()
        self.fn, self.name = fn, name or getattr(fn, "__name__", "fn")

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def ReLU() -> Lambda: return Lambda(F.relu, "relu")
def Hardtanh() -> Lambda: return Lambda(F.hardtanh, "hardtanh")
def Flatten() -> Lambda: return Lambda(F.flatten, "flatten")
def GlobalAvgPool2d() -> Lambda: return Lambda(F.global_avg_pool2d, "global_avg_pool2d")
def MaxPool2d(k: int, stride: int | None = None) -> Lambda: return Lambda(lambda x: F.max_pool2d(x, k, stride), f"max_pool2d({k})")
def AvgPool2d(k: int, stride: int | None = None) -> Lambda: return Lambda(lambda x: F.avg_pool2d(x, k, stride), f"avg_pool2d({k})")


ACTIVATIONS = {"relu": ReLU, "hardtanh": Hardtanh}


def activation(name: str) -> Lambda:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def batch_norm_act(bn: BatchNorm, x, act: Module, residual=None):
    """act(bn(x) + residual) (residual optional): one fused op (`F.batch_norm_act`) where that is
    faster (training on the Rust backend, act a plain ReLU or Hardtanh), else the modules in turn."""
    kind = act.name if isinstance(act, Lambda) and act.name in ("relu", "hardtanh") else None
    same = isinstance(bn, BatchNorm) and x.ndim == bn.expected_ndim and (residual is None or residual.shape == x.shape)
    if kind and same and bn.training and bn.weight is not None and F.fuses_batch_norm(x):
        return F.batch_norm_act(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps,
                                residual, kind)
    y = bn(x)
    return act(y if residual is None else y + residual)


class Dropout(Module):
    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.rng = p, _default_rng(rng)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"
