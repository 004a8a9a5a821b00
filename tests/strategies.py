"""Shared hypothesis strategies: plain functions that return strategies.

Tests import them as `from strategies import ...` (pytest puts tests/ on sys.path).
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Reduction lengths that straddle the 64-bit word boundary, plus one long odd length.
PACK_KS = (1, 63, 64, 65, 577)


def float32_values(allow_infinity=True):
    """float32 values, NaN-free, with the sign edge cases (±0, ±1, tiny subnormals) drawn often."""
    edges = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45])
    return st.one_of(edges, st.floats(width=32, allow_nan=False, allow_infinity=allow_infinity))


def row_counts(max_rows=9):
    """Row counts, including the single-row case."""
    return st.integers(min_value=1, max_value=max_rows)


def float32_matrices(ks=PACK_KS, max_rows=9):
    """(rows, K) float32 arrays with K drawn from `ks`."""
    shapes = st.tuples(row_counts(max_rows), st.sampled_from(ks))
    return shapes.flatmap(lambda shape: hnp.arrays(np.float32, shape, elements=float32_values()))


def pm_one_matrices(rows, k):
    """(rows, k) float32 arrays of exactly ±1."""
    return hnp.arrays(np.float32, (rows, k), elements=st.sampled_from([-1.0, 1.0]))


def pm_one_pairs(ks=PACK_KS, max_rows=6):
    """Two ±1 float32 matrices (m, K) and (n, K) sharing the reduction length K."""
    dims = st.tuples(row_counts(max_rows), row_counts(max_rows), st.sampled_from(ks))
    return dims.flatmap(lambda d: st.tuples(pm_one_matrices(d[0], d[2]), pm_one_matrices(d[1], d[2])))


def conv_geometries(max_images=19):
    """(n, c, h, w, o, k, stride, padding) of a conv whose k×k kernel fits the padded input; the
    image counts straddle the Rust weight gradient's group of 16 images, the widths its direct path's
    threshold (stride 1, output 8 wide)."""
    def fits(g):
        n, c, h, w, o, k, stride, padding = g
        return h + 2 * padding >= k and w + 2 * padding >= k
    return st.tuples(st.integers(1, max_images), st.integers(1, 5), st.integers(1, 7), st.integers(1, 20),
                     st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2)).filter(fits)
