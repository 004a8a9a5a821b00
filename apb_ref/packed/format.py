"""The packed file format (`.apbz`): a JSON header and named arrays, checksummed. It knows nothing
of training or of methods: `export.py` fills it, `network.py` runs it.

File layout (little endian):

    b"APBZ" | u32 version | u32 header length | header (JSON, UTF-8) | zero pad to 8 bytes |
    tensor data (each tensor 8-byte aligned, offsets in the header) | u32 CRC-32 of all that precedes

`parse_packed`/`load_packed` check magic, version, sizes, the CRC, that the header is a JSON object
(parsed without recursion errors, NaN/Infinity refused) and every tensor table entry: its fields'
types first, then its extent against the file's length, so no allocation ever follows an unchecked
claim (the tensors copied out total at most the file's size). Each failure is one ValueError naming
the file and the field; nothing past the validated data is read. What the header and tensors *mean*
(layer kinds, shapes, CSR structure, finite values, build arguments) is checked by
`schema.validate_packed`, which `network.build_packed` runs before building anything.
"""
from __future__ import annotations

import json
import math
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
MAX_NDIM, MAX_TENSORS = 8, 100_000


@dataclass
class PackedModel:
    """The contents of a packed file: a JSON-able header and named arrays."""

    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"  # the file it was read from, for error messages

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


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_header(text: bytes, path) -> dict[str, Any]:
    try:
        header = json.loads(text.decode(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise _bad(path, f"unreadable header ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"header: expected a JSON object, got {type(header).__name__}")
    return header


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _table_entry(entry, i: int, path) -> tuple[str, np.dtype, tuple[int, ...], int, int]:
    """One tensor table entry, its fields' types checked before any of them is used."""
    where = f"header.tensors[{i}]"
    if not isinstance(entry, dict):
        raise _bad(path, f"{where}: expected an object, got {type(entry).__name__}")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    offset, nbytes = entry.get("offset"), entry.get("nbytes")
    if not isinstance(name, str) or not 0 < len(name) <= 512:
        raise _bad(path, f"{where}.name: expected a name of 1 to 512 characters, got {name!r:.60}")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _bad(path, f"{where}.dtype (tensor {name}): expected one of {sorted(_DTYPES)}, got {dtype!r:.60}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_int(d) and d >= 0 for d in shape)):
        raise _bad(path, f"{where}.shape (tensor {name}): expected a list of at most {MAX_NDIM} non-negative "
                         f"integers, got {shape!r:.60}")
    for field_name, v in (("offset", offset), ("nbytes", nbytes)):
        if not (_is_int(v) and 0 <= v):
            raise _bad(path, f"{where}.{field_name} (tensor {name}): expected a non-negative integer, got {v!r:.60}")
    return name, np.dtype(dtype), tuple(shape), offset, nbytes


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
    header = _parse_header(data[start:start + header_len], path)
    blob_start = start + header_len + (-(start + header_len) % 8)
    blob_end = len(data) - 4
    table = header.pop("tensors", [])
    if not isinstance(table, list) or len(table) > MAX_TENSORS:
        raise _bad(path, f"header.tensors: expected a list of at most {MAX_TENSORS} entries, got {type(table).__name__}")
    tensors = {}
    for i, entry in enumerate(table):
        name, dtype, shape, offset, nbytes = _table_entry(entry, i, path)
        if name in tensors:
            raise _bad(path, f"header.tensors[{i}].name: tensor {name} appears twice")
        size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        lo = blob_start + offset
        if nbytes != size or lo + size > blob_end:
            raise _bad(path, f"header.tensors[{i}]: tensor {name} ({dtype}, shape {shape}) does not fit in the file")
        tensors[name] = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=size // dtype.itemsize,
                                      offset=lo).reshape(shape).astype(dtype)
    return PackedModel(header, tensors, str(path))


def load_packed(path: str | Path) -> PackedModel:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed model not found: {path}")
    return parse_packed(path.read_bytes(), path)
