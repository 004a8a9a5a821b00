"""Every registered op: forward equals its plain-NumPy reference, gradient equals finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import apb_ref  # noqa: F401  (imports every module that registers ops)
from apb_ref.autograd import Tensor
from apb_ref.testing import OPS, GradientCheckError, grad_check, surrogate_check, uncovered_functions

SPECS = sorted(OPS)


def test_every_function_has_a_spec():
    assert uncovered_functions() == []


@pytest.mark.parametrize("name", SPECS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_forward_matches_reference(name, data):
    spec = OPS[name]
    if spec.reference is None:
        pytest.skip(f"{name} has no independent reference; its gradient test still runs")
    arrays, options = spec.draw_inputs(data.draw)
    got = spec.call(*[Tensor(a) for a in arrays], **options).data
    np.testing.assert_allclose(got, spec.reference(*arrays, **options), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SPECS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_gradient_matches_finite_differences(name, data):
    spec = OPS[name]
    arrays, options = spec.draw_inputs(data.draw)
    if spec.differentiable != ():
        grad_check(lambda *t: spec.call(*t, **options), *arrays, differentiable=spec.differentiable)
    if spec.surrogate is not None:
        surrogate_check(spec, arrays, options)


def test_grad_check_catches_a_wrong_gradient():
    from apb_ref.autograd import Function

    class WrongSquare(Function):  # d(x²)/dx is 2x, not x
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            return g * ctx.saved[0]

    with pytest.raises(GradientCheckError, match="input 0"):
        grad_check(WrongSquare.apply, np.array([1.0, 2.0, -3.0]))
    # A local subclass must not leak into the registry coverage check.
    import gc
    del WrongSquare
    gc.collect()
