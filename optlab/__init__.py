"""optlab: matrix-aware optimizers as composable optax transforms.

The public API is what this module re-exports; everything else may change.
"""

from optlab import linalg

__all__ = ["linalg"]

__version__ = "0.1.0"
