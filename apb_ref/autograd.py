"""Autograd-lite: a `Tensor` that remembers how it was made, and `Function`s whose forward and
backward read side by side.

The design follows micrograd and minitorch: every differentiable operation is a `Function`
subclass with two static methods,

    forward(ctx, *arrays, **options) -> np.ndarray
    backward(ctx, grad) -> one gradient (np.ndarray or None) per array input

`Function.apply` unwraps tensors into arrays, runs `forward`, and — when some input needs a
gradient and gradients are enabled — links the output to its inputs. `Tensor.backward` walks that
graph in reverse topological order.  Saved arrays are released after the walk, as in PyTorch.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


class no_grad(contextlib.ContextDecorator):  # noqa: N801 (used as a function: `with no_grad():`)
    """Inside this block (or decorated function) operations build no graph (evaluation, optimizer
    updates). A class rather than a generator context manager: entering and leaving cost a quarter as
    much, which a batch-1 forward pays on every call. One instance may be entered again while inside."""

    def __init__(self) -> None:
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        global _grad_enabled
        self._previous.append(_grad_enabled)
        _grad_enabled = False

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._previous.pop()


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting (the one place this rule lives)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class Context:
    """What a forward pass keeps for its backward pass."""

    __slots__ = ("saved", "needs_grad", "__dict__")

    def __init__(self, needs_grad: tuple[bool, ...]):
        self.saved: tuple = ()
        self.needs_grad = needs_grad

    def save_for_backward(self, *values: Any) -> None:
        self.saved = values


class Function:
    """Base class of every differentiable op. Subclasses define `forward` and `backward`."""

    @staticmethod
    def forward(ctx: Context, *args: np.ndarray, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: np.ndarray) -> np.ndarray | None | tuple[np.ndarray | None, ...]:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Any, **kwargs: Any) -> "Tensor":
        tensors = [x if isinstance(x, Tensor) else None for x in inputs]
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        ctx = Context(needs)
        out = Tensor(cls.forward(ctx, *arrays, **kwargs))
        if _grad_enabled and any(needs):
            out.requires_grad = True
            out._ctx = ctx
            out._op = cls
            out._parents = tuple(tensors)
        return out


class Tensor:
    """An n-d array with an optional gradient. `data` is a plain NumPy array."""

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_op", "_parents", "name")
    __array_priority__ = 1000  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        array = np.asarray(data, dtype=dtype)
        if dtype is None and array.dtype.kind not in "fiub":
            raise TypeError(f"Tensor: data must be numeric, got dtype {array.dtype}")
        if requires_grad and array.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating tensors can require grad, got dtype {array.dtype}")
        self.data: np.ndarray = array
        self.grad: np.ndarray | None = None
        self.requires_grad = requires_grad
        self._ctx: Context | None = None
        self._op: type[Function] | None = None
        self._parents: tuple[Tensor | None, ...] = ()
        self.name = name

    # --- plain array facts -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=8)}{flag})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    # --- the backward walk --------------------------------------------------------------------
    def backward(self, grad: np.ndarray | None = None) -> None:
        """Accumulate d(self)/d(leaf) into `leaf.grad` for every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no graph was built)")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward: grad must be given for a non-scalar output of shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, expected {self.shape}")

        grads: dict[int, np.ndarray] = {id(self): grad}
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if node._ctx is None:  # a leaf
                if g is not None:
                    node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            if g is None:
                continue
            parent_grads = node._op.backward(node._ctx, g)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            for parent, pg in zip(node._parents, parent_grads):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:  # a bug in an op, not in user code
                    raise RuntimeError(f"{node._op.__name__}.backward returned shape {pg.shape} for an input of shape {parent.shape}")
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg
            node._ctx = None  # release saved arrays: the graph is used once
            node._parents = ()

    def _topological_order(self) -> list["Tensor"]:
        order, seen, stack = [], set(), [(self, False)]
        while stack:  # iterative DFS: deep networks would overflow Python's recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent is not None and parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))
        return order

    # --- operator sugar: the methods (__add__, sum, reshape, ...) are attached by apb_ref.ops, which
    # defines the ops; this module imports none of them.

    @property
    def T(self) -> "Tensor":
        return self.transpose()


def as_tensors(values: Sequence[Any]) -> list[Tensor]:
    return [v if isinstance(v, Tensor) else Tensor(v) for v in values]
