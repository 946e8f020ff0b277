"""Small, deterministic optimisation targets for the contract suite.

Every problem is a dict-of-arrays params pytree (float32) plus a scalar loss whose minimum is
exactly 0, so "converged" can be stated relative to the initial loss:

    final_loss <= problem.rtol * initial_loss        after subject.steps * problem.steps_factor

The targets are tiny on purpose (the whole contract suite must stay fast on a 2-core CPU), but
each stresses something different:

* ``parabola``: a diagonal quadratic on a (16,) vector with curvatures spread over 100x.
* ``rosenbrock``: the classic banana valley on two 0-d scalars, started at (-1.2, 1). Slow for
  every first-order method, so it gets twice the steps; ``rtol = 1e-3`` means loss <= 0.0242,
  i.e. the iterate has followed the valley to within ~0.15 of the minimum at (1, 1).
* ``matrix_parabola``: 0.5 * ||A (W - W*) B||_F^2 for W of shape (8, 16), A and B dense
  (random rotations) with singular values over ~3x each, so the Hessian (A^T A) kron (B B^T) is
  not diagonal and has condition number ~100.
* ``mixed``: noise-free linear regression with a (16, 8) weight matrix and a (8,) bias (one 2-D
  and one 1-D leaf), features scaled over 10x. This is also the problem the structural checks
  (jit, checkpoint, sharding, NaN) run on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    init_params: Callable[[], Params]  # a fresh params pytree of float32 arrays
    loss: Callable[[Params], jax.Array]  # scalar loss, minimum 0
    rtol: float = 1e-3  # pass: final loss <= rtol * initial loss
    steps_factor: int = 1  # the convergence run lasts subject.steps * steps_factor steps


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _rotation(rng: np.random.Generator, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


# -- parabola ------------------------------------------------------------------------------------
_rng = np.random.default_rng(0)
_PARABOLA_CURV = _f32(np.logspace(-1.0, 1.0, 16))
_PARABOLA_TARGET = _f32(_rng.normal(size=16))


def _parabola_loss(params: Params) -> jax.Array:
    return 0.5 * jnp.sum(_PARABOLA_CURV * (params["x"] - _PARABOLA_TARGET) ** 2)


def _parabola_init() -> Params:
    return {"x": jnp.zeros(16, jnp.float32)}


# -- Rosenbrock ----------------------------------------------------------------------------------
def _rosenbrock_loss(params: Params) -> jax.Array:
    x, y = params["x"], params["y"]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _rosenbrock_init() -> Params:
    return {"x": jnp.asarray(-1.2, jnp.float32), "y": jnp.asarray(1.0, jnp.float32)}


# -- matrix parabola -----------------------------------------------------------------------------
_rng = np.random.default_rng(1)
_MAT_A = _f32(_rotation(_rng, 8) @ np.diag(np.logspace(-0.5, 0.0, 8)) @ _rotation(_rng, 8))
_MAT_B = _f32(_rotation(_rng, 16) @ np.diag(np.logspace(-0.5, 0.0, 16)) @ _rotation(_rng, 16))
_MAT_TARGET = _f32(_rng.normal(size=(8, 16)))


def _matrix_parabola_loss(params: Params) -> jax.Array:
    r = _MAT_A @ (params["w"] - _MAT_TARGET) @ _MAT_B
    return 0.5 * jnp.sum(r**2)


def _matrix_parabola_init() -> Params:
    return {"w": jnp.zeros((8, 16), jnp.float32)}


# -- mixed 1-D + 2-D: linear regression ----------------------------------------------------------
_rng = np.random.default_rng(2)
_MIX_X = _f32(_rng.normal(size=(64, 16)) * np.logspace(-0.5, 0.5, 16))
_MIX_W = _f32(_rng.normal(size=(16, 8)) / 4.0)
_MIX_B = _f32(_rng.normal(size=8))
_MIX_Y = _f32(_MIX_X @ _MIX_W + _MIX_B)
_MIX_W0 = _f32(_rng.normal(size=(16, 8)) * 0.01)


def _mixed_loss(params: Params) -> jax.Array:
    pred = _MIX_X @ params["w"] + params["b"]
    return 0.5 * jnp.mean(jnp.sum((pred - _MIX_Y) ** 2, axis=-1))


def _mixed_init() -> Params:
    return {"w": jnp.asarray(_MIX_W0), "b": jnp.zeros(8, jnp.float32)}


PARABOLA = Problem("parabola", _parabola_init, _parabola_loss)
ROSENBROCK = Problem("rosenbrock", _rosenbrock_init, _rosenbrock_loss, steps_factor=2)
MATRIX_PARABOLA = Problem("matrix_parabola", _matrix_parabola_init, _matrix_parabola_loss)
MIXED = Problem("mixed", _mixed_init, _mixed_loss)

PROBLEMS: dict[str, Problem] = {p.name: p for p in (PARABOLA, ROSENBROCK, MATRIX_PARABOLA, MIXED)}


# -- matrices only (appended) ----------------------------------------------------------------------
# ``mixed`` without its bias: for transforms that accept rank >= 2 leaves only (optlab's
# scale_by_muon / orthogonalize_muon reject vectors by design). The one leaf is called "w" and has
# mixed's (16, 8) shape, so anything that shards mixed's "w" shards this one the same way.
_rng = np.random.default_rng(3)
_MATREG_X = _f32(_rng.normal(size=(64, 16)) * np.logspace(-0.5, 0.5, 16))
_MATREG_W = _f32(_rng.normal(size=(16, 8)) / 4.0)
_MATREG_Y = _f32(_MATREG_X @ _MATREG_W)
_MATREG_W0 = _f32(_rng.normal(size=(16, 8)) * 0.01)


def _matrix_regression_loss(params: Params) -> jax.Array:
    pred = _MATREG_X @ params["w"]
    return 0.5 * jnp.mean(jnp.sum((pred - _MATREG_Y) ** 2, axis=-1))


def _matrix_regression_init() -> Params:
    return {"w": jnp.asarray(_MATREG_W0)}


MATRIX_REGRESSION = Problem("matrix_regression", _matrix_regression_init, _matrix_regression_loss)
PROBLEMS[MATRIX_REGRESSION.name] = MATRIX_REGRESSION


# -- the multi-device LAPACK size (appended; not in PROBLEMS: no convergence run) ------------------
# For sharded_runner.py only: big enough that a Shampoo root step on 8 CPU devices factors 128
# statistics of 128 x 128 (16 leaves of 256 x 256, block_size=128: 64 blocks), the batch at
# which jaxlib's batched CPU eigh hung a multi-device step (optlab.linalg._lapack). The loss,
# sum_i <W_i, T_i> + c ||W_i||^2 / 2 with c = 1e-3, has no minimum near the start (it is not a
# convergence problem); its gradient T + c W is T to ~1e-3 over a few steps: each 128 x 128
# block of T is U diag(s) V^T with s in [1, 2], so every statistic has condition number ~4 and
# the sharded and single-device roots agree to ~1e-6 (float32 root error d u kappa / p), far
# inside the subjects' rtol. (The c W term keeps the gradient a runtime value: with a constant
# gradient XLA constant-folds the statistics, and the 8-device program then got them wrong.)
LAPACK_BLOCKS_LEAVES, LAPACK_BLOCKS_SHAPE, LAPACK_BLOCKS_BLOCK = 16, (256, 256), 128


def lapack_blocks_target() -> dict[str, np.ndarray]:
    """T: built on first use (not at import: the rest of the suite does not need it)."""
    if not _LAPACK_BLOCKS_TARGET:
        rng = np.random.default_rng(4)
        b = LAPACK_BLOCKS_BLOCK
        # Two orthogonal bases; every block gets them with its own signed row permutation (still
        # orthogonal), instead of 2 x 64 QR factorizations.
        u0, v0 = (np.linalg.qr(rng.normal(size=(b, b)))[0] for _ in range(2))
        nb = LAPACK_BLOCKS_SHAPE[0] // b
        for i in range(LAPACK_BLOCKS_LEAVES):
            t = np.empty(LAPACK_BLOCKS_SHAPE)
            for r in range(nb):
                for c in range(LAPACK_BLOCKS_SHAPE[1] // b):
                    u = u0[rng.permutation(b)] * rng.choice([-1.0, 1.0], size=(b, 1))
                    v = v0[rng.permutation(b)] * rng.choice([-1.0, 1.0], size=(b, 1))
                    t[r * b : (r + 1) * b, c * b : (c + 1) * b] = (u * rng.uniform(1, 2, b)) @ v.T
            _LAPACK_BLOCKS_TARGET[f"w{i:02d}"] = _f32(t)
    return _LAPACK_BLOCKS_TARGET


_LAPACK_BLOCKS_TARGET: dict[str, np.ndarray] = {}


def _lapack_blocks_loss(params: Params) -> jax.Array:
    target = lapack_blocks_target()
    return sum(
        jnp.sum(params[k] * target[k]) + 5e-4 * jnp.sum(params[k] ** 2) for k in sorted(target)
    )


def _lapack_blocks_init() -> Params:
    return {
        f"w{i:02d}": jnp.zeros(LAPACK_BLOCKS_SHAPE, jnp.float32)
        for i in range(LAPACK_BLOCKS_LEAVES)
    }


LAPACK_BLOCKS = Problem("lapack_blocks", _lapack_blocks_init, _lapack_blocks_loss)
