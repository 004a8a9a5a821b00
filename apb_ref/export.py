"""Trained model → packed file (`.apbz`) and back.

A compressed layer W_q = α·B + S is stored as what inference needs (METHODS §1.8, DESIGN "bit
conventions"): the sign bits of B packed 64 per uint64 along K = C·kh·kw, α, and the sparse
residual S = W_q − α·B at the full-precision positions as CSR (float32 values, indices and row
pointers in the smallest unsigned type that holds them). BatchNorm is folded into a per-channel
scale and shift; full-precision layers are float32.

File layout (little endian):

    b"APBZ" | u32 version | u32 header length | header (JSON, UTF-8) | zero pad to 8 bytes |
    tensor data (each tensor 8-byte aligned, offsets in the header) | u32 CRC-32 of all that precedes

`load_packed` checks magic, version, sizes, the CRC and every tensor's extent, and raises ValueError
naming the file and the problem; it never reads past the data it validated.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import nn
from .checkpoint import atomic_write_bytes
from .kernels import pack_bits

MAGIC, VERSION = b"APBZ", 1
_PREFIX = struct.Struct("<4sII")
_DTYPES = {"float32", "uint8", "uint16", "uint32", "uint64", "int64"}


def smallest_uint(max_value: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


@dataclass
class PackedModel:
    """The contents of a packed file: a JSON-able header and named arrays."""

    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        table, blob, offset = [], [], 0
        for name, a in self.tensors.items():
            a = np.ascontiguousarray(a)
            if a.dtype.name not in _DTYPES:
                raise TypeError(f"packed file: tensor {name} has unsupported dtype {a.dtype}")
            table.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes})
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            blob.append(raw + b"\0" * (-len(raw) % 8))
            offset += len(raw) + (-len(raw) % 8)
        header = json.dumps({**self.header, "tensors": table}, separators=(",", ":")).encode()
        head = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
        body = head + b"\0" * (-len(head) % 8) + b"".join(blob)
        return body + struct.pack("<I", zlib.crc32(body))

    def save(self, path: str | Path) -> int:
        data = self.to_bytes()
        atomic_write_bytes(path, data)
        return len(data)


def _bad(path, why: str) -> ValueError:
    return ValueError(f"packed file {path}: {why}")


def parse_packed(data: bytes, path: str | Path = "<bytes>") -> PackedModel:
    if len(data) < _PREFIX.size + 4:
        raise _bad(path, f"truncated ({len(data)} bytes; not even a header)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _bad(path, f"not an apb-ref packed model (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise _bad(path, f"format version {version}; this apb-ref reads version {VERSION}")
    stored_crc = struct.unpack_from("<I", data, len(data) - 4)[0]
    if zlib.crc32(data[:-4]) != stored_crc:
        raise _bad(path, "checksum mismatch: the file is truncated or corrupted")
    start = _PREFIX.size
    if start + header_len > len(data) - 4:
        raise _bad(path, f"header length {header_len} runs past the end of the file")
    try:
        header = json.loads(data[start:start + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"unreadable header ({e})") from e
    blob_start = start + header_len + (-(start + header_len) % 8)
    blob_end = len(data) - 4
    tensors = {}
    for entry in header.pop("tensors", []):
        name, dtype, shape = entry["name"], entry["dtype"], tuple(entry["shape"])
        if dtype not in _DTYPES:
            raise _bad(path, f"tensor {name} has unsupported dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        lo = blob_start + int(entry["offset"])
        if nbytes != entry["nbytes"] or entry["offset"] < 0 or lo + nbytes > blob_end:
            raise _bad(path, f"tensor {name} ({dtype}, shape {shape}) does not fit in the file")
        tensors[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // np.dtype(dtype).itemsize,
                                      offset=lo).reshape(shape).astype(dtype)
    return PackedModel(header, tensors)


def load_packed(path: str | Path) -> PackedModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed model not found: {path}")
    return parse_packed(path.read_bytes(), path)


# --- exporting a model ----------------------------------------------------------------------
def _pack_compressed(prefix: str, layer, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """α·B + S of one APB layer, with B as sign bits and S as CSR in the smallest index types."""
    q = layer.weight_quantizer
    w = layer.weight.data
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    k = w2.shape[1]
    alpha = np.float32(q.alpha.data)
    binary = q.mask(w).reshape(o, -1)
    signs = np.where(w2 < 0, np.float32(-1), np.float32(1))
    residual = np.where(binary, np.float32(0), w2 - alpha * signs).astype(np.float32)  # S = W_q − α·B
    rows, cols = np.nonzero(~binary)
    counts = np.bincount(rows, minlength=o)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    tensors[f"{prefix}.sign_bits"] = pack_bits(signs)
    tensors[f"{prefix}.alpha"] = np.asarray([alpha], np.float32)
    tensors[f"{prefix}.csr_indptr"] = indptr.astype(smallest_uint(int(indptr[-1])))
    tensors[f"{prefix}.csr_indices"] = cols.astype(smallest_uint(max(k - 1, 0)))
    tensors[f"{prefix}.csr_values"] = residual[rows, cols]
    if layer.bias is not None:
        tensors[f"{prefix}.bias"] = layer.bias.data.astype(np.float32)
    spec = {"kind": "apb", "weight_shape": list(w.shape), "k": k, "act_bits": int(layer.act_quantizer.bits),
            "nnz": int(len(cols))}
    if isinstance(layer, nn.Conv2d):
        spec.update(stride=int(layer.stride), padding=int(layer.padding))
    return spec


def export_model(model: nn.Module, build_args: dict[str, Any], normalization: dict[str, Any] | None = None) -> PackedModel:
    """Pack every layer of a trained model (in eval form) for `infer.PackedNetwork`."""
    tensors: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.QuantConv2d, nn.QuantLinear)) and m.weight_quantizer.name == "apb":
            layers[name] = _pack_compressed(name, m, tensors)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            # Plain layers, and quantized layers of a method without a packed form: their effective weights.
            w = m.weight_quantizer(m.weight).data if hasattr(m, "weight_quantizer") else m.weight.data
            tensors[f"{name}.weight"] = np.asarray(w, np.float32)
            if m.bias is not None:
                tensors[f"{name}.bias"] = m.bias.data.astype(np.float32)
            act = getattr(m, "act_quantizer", None)
            layers[name] = {"kind": "float", "act_bits": int(getattr(act, "bits", 32))}
        elif isinstance(m, nn._BatchNorm):
            scale = (m.weight.data if m.weight is not None else 1.0) / np.sqrt(m.running_var + m.eps)
            shift = (m.bias.data if m.bias is not None else 0.0) - m.running_mean * scale
            tensors[f"{name}.scale"] = scale.astype(np.float32)
            tensors[f"{name}.shift"] = shift.astype(np.float32)
            layers[name] = {"kind": "affine"}
    header = {"format": "apb-ref packed model", "build": build_args, "layers": layers,
              "normalization": normalization or {}}
    return PackedModel(header, tensors)


def packed_size(model: nn.Module, build_args: dict[str, Any], normalization: dict[str, Any] | None = None) -> int:
    """Bytes the packed file of `model` takes on disk (serialised in memory: exact)."""
    return len(export_model(model, build_args, normalization).to_bytes())
