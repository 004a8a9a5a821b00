"""Reader for the CIFAR-10 "python version": pickled batches ``data_batch_1`` … ``data_batch_5`` and
``test_batch``, each a dict with ``b'data'`` (uint8, (N, 3072), rows = R plane, G plane, B plane of a
32x32 image) and ``b'labels'`` (N ints in [0, 10)).

The batches are pickles, so they are read with an unpickler that only resolves the few NumPy names
an array needs: a stray or malicious file in ``data_dir`` fails with a ValueError instead of running
code. Those names are handed out as checked stand-ins, so a pickle can rebuild an array only the
way NumPy writes one (an empty array filled from bytes the file holds): it cannot call ``ndarray``
with its own strides (a 285-byte pickle could otherwise describe a zero-stride "array" of
gigabytes that the first copy materialises), nor allocate a large empty array. Every array that
comes out is then checked before use: it holds no more bytes than the file, and no zero strides.
The file is read into memory first (it is bounded by its size on disk), so a pickle opcode that
claims a huge length finds the end of the data instead of allocating it. Nothing is downloaded:
the directory must already hold the extracted batches.
"""
from __future__ import annotations

import codecs
import io
import math
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILES", "resolve_cifar10_dir", "read_cifar10_batch",
           "load_cifar10_arrays"]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
_SUBDIR = "cifar-10-batches-py"  # what the official tarball extracts to
_NUM_CLASSES = 10

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric", "numpy")


class _ArrayType:
    """Stands for `np.ndarray` inside a pickle: usable as `_reconstruct`'s subtype, not callable."""


def _reconstruct(subtype, shape, dtype):
    """What every pickled ndarray starts from: an empty array that `__setstate__` then fills with
    bytes the pickle holds. NumPy always writes shape (0,); nothing larger is made here."""
    if subtype is not _ArrayType or not isinstance(shape, tuple) or math.prod(shape) != 0:
        raise pickle.UnpicklingError(f"refusing _reconstruct({subtype!r:.40}, {shape!r:.40}): not how NumPy pickles an array")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype, data=None):
    """A NumPy number scalar from its bytes (nothing else: no object scalars)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"refusing a NumPy scalar of dtype {dtype!r:.40}")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buf, dtype, shape, order):  # protocol-5 pickles: a view of bytes the pickle holds
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


# (module, name) a pickled batch may reference, under NumPy 1 and 2 module paths -> what it gets
_ALLOWED = {(mod, name): obj for mod in _NUMPY_MODULES
            for name, obj in (("_reconstruct", _reconstruct), ("ndarray", _ArrayType), ("dtype", np.dtype),
                              ("scalar", _scalar), ("_frombuffer", _frombuffer))}
_ALLOWED[("_codecs", "encode")] = codecs.encode  # how protocol-2 pickles written by Python 3 store bytes


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR batch")


def _check_array(a, what: str, where: str, file_size: int) -> None:
    """An unpickled array holds bytes from the file: refuse views that claim more (zero strides)."""
    if isinstance(a, np.ndarray) and (a.nbytes > file_size or (a.size > 1 and 0 in a.strides)):
        raise ValueError(f"{where}: {what} is {a.dtype} {a.shape} ({a.nbytes:,} bytes, strides {a.strides}), "
                         f"more than the {file_size:,}-byte file holds")


def resolve_cifar10_dir(data_dir: str | os.PathLike) -> Path:
    """The directory that holds the batches: ``data_dir`` itself, or its ``cifar-10-batches-py``
    subdirectory (so the parent of the extracted tarball works too)."""
    d = Path(data_dir)
    if not (d / CIFAR10_TRAIN_FILES[0]).is_file() and (d / _SUBDIR).is_dir():
        return d / _SUBDIR
    return d


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch. Returns ``x`` uint8 (N, 3, 32, 32) and ``y`` int64 (N,).

    Raises FileNotFoundError if missing, ValueError (naming the path) if it is not a CIFAR-10 batch
    (unreadable pickle, missing keys, wrong data shape/dtype, label count or range)."""
    path = Path(path)
    where = f"CIFAR-10 batch {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} not found")
    raw = path.read_bytes()
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means "not a CIFAR batch"
        raise ValueError(f"{where}: expected a pickled dict, could not unpickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: expected a pickled dict, found {type(batch).__name__}")
    # Official files use bytes keys (Python 2 pickles); accept str keys from hand-made files too.
    get = lambda k: batch.get(k.encode(), batch.get(k))  # noqa: E731
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"{where}: expected keys b'data' and b'labels', found {sorted(map(repr, batch))}")
    _check_array(data, "b'data'", where, len(raw))
    _check_array(labels, "b'labels'", where, len(raw))
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{where}: expected b'data' to be a uint8 array, found {type(data).__name__}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(f"{where}: expected b'data' uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise ValueError(f"{where}: expected {len(data)} labels (one per image), found {type(labels).__name__} "
                         f"of length {len(labels) if isinstance(labels, (list, np.ndarray)) else '?'}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError) as e:  # ragged or odd lists
        raise ValueError(f"{where}: expected integer labels, found {str(e)[:100]}") from None
    if y.ndim != 1 or len(y) != len(data):
        raise ValueError(f"{where}: expected {len(data)} labels (one per image), found shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and len(y):
        raise ValueError(f"{where}: expected integer labels, found {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        raise ValueError(f"{where}: expected labels in [0, {_NUM_CLASSES}), found range [{y.min()}, {y.max()}]")
    return data.reshape(-1, 3, 32, 32), y


def _read_many(d: Path, names: tuple[str, ...], limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys, have = [], [], 0
    for name in names:
        if limit is not None and have >= limit:
            break  # enough samples: skip unpickling the remaining batches
        x, y = read_cifar10_batch(d / name)
        xs.append(x)
        ys.append(y)
        have += len(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])


def load_cifar10_arrays(data_dir: str | os.PathLike, limit_train: int | None = None,
                        limit_test: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load all batches from ``data_dir``. Returns ``x_train`` uint8 (N, 3, 32, 32), ``y_train`` int64 (N,),
    ``x_test``, ``y_test`` (50000 / 10000 samples for the real set). Checks every file is present first,
    so a partial directory fails with one message listing what is missing."""
    d = resolve_cifar10_dir(data_dir)
    expected = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    missing = [n for n in expected if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10: missing {', '.join(missing)} in {str(d)!r}; expected the python-version batches "
            f"{', '.join(expected)} (the extracted 'cifar-10-batches-py' directory). Nothing is downloaded "
            f"at run time: pass data_dir pointing at a local copy.")
    return (*_read_many(d, CIFAR10_TRAIN_FILES, limit_train), *_read_many(d, CIFAR10_TEST_FILES, limit_test))
