"""Checkpoints: a nested tree of arrays and plain values in one .npz file, written atomically.

No pickle: arrays go in as npz members, everything else as one JSON member, so a checkpoint can be
opened safely and a damaged one is recognised (ValueError naming the path), never half-loaded.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported for the trainer)

FORMAT = "apb-ref-checkpoint"
VERSION = 1


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


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, arrays) for v in value["__tuple__"])
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__items__"]}
    return value


def save(path: str | os.PathLike, tree: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _encode(tree, arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise ValueError("no __meta__ member")
            meta = json.loads(npz["__meta__"].tobytes().decode())
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"checkpoint {path} is corrupt or not an apb-ref checkpoint ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: expected format {FORMAT!r}, found {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {path}: expected version {VERSION}, found {meta.get('version')!r}")
    return _decode(meta["tree"], arrays)
