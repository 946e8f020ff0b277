"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change.
"""

from optlab import analysis, lab, linalg
from optlab.sam import SAMPerturbState, sam, sam_perturb, sam_perturbation
from optlab.shampoo import ShampooState, scale_by_shampoo, shampoo

__all__ = [
    "SAMPerturbState",
    "ShampooState",
    "analysis",
    "lab",
    "linalg",
    "sam",
    "sam_perturb",
    "sam_perturbation",
    "scale_by_shampoo",
    "shampoo",
]

__version__ = "0.1.0"
