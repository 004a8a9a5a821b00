"""The method seam: weight quantizers (one file per method), their registry, the compressed layers
and the factory models ask for layers, activation quantizers, and the memory budget.

  base         WeightQuantizer (every hook a method can have), MethodOptions, WeightCount
  registry     METHODS, register(), layer_factory()
  layers       QuantConv2d, QuantLinear, LayerFactory, QuantLayerFactory
  activations  1-bit sign and 2-bit DoReFa activation quantizers
  budget       the memory budget (asks the quantizers; never writes their state)
  packing      sign planes and CSR rows for the methods' packed forms
  apb.py, ...  one file per method (registry.METHODS lists them)
"""
from .base import ActivationQuantizer, MethodOptions, WeightCount, WeightQuantizer  # noqa: F401
from .layers import LayerFactory, QuantConv2d, QuantLayerFactory, QuantLinear, quantized_layers  # noqa: F401
from .registry import METHODS, layer_factory, method, register  # noqa: F401
