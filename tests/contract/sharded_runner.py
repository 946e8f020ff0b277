"""Sharded-vs-single-device runs of every contract subject, in one process.

Launched once per test session by ``checks.run_sharded_runner`` (JAX start-up and compilation
are slow on small CPUs, so all subjects share one subprocess)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/contract/sharded_runner.py OUT.json

(the script sets both variables itself when they are missing, so the plain command works too).

For each subject, on its ``structural_problem`` (``problems.MIXED`` unless it says
otherwise; its leaves are called "w" and "b"): the params are placed on a (4, 2) mesh of 8 CPU
devices (the (16, 8) matrix split over both axes, the (8,) bias over all 8 devices), the
optimizer state gets the matching shardings via ``optax.tree.map_params`` (parameter-shaped
leaves sharded like their parameter, everything else replicated) and ``jax.jit(tx.init,
out_shardings=...)``, and a few jitted steps run with those in/out shardings. The same steps
run unsharded on one device; every leaf of (params, state) must agree within
``leaf_mismatches`` with the subject's ``rtol``, and the sharded params must really be spread
over 8 devices. Subjects that factor matrices with batched LAPACK calls (``LAPACK_RUNS``) run
the same comparison again on ``problems.LAPACK_BLOCKS``, a size at which such a step used to
hang on several CPU devices; a subject that takes longer than ``SUBJECT_TIMEOUT_S`` makes the
runner print every thread's stack and exit with an error instead of hanging.

Output JSON: ``{"device_count": int, "subjects": {name: {"error": str | None,
"problems": [str], "compared_leaves": int, "max_abs_diff": float}}}``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_N_DEVICES = 8
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_N_DEVICES}"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import faulthandler  # noqa: E402
import json  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from tests.contract.checks import (  # noqa: E402
    CLEAN,
    is_masked,
    leaf_mismatches,
    make_step,
    plain_tx,
    skip_masked,
)
from tests.contract.problems import (  # noqa: E402
    LAPACK_BLOCKS,
    LAPACK_BLOCKS_BLOCK,
    Problem,
)
from tests.contract.subjects import SUBJECTS, Subject  # noqa: E402

N_STEPS = 4
PARAM_SPECS = {"w": P("x", "y"), "b": P(("x", "y"))}
#: Subjects whose steps factor matrices with batched LAPACK calls, and the options that make
#: those batches big on ``problems.LAPACK_BLOCKS``: 128 statistics of 128 x 128 at every root
#: step (roots at steps 1 and 3 of N_STEPS, or 1). That size hung Shampoo's first root step on
#: 2 and 8 CPU devices with jaxlib's own batched eigh (optlab.linalg._lapack); the tiny MIXED
#: problem never did.
LAPACK_RUNS: dict[str, dict[str, Any]] = {
    "shampoo": {"block_size": LAPACK_BLOCKS_BLOCK},
    "scale_by_shampoo": {"block_size": LAPACK_BLOCKS_BLOCK},
}
#: A subject that takes longer than this is taken to hang: the runner prints every thread's
#: stack and exits (``faulthandler``), so the test fails with a traceback instead of waiting for
#: the parent's timeout. Normal runs take seconds (the LAPACK_BLOCKS ones up to ~2 minutes on a
#: loaded 2-core machine).
SUBJECT_TIMEOUT_S = 420


def _compare(
    subject: Subject,
    tx: optax.GradientTransformation,
    problem: Problem,
    param_specs: dict[str, P],
    mesh: Mesh,
) -> dict[str, Any]:
    """N_STEPS jitted steps on one device and on ``mesh`` (params sharded by ``param_specs``,
    state leaves like their parameter); the differences found."""
    step = make_step(tx, subject, problem)
    params = problem.init_params()
    problems: list[str] = []

    # Single device reference.
    ref_step = jax.jit(step)
    ref_params, ref_state = params, tx.init(params)
    for _ in range(N_STEPS):
        ref_params, ref_state, _ = ref_step(ref_params, ref_state, CLEAN)

    # Sharded run.
    replicated = NamedSharding(mesh, P())
    param_sh = {k: NamedSharding(mesh, param_specs[k]) for k in params}
    abstract_state = jax.eval_shape(tx.init, params)
    state_sh = optax.tree.map_params(
        tx,
        skip_masked(lambda _, s: s),
        abstract_state,
        param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=is_masked,
    )
    sh_params = jax.device_put(params, param_sh)
    sh_state = jax.jit(tx.init, out_shardings=state_sh)(sh_params)
    sh_step = jax.jit(
        step,
        in_shardings=(param_sh, state_sh, replicated),
        out_shardings=(param_sh, state_sh, replicated),
    )
    for _ in range(N_STEPS):
        sh_params, sh_state, _ = sh_step(sh_params, sh_state, CLEAN)

    for k, x in sh_params.items():
        if len(x.sharding.device_set) != _N_DEVICES or x.sharding.is_fully_replicated:
            problems.append(f"param {k!r} is not sharded over {_N_DEVICES} devices: {x.sharding}")
    n_sharded_state = sum(
        1
        for s in jax.tree.leaves(state_sh, is_leaf=lambda v: isinstance(v, NamedSharding))
        if s is not replicated
    )

    ref_tree, sh_tree = (ref_params, ref_state), (sh_params, sh_state)
    problems.extend(leaf_mismatches(ref_tree, sh_tree, subject.rtol))
    compared = len(jax.tree.leaves(ref_tree))
    max_abs = max(
        (
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(jax.tree.leaves(ref_tree), jax.tree.leaves(sh_tree), strict=False)
            if np.issubdtype(np.asarray(a).dtype, np.inexact)
            and np.size(a)
            and np.shape(a) == np.shape(b)
        ),
        default=0.0,
    )
    return {
        "error": None,
        "problems": problems,
        "compared_leaves": compared,
        "max_abs_diff": max_abs,
        "sharded_state_leaves": n_sharded_state,
    }


def run_subject(subject: Subject, mesh: Mesh) -> dict[str, Any]:
    result = _compare(subject, plain_tx(subject), subject.structural_problem, PARAM_SPECS, mesh)
    if subject.name in LAPACK_RUNS:
        big = _compare(
            subject,
            subject.make(**LAPACK_RUNS[subject.name]),
            LAPACK_BLOCKS,
            dict.fromkeys(LAPACK_BLOCKS.init_params(), P("x", "y")),
            mesh,
        )
        result["problems"] += [f"{LAPACK_BLOCKS.name}: {p}" for p in big["problems"]]
        result["compared_leaves"] += big["compared_leaves"]
        result["max_abs_diff"] = max(result["max_abs_diff"], big["max_abs_diff"])
        result[LAPACK_BLOCKS.name] = big
    return result


def main(argv: list[str]) -> int:
    devices = jax.devices()
    results: dict[str, Any] = {"device_count": len(devices), "subjects": {}}
    if len(devices) >= _N_DEVICES:
        mesh = Mesh(np.asarray(devices[:_N_DEVICES]).reshape(4, 2), ("x", "y"))
        for subject in SUBJECTS:
            faulthandler.dump_traceback_later(SUBJECT_TIMEOUT_S, exit=True)
            try:
                results["subjects"][subject.name] = run_subject(subject, mesh)
            except Exception:  # one broken subject must not hide the others' results
                results["subjects"][subject.name] = {
                    "error": traceback.format_exc(),
                    "problems": [],
                    "compared_leaves": 0,
                    "max_abs_diff": float("nan"),
                }
            faulthandler.cancel_dump_traceback_later()
    text = json.dumps(results, indent=1)
    if len(argv) > 1:
        Path(argv[1]).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
