"""Packed models: the `.apbz` file format, export from a trained model, the packed layers, and the
runnable packed network."""
from .export import export_model, layer_bytes, packed_memory, packed_size  # noqa: F401
from .format import PackedModel, load_packed, parse_packed  # noqa: F401
from .network import PackedNetwork, build_packed, fold_batchnorms  # noqa: F401
