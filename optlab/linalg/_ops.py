"""Small numeric helpers shared by the kernels and the analysis tools."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` in full float32 precision (GPUs would otherwise use TF32 for float32)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# Scale invariance. Multiplying by a power of two changes only the exponent bits, so it is exact
# (while the result stays in the normal range) and can be undone exactly: the kernels bring each
# matrix near unit scale this way, work there, and scale the result back.


def pow2(n: jax.Array, dtype) -> jax.Array:
    """``2.0**n`` exactly in ``dtype``, built from the exponent bits (``n`` an integer array
    within ``dtype``'s normal exponent range; ``jnp.ldexp`` goes through ``pow``)."""
    info = jnp.finfo(dtype)
    int_dtype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]
    bits = (jnp.asarray(n) + (info.maxexp - 1)).astype(int_dtype) << info.nmant
    return jax.lax.bitcast_convert_type(bits, dtype)


def max_abs_exponent(x: jax.Array, multiple: int = 1) -> jax.Array:
    """Per matrix (``x``: ``[..., m, n]``) the integer ``k`` with ``max|x| 2^(-multiple k)`` in
    ``[2^-multiple, 1)``: scaling by ``2^(-multiple k)`` brings ``x`` near unit scale, and a
    ``multiple``-th root scales back by exactly ``2^-k``. 0 for zero or non-finite matrices
    (nothing to scale), and ``|multiple k| <= 240`` so that :func:`scale_pow2` stays exact."""
    peak = jnp.max(jnp.abs(x), axis=(-2, -1), initial=0.0)  # initial: 0-size matrices
    _, e = jnp.frexp(peak.astype(jnp.promote_types(x.dtype, jnp.float32)))
    e = jnp.where(jnp.isfinite(peak) & (peak > 0), e, 0)
    k = -((-e) // multiple)  # ceil(e / multiple)
    limit = 240 // multiple
    return jnp.clip(k, -limit, limit)


def scale_pow2(x: jax.Array, n: jax.Array) -> jax.Array:
    """``x * 2^n`` per matrix (``n``: an integer per matrix, ``|n| <= 252``), exact unless the
    result leaves the normal range. Two factors, so each is a normal number for float32."""
    half = n // 2
    f1 = pow2(half, x.dtype)[..., None, None]
    f2 = pow2(n - half, x.dtype)[..., None, None]
    return x * f1 * f2
