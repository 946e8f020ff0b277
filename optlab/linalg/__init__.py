"""Matrix kernels: inverse p-th roots of PSD matrices and orthogonal polar factors."""

from optlab.linalg.orthogonalize import (
    NEWTON_SCHULZ_COEFFICIENTS,
    ORTHOGONALIZE_METHODS,
    default_steps,
    orthogonality_error,
    orthogonalize,
    resolve_coefficients,
)
from optlab.linalg.polar_express import (
    PolarExpressStep,
    polar_express_coefficients,
    polar_express_steps,
)

__all__ = [
    "NEWTON_SCHULZ_COEFFICIENTS",
    "ORTHOGONALIZE_METHODS",
    "PolarExpressStep",
    "default_steps",
    "orthogonality_error",
    "orthogonalize",
    "polar_express_coefficients",
    "polar_express_steps",
    "resolve_coefficients",
]

from optlab.linalg.roots import (  # noqa: E402
    AUTO_FLOAT32_MAX_CONDITION,
    INVERSE_ROOT_METHODS,
    InverseRoot,
    condition_estimate,
    inverse_root,
    matrix_power,
    max_eigenvalue_estimate,
    residual,
    resolve_method,
)

__all__ += [
    "AUTO_FLOAT32_MAX_CONDITION",
    "INVERSE_ROOT_METHODS",
    "InverseRoot",
    "condition_estimate",
    "inverse_root",
    "matrix_power",
    "max_eigenvalue_estimate",
    "residual",
    "resolve_method",
]
