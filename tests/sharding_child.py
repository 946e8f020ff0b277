"""Sharded Kronecker-factor state on 8 CPU devices vs one device, in one process.

Launched by ``tests/test_sharding.py`` (JAX start-up and compilation are slow on small CPUs,
so every case shares one subprocess)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python tests/sharding_child.py OUT.json

For Shampoo, SOAP and K-FAC, built with ``mesh=`` over 8 devices, with data-parallel (replicated)
and FSDP-sharded parameters: the state placed by ``optlab.state_sharding`` and a few jitted
steps (a refresh at every step) against the same steps of the single-device optimizer.
Recorded per case:

* ``mismatches``: params, updates, counters, the rest of the state and the engine buffers'
  real statistics and factors (read through their layouts) beyond the contract suite's
  tolerance (``tests.contract.checks.leaf_mismatches`` with the subject's ``rtol``);
* ``buffers``: per engine buffer, its sharding, its total bytes and each device's bytes
  (``addressable_shards``), and the single-device buffer's bytes;
* ``state_bytes``: the whole state's bytes per device and in total (logical);
* ``host_calls``: every host LAPACK call the sharded steps made (routine and batch shape),
  recorded by wrapping the routines ``optlab.linalg._lapack`` hands to its callbacks; and the
  single-device run's;
* ``hlo_callbacks``: the operand shapes of the host callbacks in the compiled (per-device,
  SPMD-partitioned) sharded step;
* ``refreshes``: how many of the steps refreshed.

Output JSON: ``{"device_count": int, "cases": {name: {...}}, "errors": {name: str}}``.
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
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import json  # noqa: E402
import re  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optlab  # noqa: E402
from optlab._src import kfac as kfac_module  # noqa: E402
from optlab._src import kronecker as kron  # noqa: E402
from optlab.linalg import _lapack  # noqa: E402
from tests.contract.checks import leaf_mismatches  # noqa: E402
from tests.contract.subjects import SUBJECTS  # noqa: E402

N_STEPS = 4
BLOCK = 16
#: Matrices cut into 16 x 16 blocks, an 8 x 8 matrix and a bias: the 16 x 16 group holds 32
#: statistics (4 per device, no padding), the 8 x 8 group 2 (one per device after padding to 8:
#: six devices refresh padding only). Every block is square, so its statistics have full rank
#: from the first step: SOAP's eigenbases are then unique (a degenerate eigenspace, e.g. the
#: 16 x 16 statistic of an 8 x 16 block, has no unique basis, and 8 devices and one, summing in
#: another order, pick different ones).
SHAPES = {"w1": (64, 48), "w2": (32, 32), "w3": (8, 8), "b": (16,)}
#: Options shared by both runs. Shampoo's eps = 1e-3 as in its contract subject (the roots of
#: nearly singular statistics amplify float32 round-off); refreshes at every step.
OPTIONS = {
    "shampoo": {
        "learning_rate": 0.05,
        "eps": 1e-3,
        "block_size": BLOCK,
        "precondition_every": 1,
        "start_preconditioning_step": 1,
    },
    "soap": {"learning_rate": 0.05, "block_size": BLOCK, "precondition_every": 1},
}
#: K-FAC's layers (found by their leaf names): five dense layers with 16 x 16 factors A (15
#: inputs and a bias) and G, one with 8 x 8 ones, an embedding (diagonal A, 16 x 16 G) and a
#: leaf in no layer (the diagonal rule): 11 factors of 16 x 16 (2 per device after padding to
#: 16), 2 of 8 x 8 (padded to 8). Its curvature: Gram matrices of random batches (full rank).
KFAC_SHAPES = {
    **{f"l{i}": {"kernel": (15, 16), "bias": (16,)} for i in range(5)},
    "l5": {"kernel": (7, 8), "bias": (8,)},
    "emb": {"embedding": (10, 16)},
    "scale": (16,),
}
OPTIONS["kfac"] = {"learning_rate": 0.5, "damping": 1e-3, "momentum": 0.5, "precondition_every": 1}
FACTORIES = {"shampoo": optlab.shampoo, "soap": optlab.soap, "kfac": optlab.kfac}
BUFFERS = {
    optlab.ShampooState: ("stats", "roots"),
    optlab.SoapState: ("stats", "bases"),
    optlab.KFACState: ("factors", "inverses"),
}

#: Elementwise state in the engine's layout (``kron.pack_elements``): compared by its real
#: entries (the sharded buffer is zero-padded to a multiple of the devices).
ELEMENTS = {
    optlab.ShampooState: ("graft",),
    optlab.SoapState: ("mu", "nu"),
    optlab.KFACState: (),
}

HOST_CALLS: list[tuple[str, tuple[int, ...]]] = []


def _recording(name: str, fn):
    def wrapped(*args):
        HOST_CALLS.append((name, tuple(np.shape(args[0]))))
        return fn(*args)

    return wrapped


# host_call looks these up when a step is traced: every step traced below records its calls.
_lapack._host_eigh_rows = _recording("eigh", _lapack._host_eigh_rows)
_lapack.host_qr = _recording("qr", _lapack.host_qr)
_all_inverses = kfac_module._host_damped_inverses_all


def _recording_inverses(*args):
    """K-FAC's host inverses (``args = (*stacks, *ridges)``): one record per stack."""
    HOST_CALLS.extend(("inverse", tuple(np.shape(x))) for x in args[: len(args) // 2])
    return _all_inverses(*args)


kfac_module._host_damped_inverses_all = _recording_inverses


def _shapes(name: str) -> dict[str, Any]:
    return KFAC_SHAPES if name == "kfac" else SHAPES


def _fsdp_spec(shape: tuple[int, ...]) -> P:
    """Split the first axis that 8 divides (every leaf here has one)."""
    axis = next(i for i, d in enumerate(shape) if d % _N_DEVICES == 0)
    return P(*[None] * axis, "data")


def _curvature(rng: np.random.Generator) -> dict[str, optlab.KFACFactors]:
    """One step's K-FAC factors: ``X^T X / n`` of random batches (positive definite)."""

    def gram(d: int) -> np.ndarray:
        x = rng.standard_normal((32, d)).astype(np.float32)
        return x.T @ x / 32

    out = {}
    for name, leaves in KFAC_SHAPES.items():
        if "kernel" in leaves:
            d_in, d_out = leaves["kernel"]
            out[name] = optlab.KFACFactors(gram(d_in + 1), gram(d_out))
        elif "embedding" in leaves:
            n, d_out = leaves["embedding"]
            out[name] = optlab.KFACFactors(rng.uniform(0.1, 1, n).astype(np.float32), gram(d_out))
    return out


def _layout(name: str, shards: int) -> kron.Layout:
    """The layout the optimizer builds for its parameters (as its ``layout_of`` does)."""
    shapes = tuple(SHAPES.values())
    if name == "kfac":
        tree = jax.tree.map(np.zeros, KFAC_SHAPES, is_leaf=lambda x: isinstance(x, tuple))
        return kfac_module._plan_of(tree, None, True, shards)[0].layout
    if name == "shampoo":
        base = kron.make_layout(shapes, BLOCK, 8192, True, None)
    else:
        base = kron.adjust_layout(
            kron.make_layout(shapes, BLOCK, 8192, True, 1),
            block_size=BLOCK,
            max_preconditioned_dim=8192,
            root=1,
        )
    return kron.shard_layout(base, shards)


def _engine_state(state: Any) -> Any:
    return next(
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: type(x) in BUFFERS)
        if type(x) in BUFFERS
    )


def _real_stacks(state: Any, layout: kron.Layout) -> dict[str, list[np.ndarray]]:
    """The engine buffers as their real statistics / factors per group (padding dropped)."""
    engine = _engine_state(state)
    out = {}
    for field in BUFFERS[type(engine)]:
        buffer = getattr(engine, field)
        out[field] = [
            np.asarray(s)[: g.count - g.padding]
            for s, g in zip(kron.group_stacks(buffer, layout), layout.groups, strict=True)
        ]
    return out


def _element_buffers(state: Any) -> dict[str, jax.Array]:
    """The element buffers: the engine state's (``ELEMENTS``; a grafting state's 1-D or 2-D
    array) and the momentum's."""
    engine = _engine_state(state)
    out = {}
    for field in ELEMENTS[type(engine)]:
        for i, x in enumerate(jax.tree.leaves(getattr(engine, field))):
            if x.ndim:
                out[f"{field}.{i}"] = x
    # Shampoo's momentum (optlab.shampoo), next to the engine's state.
    momentum = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optlab.BlockMomentumState))
        if isinstance(x, optlab.BlockMomentumState)
    ]
    for i, x in enumerate(momentum):
        out[f"momentum.{i}"] = x.mu
    return out


