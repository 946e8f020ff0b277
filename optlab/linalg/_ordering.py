"""Force one LAPACK call to wait for another (a workaround for a jaxlib CPU deadlock).

jaxlib's batched CPU LAPACK kernels (``eigh``, ``svd``, ...; 0.10.0 to 0.11.0) split the batch
over XLA's intra-op thread pool and block their own pool thread until the pieces are done.
When two such calls run concurrently (XLA's CPU runtime starts independent ops in parallel) on
a pool of two threads (a 2-core machine), both threads block and nothing is left to run the
pieces: the program hangs forever (observed with jaxlib 0.10.2). Giving each call a data
dependency on the previous one's result serializes them; ``lax.optimization_barrier`` did not,
its unused outputs are pruned.

This only orders calls inside one program. It cannot help when a jitted step runs on several
CPU devices: every device runs its own copy of the program at the same time and they share the
pool, so one call per device is enough to hang (Shampoo's first root step did, on 2 and 8
devices of a 2-core machine). :mod:`optlab.linalg._lapack` removes the cause instead: its
``eigh``, ``svd`` and ``qr`` never run LAPACK on XLA's pool, so calls made through it need no
ordering at all, and ``after`` around them only costs a scalar dependency. It stays for the call
sites that still call ``jnp.linalg`` / ``jax.lax.linalg`` directly; once every LAPACK call goes
through ``_lapack`` it can go.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def after(x: jax.Array, previous: jax.Array | None) -> jax.Array:
    """``x`` unchanged, but computed only once ``previous`` is (exactly ``x + 0``)."""
    if previous is None:
        return x
    probe = jnp.ravel(previous)[0].astype(x.dtype)
    # finite * 0 is exactly 0 and XLA cannot fold it away (it cannot prove finiteness).
    zero = jnp.where(jnp.isfinite(probe), probe, 0) * 0
    return x + zero
