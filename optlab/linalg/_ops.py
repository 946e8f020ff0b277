"""Small numeric helpers shared by the kernels and the analysis tools."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` in full float32 precision (GPUs would otherwise use TF32 for float32)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
