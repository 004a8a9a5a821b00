"""Checkpoints: a nested tree of arrays and plain values in one .npz file, written atomically.

No pickle: arrays go in as npz members, everything else as one JSON member (`__meta__`), so a
checkpoint can be opened safely. Nothing in the file is trusted: `load` reads members lazily, only
those the tree references, each after its declared size and npy header were checked against a bound
of `MAX_EXPANSION` × the file's size (a zip bomb is refused before it is inflated); the JSON is
parsed with a depth limit and checked by schema (a trainer state's epoch, accuracy, counters...).
Every failure is one ValueError naming the file and the field.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..fileio import atomic_write_bytes
from ..schema import (
    Invalid, anything, array, integer, key_path, list_of, mapping, nullable, number, parse_json, record, show as _show, validate,
)

FORMAT = "apb-ref-checkpoint"
VERSION = 1
MAX_EXPANSION = 64  # np.savez stores members uncompressed: their sizes add up to about the file's
MAX_META_BYTES = 64 << 20

# What a Trainer's state holds (Trainer.state); checked whenever a tree has a "config".
TRAINER_STATE = record(required={
    "config": mapping(anything, what="an object (the TrainConfig)"),
    "epoch": integer(0, 10**6),
    "best_accuracy": number(-1, 1),
    "train_seconds": number(0, 1e12),
    "images_seen": integer(0, 1 << 62),
    "model": mapping(array, what="an object of arrays"),
    "optimizers": list_of(mapping(anything), max_len=16, what="a list of optimizer states"),
    "schedulers": list_of(mapping(anything), max_len=16, what="a list of scheduler states"),
}, optional={
    "best_epoch": nullable(integer(1, 10**6)),
    "best_test_accuracy": nullable(number(0, 1)),
})


class CheckpointError(ValueError):
    """A refusal with its own message (already naming the file)."""


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, dict):
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint: cannot store a value of type {type(value).__name__}")


def _decode(value: Any, array: Callable[[str, str], np.ndarray], path: str) -> Any:
    """The tree `_encode` wrote, checked as it is rebuilt; arrays are read when first referenced."""
    if isinstance(value, list):
        return [_decode(v, array, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value  # JSON scalars: None, bool, int, float, str
    if set(value) == {"__array__"} and isinstance(value["__array__"], str):
        return array(value["__array__"], path)
    if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
        return tuple(_decode(v, array, f"{path}[{i}]") for i, v in enumerate(value["__tuple__"]))
    items = value.get("__items__") if set(value) == {"__items__"} else None
    if not isinstance(items, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
        raise Invalid(path, 'an encoded value ({"__array__": name}, {"__tuple__": [...]} or {"__items__": [[k, v], ...]})', value)
    out = {}
    for i, (k, v) in enumerate(items):
        key = _decode(k, array, f"{path}.__items__[{i}][0]")
        try:
            hash(key)
        except TypeError:
            raise Invalid(f"{path}.__items__[{i}][0]", "a hashable key (scalar or tuple)", k) from None
        out[key] = _decode(v, array, key_path(path, key))
    return out


def save(path: str | os.PathLike, tree: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _encode(tree, arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


class _LazyNpz:
    """The members of an .npz read one at a time, each only after its sizes were checked."""

    def __init__(self, zf: zipfile.ZipFile, where: str, file_size: int):
        self.zf, self.where, self.cache = zf, where, {}
        self.members = {info.filename.removesuffix(".npy"): info for info in zf.infolist()}
        self.budget = MAX_EXPANSION * file_size + (1 << 20)
        total = sum(info.file_size for info in self.members.values())
        if total > self.budget:
            raise CheckpointError(f"{where}: members claim {total:,} bytes uncompressed, more than "
                                  f"{MAX_EXPANSION}x the file's size (a zip bomb?)")

    def array(self, name: str, path: str = "tree") -> np.ndarray:
        if name not in self.cache:
            if name not in self.members:
                raise Invalid(path, f"an array member of the file ({name!r} is not one)", name)
            self.cache[name] = self._read(self.members[name])
        return self.cache[name]

    def _read(self, info: zipfile.ZipInfo) -> np.ndarray:
        member = f"{self.where}: member {info.filename}"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{member}: compression method {info.compress_type} (np.savez writes 0 or 8)")
        with self.zf.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read_header:
                    raise ValueError(f"npy version {version}")
                shape, fortran, dtype = read_header[version](f)
            except (ValueError, SyntaxError, RecursionError, TypeError, KeyError) as e:
                raise CheckpointError(f"{member}: unreadable npy header ({str(e)[:200]})") from None
            if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
                raise CheckpointError(f"{member}: dtype {dtype} (only plain numbers are stored)")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes != info.file_size - f.tell():
                raise CheckpointError(f"{member}: header says {dtype} {shape} = {nbytes:,} bytes, "
                                      f"the member holds {info.file_size - f.tell():,}")
            out = np.empty(math.prod(shape), dtype)  # bounded: file_size was checked against the budget
            view, filled = memoryview(out.view(np.uint8)), 0
            while filled < nbytes and (n := f.readinto(view[filled:])):
                filled += n
            if filled != nbytes:
                raise CheckpointError(f"{member}: truncated ({filled:,} of {nbytes:,} bytes)")
        return out.reshape(shape, order="F" if fortran else "C")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The tree `save` wrote. Raises FileNotFoundError, or one ValueError naming the file (and the
    field) for anything damaged, hostile or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    where = f"checkpoint {path}"
    try:
        with zipfile.ZipFile(path) as zf:
            npz = _LazyNpz(zf, where, path.stat().st_size)
            if "__meta__" not in npz.members:
                raise CheckpointError(f"{where} is corrupt or not an apb-ref checkpoint (no __meta__ member)")
            if npz.members["__meta__"].file_size > MAX_META_BYTES:
                raise CheckpointError(f"{where}: __meta__ claims {npz.members['__meta__'].file_size:,} bytes")
            meta = parse_json(npz.array("__meta__").tobytes(), f"{where}: __meta__")
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else meta
                raise CheckpointError(f"{where}: expected format {FORMAT!r}, found {_show(found)}")
            if meta.get("version") != VERSION:
                raise CheckpointError(f"{where}: expected version {VERSION}, found {_show(meta.get('version'))}")
            tree = validate(meta.get("tree"), lambda v, p: _decode(v, npz.array, p), where, "tree")
    except CheckpointError:
        raise
    except ValueError as e:
        if str(e).startswith(where):  # already one line naming the file and the field
            raise
        raise ValueError(f"{where} is corrupt or not an apb-ref checkpoint ({str(e)[:200]})") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, RuntimeError,
            NotImplementedError) as e:  # RuntimeError: an encrypted member
        raise ValueError(f"{where} is corrupt or not an apb-ref checkpoint ({str(e)[:200]})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{where}: tree: expected an object, got {_show(tree)}")
    if "config" in tree:  # a Trainer's state: every field typed and in range
        validate(tree, TRAINER_STATE, where, "tree")
    return tree