def _real_elements(state: Any, like: Any) -> dict[str, np.ndarray]:
    """The element buffers' entries without the sharded layout's padding (as many as the
    one-device buffers of ``like``, a state, hold)."""
    sizes = {name: x.size for name, x in _element_buffers(like).items()}
    return {
        name: np.asarray(x).ravel()[: sizes[name]] for name, x in _element_buffers(state).items()
    }


def _others(state: Any) -> list[Any]:
    """Every state leaf but the engine's buffers (compared as they are)."""
    engine = _engine_state(state)
    skip = {id(getattr(engine, f)) for f in BUFFERS[type(engine)]}
    skip |= {id(x) for x in _element_buffers(state).values()}
    return [x for x in jax.tree.leaves(state) if id(x) not in skip]


def _device_bytes(x: jax.Array) -> dict[str, int]:
    out: Counter[str] = Counter()
    for shard in x.addressable_shards:
        out[str(shard.device.id)] += shard.data.nbytes
    return dict(out)


def _hlo_callback_shapes(text: str) -> list[str]:
    """Operand shapes of the host callbacks in a compiled (partitioned) HLO module."""
    shapes = []
    for line in text.splitlines():
        if "custom-call" in line and "callback" in line:
            shapes.extend(re.findall(r"f32\[[0-9,]+\]", line.split("custom-call(", 1)[-1]))
    return shapes


