"""Hostile kernel arguments: both backends agree on what is an error and what is a result."""
import numpy as np
import pytest

from apb_ref import kernels
from apb_ref.kernels import reference

BACKENDS = kernels.available_backends()


@pytest.mark.parametrize("stride", [0, -1, 2**62, 2**63 - 1])
def test_im2col_bits_stride_extremes_agree_across_backends(stride):
    """stride 0 is an error naming it; a stride of 2**62 is one output pixel, in NumPy as in Rust
    (the NumPy oracle used to raise where Rust returned a result)."""
    bits = reference.pack_bits(np.ones((16, 3), np.float32)).reshape(1, 4, 4, 1)
    outcomes = []
    for backend in BACKENDS:
        with kernels.use_backend(backend):
            try:
                outcomes.append(("result", kernels.im2col_bits(bits, 3, 3, 3, stride, 1).tolist()))
            except ValueError as e:
                assert "stride" in str(e)
                outcomes.append(("error", None))
    assert len(set(map(repr, outcomes))) == 1, outcomes
    assert outcomes[0][0] == ("error" if stride < 1 else "result")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [0, -3])
def test_csr_conv2d_and_im2col_refuse_a_stride_below_one(backend, stride):
    x = np.ones((1, 2, 4, 4), np.float32)
    csr = (np.array([0, 1], np.int64), np.array([0], np.int32), np.array([1.0], np.float32))
    with kernels.use_backend(backend):
        with pytest.raises(ValueError, match="stride"):
            kernels.csr_conv2d(*csr, x, 3, 3, stride, 1)
        with pytest.raises(ValueError, match="stride"):
            kernels.im2col(x, 3, 3, stride, 1, layout="columns")
