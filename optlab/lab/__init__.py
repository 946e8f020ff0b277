"""optlab.lab: experiments about training (sharpness, landscapes, ...).

Lab tools may depend on optlab's transforms, models and data; transforms never import lab.
"""

from optlab.lab import sharpness
from optlab.lab.sharpness import (
    HessianEigen,
    TraceEstimate,
    hessian_eigenvalues_lanczos,
    hessian_eigenvalues_power,
    hessian_trace,
    hessian_vector_product,
)

__all__ = [
    "HessianEigen",
    "TraceEstimate",
    "hessian_eigenvalues_lanczos",
    "hessian_eigenvalues_power",
    "hessian_trace",
    "hessian_vector_product",
    "sharpness",
]
