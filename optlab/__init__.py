"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change.
"""

from optlab import analysis, linalg
from optlab.shampoo import ShampooState, scale_by_shampoo, shampoo

__all__ = [
    "ShampooState",
    "analysis",
    "linalg",
    "scale_by_shampoo",
    "shampoo",
]

__version__ = "0.1.0"