def run_case(name: str, fsdp: bool, mesh: Mesh) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    shapes = _shapes(name)
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    params = jax.tree.map(normal, shapes, is_leaf=is_shape)
    grads = [jax.tree.map(normal, shapes, is_leaf=is_shape) for _ in range(N_STEPS)]
    extras = [{"curvature": _curvature(rng)} if name == "kfac" else {} for _ in range(N_STEPS)]
    options = OPTIONS[name]

    def make_step(tx):
        def step(p, s, g, extra):
            u, s = tx.update(g, s, p, **extra)
            return optax.apply_updates(p, u), s, u

        return step

    # One device.
    ref_tx = FACTORIES[name](**options)
    ref_step = jax.jit(make_step(ref_tx))
    ref_params, ref_state, ref_updates = params, ref_tx.init(params), []
    HOST_CALLS.clear()
    for g, extra in zip(grads, extras, strict=True):
        ref_params, ref_state, u = ref_step(ref_params, ref_state, g, extra)
        ref_updates.append(u)
    jax.block_until_ready(ref_params)
    ref_calls = list(HOST_CALLS)

    # Eight devices.
    tx = FACTORIES[name](**options, mesh=mesh, mesh_axis="data")
    replicated = NamedSharding(mesh, P())
    param_sh = jax.tree.map(
        lambda s: NamedSharding(mesh, _fsdp_spec(s)) if fsdp else replicated,
        shapes,
        is_leaf=is_shape,
    )
    sh_params = jax.device_put(params, param_sh)
    state_sh = optlab.state_sharding(tx, sh_params, mesh, axis="data")
    state = jax.jit(tx.init, out_shardings=state_sh)(sh_params)
    step = jax.jit(
        make_step(tx),
        in_shardings=(param_sh, state_sh, param_sh, replicated),
        out_shardings=(param_sh, state_sh, param_sh),
    )
    g0 = jax.device_put(grads[0], param_sh)
    hlo = step.lower(sh_params, state, g0, extras[0]).compile().as_text()
    HOST_CALLS.clear()
    updates = []
    for g, extra in zip(grads, extras, strict=True):
        sh_params, state, u = step(sh_params, state, jax.device_put(g, param_sh), extra)
        updates.append(u)
    jax.block_until_ready(sh_params)
    calls = list(HOST_CALLS)

    single, sharded = _layout(name, 1), _layout(name, _N_DEVICES)
    rtol = next(s.rtol for s in SUBJECTS if s.name == name)
    mismatches = leaf_mismatches(
        (
            ref_params,
            ref_updates,
            _others(ref_state),
            _real_stacks(ref_state, single),
            _real_elements(ref_state, ref_state),
        ),
        (
            sh_params,
            updates,
            _others(state),
            _real_stacks(state, sharded),
            _real_elements(state, ref_state),
        ),
        rtol,
    )
    engine, ref_engine = _engine_state(state), _engine_state(ref_state)
    buffers = {}
    for field in BUFFERS[type(engine)]:
        x = getattr(engine, field)
        buffers[field] = {
            "shape": list(x.shape),
            "spec": str(x.sharding.spec),
            "bytes": x.nbytes,
            "device_bytes": _device_bytes(x),
            "single_device_bytes": getattr(ref_engine, field).nbytes,
        }
    ref_elements = _element_buffers(ref_state)
    for field, x in _element_buffers(state).items():
        buffers[field] = {
            "shape": list(x.shape),
            "spec": str(x.sharding.spec),
            "bytes": x.nbytes,
            "device_bytes": _device_bytes(x),
            "single_device_bytes": ref_elements[field].nbytes,
        }
    per_device: Counter[str] = Counter()
    for leaf in jax.tree.leaves(state):
        per_device.update(_device_bytes(leaf))
    return {
        "mismatches": mismatches,
        "rtol": rtol,
        "buffers": buffers,
        "state_bytes": {
            "total": sum(x.nbytes for x in jax.tree.leaves(state)),
            "single_device_total": sum(x.nbytes for x in jax.tree.leaves(ref_state)),
            "per_device": dict(per_device),
            # Leaves every device holds whole, and the largest of their sizes.
            "replicated": sum(
                x.nbytes for x in jax.tree.leaves(state) if x.sharding.is_fully_replicated
            ),
            "replicated_max_size": max(
                (x.size for x in jax.tree.leaves(state) if x.sharding.is_fully_replicated),
                default=0,
            ),
        },
        "groups": [{"dim": g.dim, "count": g.count, "padding": g.padding} for g in sharded.groups],
        "host_calls": [[n, list(s)] for n, s in calls],
        "single_device_host_calls": [[n, list(s)] for n, s in ref_calls],
        "hlo_callbacks": _hlo_callback_shapes(hlo),
        # Shampoo starts at step 1; SOAP and K-FAC refresh from the first step.
        "refreshes": N_STEPS - (1 if name == "shampoo" else 0),
    }


