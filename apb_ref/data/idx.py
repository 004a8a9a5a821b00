"""A strict reader (and a tiny writer, for tests) of the IDX format used by MNIST and Fashion-MNIST.

Layout (all sizes big-endian)::

    byte 0-1   0x00 0x00            magic, part 1
    byte 2     dtype code           0x08 ubyte, 0x09 byte, 0x0B >i2, 0x0C >i4, 0x0D >f4, 0x0E >f8
    byte 3     ndim                 number of dimensions
    4*ndim     uint32 sizes         one per dimension
    rest       the data, C order    exactly prod(sizes) * itemsize bytes

Files may be gzipped: a name ending in ``.gz`` is read through `gzip`. Every check raises a
ValueError naming the path and what was expected vs what was found, so a half-downloaded or
mislabelled file is caught at load time rather than as a strange accuracy later.

Memory is bounded by what the file can hold: the header is read first and its claimed data size
checked (at most `MAX_DATA_BYTES`; for a plain file equal to what is on disk, for a gzipped one at
most `MAX_GZIP_RATIO` × the compressed size) before the data is read, and a gzip stream is
decompressed only up to that size plus one byte (to notice trailing data).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "read_idx", "write_idx", "find_idx_file"]

#: IDX dtype code -> NumPy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt: code for code, dt in IDX_DTYPES.items()}


MAX_DATA_BYTES = 1 << 31  # 2 GiB: far above any IDX dataset (Fashion-MNIST's images are 47 MB)
MAX_GZIP_RATIO = 1000  # deflate cannot do better than ~1032:1; real IDX files compress ~2-10:1


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_exactly(f, n: int, where: str) -> bytes:
    """Up to n bytes (fewer only at the end of the stream); never more than asked for."""
    try:
        return f.read(n)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:  # truncated, corrupt, or not gzip at all
        raise ValueError(f"{where}: cannot read ({type(e).__name__}: {e})") from e


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a NumPy array of its stored shape.

    Returns an array of shape ``sizes`` (e.g. ``(N, 28, 28)`` uint8 for images, ``(N,)`` uint8 for
    labels), in native byte order. Raises FileNotFoundError if the file is missing and ValueError
    (with the path) on a bad magic number, unknown dtype code, wrong ``expected_ndim``, a data
    section that is shorter or longer than the header promises, or one larger than the file can
    plausibly hold (checked before it is read).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {str(path)!r}")
    where = f"IDX file {str(path)!r}"
    with _open(path) as f:
        shape, dtype, header = _read_header(f, where, expected_ndim)
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        _check_claim(path, where, shape, dtype, expected, header)
        raw = _read_exactly(f, expected + 1, where)  # one byte more: trailing data is an error
    found = len(raw)
    if found != expected:
        kind = "truncated data" if found < expected else "trailing bytes after the data"
        raise ValueError(f"{where}: {kind}: header says shape {shape} of {dtype} = {expected} bytes, "
                         f"found {found if found < expected else 'more than ' + str(expected)} bytes")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    # Native byte order, writeable copy only when needed (uint8 stays a view of the bytes: read-only is fine).
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else arr


def _read_header(f, where: str, expected_ndim: int | None) -> tuple[tuple[int, ...], np.dtype, int]:
    raw = _read_exactly(f, 4, where)
    if len(raw) < 4:
        raise ValueError(f"{where}: expected at least a 4-byte header, found {len(raw)} bytes (truncated?)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{where}: bad magic number: expected first two bytes 0x00 0x00, "
                         f"found 0x{raw[0]:02X} 0x{raw[1]:02X} (not an IDX file, or still compressed?)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{where}: bad magic number: unknown dtype code 0x{code:02X}, expected one of {known}")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{where}: expected {expected_ndim} dimension(s) (idx{expected_ndim}), "
                         f"found {ndim} in the magic number")
    sizes = _read_exactly(f, 4 * ndim, where)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{where}: truncated header: expected {4 + 4 * ndim} bytes for {ndim} sizes, "
                         f"found {4 + len(sizes)} bytes")
    shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4", count=ndim))
    return shape, IDX_DTYPES[code], 4 + 4 * ndim


def _check_claim(path: Path, where: str, shape, dtype, expected: int, header: int) -> None:
    """Refuse a data size the file cannot hold before reading (allocating) it."""
    claim = f"header says shape {shape} of {dtype} = {expected} bytes"
    on_disk = path.stat().st_size
    if expected > MAX_DATA_BYTES:
        raise ValueError(f"{where}: implausible size: {claim}, more than the {MAX_DATA_BYTES}-byte limit")
    if path.name.endswith(".gz") and expected > MAX_GZIP_RATIO * on_disk:
        raise ValueError(f"{where}: implausible size: {claim}, more than {MAX_GZIP_RATIO}x the "
                         f"{on_disk}-byte compressed file")
    if not path.name.endswith(".gz") and expected > on_disk - header:
        raise ValueError(f"{where}: truncated data: {claim}, found {on_disk - header} bytes")


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``). Used by the tests to make
    small synthetic datasets; supports the dtypes in `IDX_DTYPES`."""
    path = Path(path)
    arr = np.asarray(array)
    target = next((dt for dt in IDX_DTYPES.values() if dt.kind == arr.dtype.kind
                   and dt.itemsize == arr.dtype.itemsize), None)
    if target is None:
        raise ValueError(f"array: expected a dtype storable in IDX ({', '.join(map(str, IDX_DTYPES.values()))}), "
                         f"got {arr.dtype}")
    if arr.ndim > 255:
        raise ValueError(f"array: expected at most 255 dimensions, got {arr.ndim}")
    head = bytes([0, 0, _CODE_OF[target], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(arr, dtype=target).tobytes()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + body)
    return path


def find_idx_file(data_dir: str | os.PathLike, stem: str) -> Path | None:
    """Return ``data_dir/stem`` or ``data_dir/stem.gz``, whichever exists (plain first), else None."""
    for name in (stem, stem + ".gz"):
        p = Path(data_dir) / name
        if p.is_file():
            return p
    return None
