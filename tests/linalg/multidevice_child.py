"""Child process of tests/linalg/test_multidevice.py: batched LAPACK inside jitted steps on
several forced CPU devices (the setting where Shampoo's first root step used to hang).

    XLA_FLAGS=--xla_force_host_platform_device_count=N \
        python tests/linalg/multidevice_child.py [WATCHDOG_SECONDS]

The parent sets the flag (a process's device count is fixed when JAX starts) and a timeout.
Every computation runs once on a single device (the reference, committed to device 0) and on an
N-device mesh, with operands replicated and with them sharded along their leading (stacked
block) axis. The last stdout line is a JSON object: per case, the largest difference to the
reference and the bound it must stay under (the parent asserts), plus what was sharded.

Shampoo case: the issue's reproduction, ``optlab.shampoo(1e-3, precondition_every=1,
start_preconditioning_step=1, block_size=128)`` on 16 leaves of 256 x 256 (64 blocks, 128
statistics of 128 x 128, all rooted every step from step 1), 3 jitted steps. Every 128 x 128
block of every gradient is ``U diag(sigma) V^T`` with fixed random orthogonal ``U``, ``V`` per
block and ``sigma`` drawn in [1, 2] each step, so every statistic (a weighted sum of
``G G^T`` or ``G^T G``) has eigenvalues in ``[c, 4c]``: condition number ``kappa <= 4`` by
construction, which makes the round-off bound below a number known in advance.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optlab  # noqa: E402
from optlab.linalg import _lapack, inverse_root  # noqa: E402
from tests.linalg.error_bounds import (  # noqa: E402
    U32,
    polar_factor_error_bound,
    regularized_condition,
    root_relative_error_bound,
)

N_LEAVES, SHAPE, BLOCK, STEPS = 16, (256, 256), 128, 3
LR, B1 = 1e-3, 0.9  # b1 given explicitly: the bound below inverts the momentum EMA
KAPPA = 4.0  # condition number bound of every statistic (module docstring)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def gradients() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nb = SHAPE[0] // BLOCK
    bases = [
        [(_orthogonal(rng, BLOCK), _orthogonal(rng, BLOCK)) for _ in range(nb * nb)]
        for _ in range(N_LEAVES)
    ]
    out = []
    for _ in range(STEPS):
        grads = {}
        for i in range(N_LEAVES):
            leaf = np.empty(SHAPE, np.float32)
            for b, (u, v) in enumerate(bases[i]):
                r, c = divmod(b, nb)
                sigma = rng.uniform(1.0, 2.0, BLOCK)
                leaf[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = (u * sigma) @ v.T
            grads[f"w{i:02d}"] = leaf
        out.append(grads)
    return out


def _leading_axis_sharding(mesh: Mesh, x) -> NamedSharding:
    """Shard the leading axis over all devices where it divides evenly, else replicate."""
    n = mesh.devices.size
    if getattr(x, "ndim", 0) >= 1 and x.shape[0] % n == 0 and x.shape[0] >= n:
        return NamedSharding(mesh, P("d", *([None] * (x.ndim - 1))))
    return NamedSharding(mesh, P())


def _placements(mesh: Mesh):
    """(name, place(tree) -> shardings) for the reference and the two multi-device layouts."""
    replicated = NamedSharding(mesh, P())
    single = jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
    return [
        ("reference", lambda tree: jax.tree.map(lambda _: single, tree)),
        ("replicated", lambda tree: jax.tree.map(lambda _: replicated, tree)),
        ("sharded", lambda tree: jax.tree.map(lambda x: _leading_axis_sharding(mesh, x), tree)),
    ]


def _is_sharded(sharding) -> bool:
    return not sharding.is_fully_replicated and len(sharding.device_set) > 1


# -- Shampoo -------------------------------------------------------------------------------------
def shampoo_runs(mesh: Mesh) -> dict:
    grads = gradients()
    params = {k: np.zeros(SHAPE, np.float32) for k in grads[0]}
    tx = optlab.shampoo(
        LR, b1=B1, precondition_every=1, start_preconditioning_step=1, block_size=BLOCK
    )
    results = {}
    for name, place in _placements(mesh):
        param_sh = place(params)
        state_sh = place(jax.eval_shape(tx.init, params))
        state = jax.jit(tx.init, out_shardings=state_sh)(jax.device_put(params, param_sh))
        step = jax.jit(tx.update, out_shardings=(param_sh, state_sh))
        p = jax.device_put(params, param_sh)
        updates = []
        for g in grads:
            u, state = step(jax.device_put(g, param_sh), state, p)
            updates.append({k: np.asarray(v, np.float64) for k, v in u.items()})
        roots = next(
            s
            for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optlab.ShampooState))
            if isinstance(s, optlab.ShampooState)
        ).roots
        results[name] = {
            "updates": updates,
            "roots": np.asarray(roots, np.float64),
            "sharded_state_leaves": sum(_is_sharded(x.sharding) for x in jax.tree.leaves(state)),
            "state_leaves": len(jax.tree.leaves(state)),
        }
    return results


def shampoo_update_bounds(ref_updates: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
    """Per step and leaf, a bound on ``||u_multi - u_ref||_F`` for two round-off-different runs.

    Each step's direction ``d_s`` is, per block, the graft's norm times ``P / ||P||`` with
    ``P = L^{-1/4} G R^{-1/4}`` (the graft alone at step 0). In one run:

    * a root of a ``d x d`` statistic has relative error ``e = root_relative_error_bound(d,
      kappa, 4)`` (Frobenius, so at most ``sqrt(d) e`` in the spectral norm), and ``||P||_F >=
      sigma_min(L^{-1/4}) ||G R^{-1/4}||_F``: the roots move ``P`` by at most ``sqrt(d)
      kappa^{1/4} (e_L + e_R)`` relative; the two products add ``d^{3/2} u kappa^{1/4}`` each
      (elementwise product bounds); together ``rho``;
    * ``P / ||P||`` doubles a relative error (``2 rho``), and the two norms (the graft's and
      ``P``'s, sums of ``n`` squares, ``n`` = block size) are off by ``n u / 2`` each;
    * the graft (Adam, elementwise) rounds about 10 times: ``10 u``.

    Two runs differ by up to twice one run's error: ``delta_s ||d_s||`` with ``delta_0 = 20 u``
    and ``delta_s = 2 (2 rho + n u + 10 u)`` for the steps with roots. The update is
    ``-lr EMA_b1(d)_k / (1 - b1^(k+1))`` (debiased momentum), so the steps' errors add up with
    the EMA's weights (``||d_s||`` per leaf comes from the reference updates, inverting the
    EMA), plus ``2 * 3 u ||u_k||`` for rounding the EMA, its debiasing and the learning rate.
    """
    d, n, kappa_q = BLOCK, BLOCK * BLOCK, KAPPA**0.25
    e = root_relative_error_bound(d, KAPPA, 4)
    rho = np.sqrt(d) * kappa_q * 2 * e + 2 * d**1.5 * U32 * kappa_q
    delta = [20 * U32] + [2 * (2 * rho + n * U32 + 10 * U32)] * (STEPS - 1)
    bounds = []
    for k in range(STEPS):
        per_leaf = {}
        for name in ref_updates[0]:
            ema = [-(1 - B1 ** (s + 1)) * ref_updates[s][name] / LR for s in range(k + 1)]
            directions = [(ema[s] - (B1 * ema[s - 1] if s else 0)) / (1 - B1) for s in range(k + 1)]
            err = sum(
                (1 - B1) * B1 ** (k - s) * delta[s] * np.linalg.norm(directions[s])
                for s in range(k + 1)
            )
            per_leaf[name] = LR * err / (1 - B1 ** (k + 1)) + 6 * U32 * np.linalg.norm(
                ref_updates[k][name]
            )
        bounds.append(per_leaf)
    return bounds


def shampoo_case(mesh: Mesh) -> dict:
    runs = shampoo_runs(mesh)
    ref = runs["reference"]
    bounds = shampoo_update_bounds(ref["updates"])
    out = {}
    for name in ("replicated", "sharded"):
        run = runs[name]
        worst = 0.0  # largest |diff| / bound over steps and leaves
        for k in range(STEPS):
            for leaf, bound in bounds[k].items():
                diff = np.linalg.norm(run["updates"][k][leaf] - ref["updates"][k][leaf])
                worst = max(worst, float(diff / bound) if np.isfinite(diff) else np.inf)
        roots_diff = np.linalg.norm(run["roots"] - ref["roots"]) / np.linalg.norm(ref["roots"])
        out[name] = {
            "update_diff_over_bound": worst,
            "roots_relative_diff": float(roots_diff),
            # Each root within root_relative_error_bound of the exact one (Frobenius), so the
            # whole buffer of roots of two runs within twice that.
            "roots_bound": 2 * root_relative_error_bound(BLOCK, KAPPA, 4),
            "updates_finite": all(
                np.all(np.isfinite(v)) for u in run["updates"] for v in u.values()
            ),
            "sharded_state_leaves": run["sharded_state_leaves"],
            "state_leaves": run["state_leaves"],
            "max_update": max(float(np.max(np.abs(v))) for v in run["updates"][-1].values()),
        }
    return out


# -- the kernels themselves, inside lax.cond (the reporter's narrowed reproduction) -------------
def kernel_case(mesh: Mesh) -> dict:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((64, 128, 256))
    spd = (g @ np.swapaxes(g, -1, -2) / 256).astype(np.float32)  # kappa ~ 34
    wide = rng.standard_normal((64, 96, 128)).astype(np.float32)
    tall = np.swapaxes(wide, -1, -2).copy()

    def roots(x, method):
        return jax.lax.cond(
            x[0, 0, 0] > 0,
            lambda: inverse_root(x, 4, method=method, return_error=True).root,
            lambda: jnp.zeros_like(x),
        )

    fns = {
        "eigh": jax.jit(lambda x: roots(x, "eigh")),
        "eigh64": jax.jit(lambda x: roots(x, "eigh64")),
        "auto": jax.jit(lambda x: roots(x, "auto")),
        "svd": jax.jit(
            lambda x: jax.lax.cond(
                x[0, 0, 0] > -1e30, lambda: _lapack.svd(x), lambda: _lapack.svd(-x)
            )
        ),
        "qr": jax.jit(_lapack.qr),
        # Four independent batched eighs in one program, nothing ordering them (the hang
        # optlab.linalg._ordering.after works around inside a program with jaxlib's kernels).
        "independent": jax.jit(
            lambda x: jnp.stack([_lapack.eigh(x * (i + 1.0))[0] / (i + 1.0) for i in range(4)])
        ),
    }
    inputs = {"eigh": spd, "eigh64": spd, "auto": spd, "svd": wide, "qr": tall, "independent": spd}
    outputs = {}
    for name, place in _placements(mesh):
        outputs[name] = {
            k: jax.tree.map(
                lambda y: np.asarray(y, np.float64), fn(jax.device_put(inputs[k], place(inputs[k])))
            )
            for k, fn in fns.items()
        }
    kappa = max(regularized_condition(a) for a in spd)
    root_bound = 2 * root_relative_error_bound(128, kappa, 4)  # two runs, each within one bound
    x64, t64 = wide.astype(np.float64), tall.astype(np.float64)
    out = {}
    for name in ("replicated", "sharded"):
        res, ref = outputs[name], outputs["reference"]
        case = {}
        for k in ("eigh", "eigh64", "auto"):
            diff = np.linalg.norm(res[k] - ref[k], axis=(-2, -1)) / np.linalg.norm(
                ref[k], axis=(-2, -1)
            )
            case[k] = [float(np.max(diff)), root_bound]
        # svd: the polar factor U V^T is unique (full rank); a backward-stable SVD's is within
        # polar_factor_error_bound of the exact one, so two runs within twice the worst bound.
        u, _, vt = res["svd"]
        ru, _, rvt = ref["svd"]
        polar_diff = max(
            float(np.linalg.norm(u[i] @ vt[i] - ru[i] @ rvt[i])) for i in range(len(wide))
        )
        case["svd"] = [polar_diff, 2 * max(polar_factor_error_bound(x) for x in x64)]
        # qr: against the input itself (Householder QR is backward stable: ||QR - A||_F and
        # ||Q^T Q - I||_F within a small multiple of m n u ||A||_F and m n u; 4 m n u used).
        q, r = res["qr"]
        m, n = tall.shape[-2:]
        recon = max(
            float(np.linalg.norm(q[i] @ r[i] - t64[i]) / np.linalg.norm(t64[i]))
            for i in range(len(tall))
        )
        orth = max(float(np.linalg.norm(q[i].T @ q[i] - np.eye(n))) for i in range(len(tall)))
        case["qr"] = [max(recon, orth), 4 * m * n * U32]
        # Eigenvalues of each run within (d + sqrt(d)) u ||a||_2 of the exact ones (backward
        # error of LAPACK and of rounding the scaled input): two runs within twice that.
        lam = np.max(np.abs(ref["independent"]), axis=-1, keepdims=True)
        case["independent"] = [
            float(np.max(np.abs(res["independent"] - ref["independent"]) / lam)),
            2 * (128 + np.sqrt(128)) * U32,
        ]
        out[name] = case
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        # Watchdog: on a hang, print every thread's Python stack and exit (the parent's timeout
        # would only say that it hung, not where).
        faulthandler.dump_traceback_later(float(argv[1]), exit=True)
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("d",))
    result = {"devices": len(devices), "shampoo": shampoo_case(mesh), "kernels": kernel_case(mesh)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