def check_errors(mesh: Mesh) -> dict[str, str]:
    """The ValueErrors a user meets (message text), None where none was raised."""
    out = {}
    params = {"w": np.ones((16, 16), np.float32)}
    cases = {
        "unsharded_tx": lambda: optlab.state_sharding(optlab.shampoo(0.1), params, mesh),
        "bad_axis": lambda: optlab.state_sharding(optlab.shampoo(0.1), params, mesh, "model"),
        "bad_mesh_axis": lambda: optlab.shampoo(0.1, mesh=mesh, mesh_axis="model"),
        "kfac_exact": lambda: optlab.kfac(0.1, damping_mode="exact", mesh=mesh),
        "explicit_axis": lambda: optlab.soap(
            0.1, mesh=jax.make_mesh((_N_DEVICES,), ("data",)), mesh_axis="data"
        ),
    }
    for name, fn in cases.items():
        try:
            fn()
            out[name] = None
        except ValueError as err:
            out[name] = str(err)
    return out


def main(argv: list[str]) -> int:
    devices = jax.devices()
    results: dict[str, Any] = {"device_count": len(devices), "cases": {}, "errors": {}}
    if len(devices) >= _N_DEVICES:
        mesh = Mesh(np.asarray(devices[:_N_DEVICES]), ("data",))
        for name in FACTORIES:
            for fsdp in (False, True):
                case = f"{name}_{'fsdp' if fsdp else 'dp'}"
                try:
                    results["cases"][case] = run_case(name, fsdp, mesh)
                except Exception:  # one broken case must not hide the others' results
                    results["cases"][case] = {"error": traceback.format_exc()}
        results["value_errors"] = check_errors(mesh)
    text = json.dumps(results, indent=1)
    if len(argv) > 1:
        Path(argv[1]).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
