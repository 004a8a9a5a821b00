"""Testing as library code: the finite-difference gradient checker, the STE surrogate check and the
op registry (every op's spec, loaded explicitly from the op library, the activation quantizers and
every registered method)."""
from ..ops.spec import OpSpec, random_array  # noqa: F401
from .gradcheck import GradientCheckError, grad_check, numerical_gradient, surrogate_check  # noqa: F401
from .specs import OPS, conv2d_reference, register, uncovered_functions  # noqa: F401
