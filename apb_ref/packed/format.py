"""The packed file format (`.apbz`): a JSON header and named arrays, checksummed. It knows nothing
of training or of methods: `export.py` fills it, `network.py` runs it.

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

from ..fileio import atomic_write_bytes

MAGIC, VERSION = b"APBZ", 1
_PREFIX = struct.Struct("<4sII")
_DTYPES = {"float32", "uint8", "uint16", "uint32", "uint64", "int64"}


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
