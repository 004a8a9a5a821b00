"""Run memory-bound NumPy work on every core.

NumPy's element-wise loops and copies are single-threaded but release the GIL, so splitting one
big copy into per-thread slices of an axis runs them on all cores (BLAS already does this for
matrix products). Used only where a profile showed copies dominating (the conv lowering).
`APB_NUM_THREADS` caps the thread count (default: every core).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    value = os.environ.get("APB_NUM_THREADS")
    if value is None:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"APB_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


# Below this many elements a copy takes well under a millisecond: threads would cost more than they save.
MIN_PARALLEL_ELEMENTS = 1 << 19


def over_slices(fn: Callable[[slice], None], length: int, elements: int) -> None:
    """Call fn(s) for contiguous slices s that cover range(length), in parallel threads when the
    work (`elements` array elements touched) is large enough to pay for them."""
    global _pool
    workers = min(num_threads(), length) if elements >= MIN_PARALLEL_ELEMENTS else 1
    if workers <= 1:
        fn(slice(0, length))
        return
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apb-ref")
    bounds = [length * k // workers for k in range(workers + 1)]
    for future in [_pool.submit(fn, slice(a, b)) for a, b in zip(bounds, bounds[1:])]:
        future.result()  # re-raises a worker's exception here
