"""Sharded-vs-single-device runs of every contract subject, in one process.

Launched once per test session by ``checks.run_sharded_runner`` (JAX start-up and compilation
are slow on small CPUs, so all subjects share one subprocess)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/contract/sharded_runner.py OUT.json

(the script sets both variables itself when they are missing, so the plain command works too).

For each subject, on ``problems.MIXED``: the params are placed on a (4, 2) mesh of 8 CPU
devices (the (16, 8) matrix split over both axes, the (8,) bias over all 8 devices), the
optimizer state gets the matching shardings via ``optax.tree.map_params`` (parameter-shaped
leaves sharded like their parameter, everything else replicated) and ``jax.jit(tx.init,
out_shardings=...)``, and a few jitted steps run with those in/out shardings. The same steps
run unsharded on one device; every leaf of (params, state) must agree within
``leaf_mismatches`` with the subject's ``rtol``, and the sharded params must really be spread
over 8 devices.

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
from tests.contract.problems import MIXED  # noqa: E402
from tests.contract.subjects import SUBJECTS, Subject  # noqa: E402

N_STEPS = 4
PARAM_SPECS = {"w": P("x", "y"), "b": P(("x", "y"))}


def run_subject(subject: Subject, mesh: Mesh) -> dict[str, Any]:
    tx = plain_tx(subject)
    step = make_step(tx, subject, MIXED)
    params = MIXED.init_params()
    problems: list[str] = []

    # Single device reference.
    ref_step = jax.jit(step)
    ref_params, ref_state = params, tx.init(params)
    for _ in range(N_STEPS):
        ref_params, ref_state, _ = ref_step(ref_params, ref_state, CLEAN)

    # Sharded run.
    replicated = NamedSharding(mesh, P())
    param_sh = {k: NamedSharding(mesh, PARAM_SPECS[k]) for k in params}
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
        (float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
         for a, b in zip(jax.tree.leaves(ref_tree), jax.tree.leaves(sh_tree), strict=False)
         if np.issubdtype(np.asarray(a).dtype, np.inexact) and np.size(a)
         and np.shape(a) == np.shape(b)),
        default=0.0,
    )
    return {
        "error": None,
        "problems": problems,
        "compared_leaves": compared,
        "max_abs_diff": max_abs,
        "sharded_state_leaves": n_sharded_state,
    }


def main(argv: list[str]) -> int:
    devices = jax.devices()
    results: dict[str, Any] = {"device_count": len(devices), "subjects": {}}
    if len(devices) >= _N_DEVICES:
        mesh = Mesh(np.asarray(devices[:_N_DEVICES]).reshape(4, 2), ("x", "y"))
        for subject in SUBJECTS:
            try:
                results["subjects"][subject.name] = run_subject(subject, mesh)
            except Exception:  # one broken subject must not hide the others' results
                results["subjects"][subject.name] = {
                    "error": traceback.format_exc(),
                    "problems": [],
                    "compared_leaves": 0,
                    "max_abs_diff": float("nan"),
                }
    text = json.dumps(results, indent=1)
    if len(argv) > 1:
        Path(argv[1]).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
