"""The method registry: name -> weight quantizer class. Training, the CLI, export, inference, the
summary and the budget loop over it and never name a method. Adding a method is one file in this
package and one `register(...)` line below."""
from __future__ import annotations

from dataclasses import fields
from functools import partial

import numpy as np

from .apb import APB
from .base import MethodOptions, WeightQuantizer
from .bnn import BNN
from .pabt import PaBT
from .prune import Prune
from .prune_uniform import PruneUniform
from .sbnn import SBNN
from .uniform import Uniform
from .layers import LayerFactory, QuantLayerFactory

METHODS: dict[str, type[WeightQuantizer]] = {}


def _same_option(a, b) -> bool:
    return (a.type, a.default, dict(a.metadata)) == (b.type, b.default, dict(b.metadata))


def register(cls: type[WeightQuantizer]) -> type[WeightQuantizer]:
    if cls.name in METHODS:
        raise ValueError(f"register: a method named {cls.name!r} already exists")
    taken = {f.name: (m.name, f) for m in METHODS.values() for f in fields(m.Options)}
    for f in fields(cls.Options):  # options become flat TrainConfig fields and CLI flags: names must not clash,
        other = taken.get(f.name)  # unless it is the same option, shared through a common Options base
        if other is not None and not _same_option(other[1], f):
            raise ValueError(f"register: option {f.name!r} of {cls.name!r} is already an option of {other[0]!r}")
    METHODS[cls.name] = cls
    return cls


register(WeightQuantizer)  # "fp": full precision
register(APB)
register(BNN)
register(Uniform)
register(Prune)
register(PruneUniform)
register(SBNN)
register(PaBT)


def method(name: str) -> type[WeightQuantizer]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def layer_factory(name: str, rng: np.random.Generator, act_bits: int = 32, act_ste: str = "identity",
                  options: MethodOptions | None = None) -> LayerFactory:
    """The layer factory for a method: plain layers for full precision with float activations, else
    compressed layers whose quantizers are built with `options` (the method's Options dataclass)."""
    cls = method(name)
    if cls is WeightQuantizer:
        return LayerFactory(rng) if act_bits == 32 else QuantLayerFactory(rng, None, act_bits, act_ste)
    options = options if options is not None else cls.Options()
    if not isinstance(options, cls.Options):
        raise TypeError(f"layer_factory: method {name!r} takes {cls.Options.__name__}, got {type(options).__name__}")
    return QuantLayerFactory(rng, partial(cls, options=options), act_bits, act_ste)
