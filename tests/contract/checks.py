"""The optlab transform contract: one plain function per property.

Each ``check_*`` takes a :class:`~tests.contract.subjects.Subject` (plus, for some, a problem,
a directory or the sharded runner's results) and raises ``AssertionError`` with a message that
names the subject and what went wrong. ``test_contract.py`` parametrizes them over ``SUBJECTS``
and also runs them on deliberately broken transforms to show that they can fail.

Unless stated otherwise the checks run on the subject's structural problem
(``subject.structural_problem``: ``problems.MIXED``, a dict with a (16, 8) matrix and a (8,)
bias, or for transforms that accept matrices only ``problems.MATRIX_REGRESSION``) with the
public factory itself, ``subject.make()``. For a subject that returns a descent direction
(``subject.descent_lr`` set) the step is ``params - descent_lr * update``.

NaN / Inf gradient policy (``check_nan_gradient``): one rule for every optlab subject
-------------------------------------------------------------------------------------------
A step whose gradient contains a NaN or an Inf is *skipped* by the transform itself: its update
is exactly zero, the inner state of the outermost ``SkipNonFiniteState`` in the state tree (found
by type, so also under ``optax.inject_hyperparams``) is unchanged bit for bit, its
``skipped_steps`` grows by one (and does not grow on a good step), the parameters and every
floating-point state leaf stay finite, and the following finite steps give the same parameters
as a run in which the bad step never happened. Reference subjects (optax's own transforms) are
exempt; they are checked under ``skip_nonfinite(tx)``, the recipe for a user's own chain.

Extreme but finite gradients (``check_extreme_gradient``): a spike of 1e20 or 1e30 in one entry
and a whole gradient scaled by 1e-30 leave the parameters, the state and the update finite (a
skipped step must follow the policy above), and the next normal gradient moves every parameter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from optlab._src.common import SkipNonFiniteState, skip_nonfinite

from .problems import Problem
from .subjects import Subject

Params = dict[str, jax.Array]
StepFn = Callable[..., tuple[Params, optax.OptState, jax.Array]]
FullStepFn = Callable[..., tuple[Params, optax.OptState, jax.Array, Params]]

#: Devices in the sharded run (a forced host-platform device count in the subprocess).
N_SHARDED_DEVICES = 8
#: Absolute floor of every "same computation" comparison (jit vs eager, sharded vs not).
#: (``rtol`` is per subject, ``Subject.rtol``; the absolute floor is shared.)
SHARDED_ATOL = 1e-6
#: (kind, value) of the extreme-gradient check: "spike" adds the value to one gradient entry,
#: "scale" multiplies the whole gradient by it.
EXTREME_GRADIENTS: tuple[tuple[str, float], ...] = (
    ("spike", 1e20),
    ("spike", 1e30),
    ("scale", 1e-30),
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARDED_RUNNER = Path(__file__).resolve().with_name("sharded_runner.py")


# -- helpers -------------------------------------------------------------------------------------
def leaf_mismatches(reference: Any, got: Any, rtol: float, atol: float = SHARDED_ATOL) -> list[str]:
    """Leaves where ``max|got - reference| > atol + rtol * max|reference|`` (or shapes differ).

    The tolerance scales with each leaf's largest magnitude rather than elementwise, because
    round-off in a matrix factorization is relative to the matrix's norm, not to each entry.
    """
    out = []
    ref_leaves = jax.tree_util.tree_leaves_with_path(reference)
    got_leaves = jax.tree.leaves(got)
    if len(ref_leaves) != len(got_leaves):
        return [f"leaf count differs: {len(got_leaves)} vs {len(ref_leaves)}"]
    for (path, ref), val in zip(ref_leaves, got_leaves, strict=True):
        name = jax.tree_util.keystr(path)
        ref_np, got_np = np.asarray(ref), np.asarray(val)
        if ref_np.shape != got_np.shape or ref_np.dtype != got_np.dtype:
            out.append(f"{name}: {got_np.shape}/{got_np.dtype} vs {ref_np.shape}/{ref_np.dtype}")
        elif np.issubdtype(ref_np.dtype, np.inexact):
            if ref_np.size == 0:
                continue
            diff = np.abs(got_np.astype(np.float64) - ref_np.astype(np.float64))
            bound = atol + rtol * float(np.max(np.abs(ref_np.astype(np.float64))))
            if not np.all(diff <= bound):  # also catches NaN on one side only
                out.append(f"{name}: max |diff| {float(np.nanmax(diff)):.3g} > {bound:.3g}")
        elif not np.array_equal(got_np, ref_np):
            out.append(f"{name}: {got_np} vs {ref_np}")
    return out


def extra_update_args(subject: Subject, problem: Problem) -> dict[str, Any]:
    """The extra keyword arguments every ``update()`` call of this subject receives."""
    extra = {"grad_fn": jax.grad(problem.loss)} if subject.needs_grad_fn else {}
    if subject.extra_args is not None:
        extra.update(subject.extra_args(problem))
    return extra


def plain_tx(subject: Subject, problem_name: str | None = None) -> optax.GradientTransformation:
    """The public factory called with the subject's options (a problem's overrides applied)."""
    if problem_name is None:
        return subject.make()
    return subject.factory(**subject.hyperparams_for(problem_name))


def _apply(subject: Subject, params: Params, updates: Params) -> Params:
    if subject.descent_lr is None:
        return optax.apply_updates(params, updates)
    lr = subject.descent_lr
    return optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))


def make_full_step(
    tx: optax.GradientTransformation, subject: Subject, problem: Problem | None = None
) -> FullStepFn:
    """``step(params, state, poison, scale) -> (new_params, new_state, loss, updates)``.

    The gradient is ``scale * grad`` with ``poison`` added to one element (the first element of
    the largest leaf): ``(0.0, 1.0)`` leaves it untouched, a NaN / Inf / 1e20 poison corrupts or
    spikes one entry, a tiny ``scale`` shrinks all of it. One traced function thus serves clean
    and corrupted steps.
    """
    problem = subject.structural_problem if problem is None else problem
    extra = extra_update_args(subject, problem)

    def step(
        params: Params, state: optax.OptState, poison: jax.Array, scale: jax.Array
    ) -> tuple[Params, optax.OptState, jax.Array, Params]:
        loss, grads = jax.value_and_grad(problem.loss)(params)
        grads = _poison(jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), poison)
        updates, state = tx.update(grads, state, params, **extra)
        return _apply(subject, params, updates), state, loss, updates

    return step


def make_step(
    tx: optax.GradientTransformation, subject: Subject, problem: Problem | None = None
) -> StepFn:
    """``step(params, state, poison) -> (new_params, new_state, loss_at_params)`` (see
    :func:`make_full_step`; the gradient is not rescaled)."""
    full = make_full_step(tx, subject, problem)

    def step(
        params: Params, state: optax.OptState, poison: jax.Array
    ) -> tuple[Params, optax.OptState, jax.Array]:
        new_params, new_state, loss, _ = full(params, state, poison, ONE)
        return new_params, new_state, loss

    return step


def _poison(grads: Params, poison: jax.Array) -> Params:
    leaves, treedef = jax.tree.flatten(grads)
    i = max(range(len(leaves)), key=lambda j: leaves[j].size)
    g = leaves[i]
    leaves[i] = g.at[(0,) * g.ndim].add(poison.astype(g.dtype))
    return jax.tree.unflatten(treedef, leaves)


#: The ``poison`` argument of a clean step (the gradient is left untouched).
CLEAN = np.float32(0.0)
#: The ``scale`` argument of a step whose gradient is not rescaled.
ONE = np.float32(1.0)


def _counting_jit(fn: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    """``jax.jit(fn)`` plus a one-element list counting how often ``fn`` was traced."""
    traces = [0]

    def traced(*args: Any) -> Any:
        traces[0] += 1
        return fn(*args)

    return jax.jit(traced), traces


def _describe(tree: Any) -> str:
    return str(jax.tree.map(lambda x: jax.typeof(x).str_short(), tree))


def _signature(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], str, bool]]]:
    leaves, treedef = jax.tree.flatten(tree)
    sig = []
    for x in leaves:
        aval = jax.typeof(x)
        sig.append((tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))))
    return treedef, sig


def _state_drift(before: Any, after: Any) -> str:
    """Human-readable reason why two states would trace differently ('' if they would not)."""
    (td0, sig0), (td1, sig1) = _signature(before), _signature(after)
    if td0 != td1:
        return f"tree structure changed:\n  before: {td0}\n  after:  {td1}"
    diffs = [
        f"  leaf {i}: {a} -> {b}  (shape, dtype, weak_type)"
        for i, (a, b) in enumerate(zip(sig0, sig1, strict=True))
        if a != b
    ]
    return "leaf avals changed:\n" + "\n".join(diffs) if diffs else ""


def _float_leaves_finite(tree: Any) -> list[str]:
    """Key paths of floating-point leaves that contain a NaN or an Inf."""
    bad = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        arr = np.asarray(x)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad.append(jax.tree_util.keystr(path))
    return bad


def _reraise(prefix: str, err: AssertionError) -> AssertionError:
    return AssertionError(f"{prefix}\n{err}")


def _changed_leaves(before: Params, after: Params) -> list[bool]:
    return [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    ]


# -- 1. jit without recompilation ----------------------------------------------------------------
def check_jit_no_recompile(subject: Subject) -> None:
    """A jitted step traces once for two calls, and matches the un-jitted step."""
    tx = plain_tx(subject)
    params = subject.structural_problem.init_params()
    state = tx.init(params)
    step = make_step(tx, subject)
    jitted, traces = _counting_jit(step)

    p1, s1, _ = jitted(params, state, CLEAN)
    p2, s2, _ = jitted(p1, s1, CLEAN)
    jax.block_until_ready((p2, s2))
    assert traces[0] == 1, (
        f"{subject.name}: the jitted step was traced {traces[0]} times for two calls with "
        "identically shaped arguments; init() and update() must return states with the same "
        f"tree structure, shapes, dtypes and weak types.\n{_state_drift(state, s1)}"
    )
    assert not _float_leaves_finite(p2), f"{subject.name}: non-finite params after two steps"
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2), strict=True)
    ), f"{subject.name}: two steps left the params unchanged"

    # The jitted step computes what the eager one computes.
    e1, es1, _ = step(params, state, CLEAN)
    e2, es2, _ = step(e1, es1, CLEAN)
    mismatches = leaf_mismatches((e2, es2), (p2, s2), subject.rtol)
    assert not mismatches, (
        f"{subject.name}: jitted and eager steps disagree (max|diff| <= {SHARDED_ATOL} + "
        f"{subject.rtol} * max|leaf|):\n  " + "\n  ".join(mismatches)
    )


# -- 2. unexpected extra keyword arguments ------------------------------------------------------
def check_extra_args(subject: Subject) -> None:
    """``tx.update(..., unknown_extra=1)`` on the transform itself works and changes nothing."""
    tx = plain_tx(subject)
    problem = subject.structural_problem
    params = problem.init_params()
    state = tx.init(params)
    grads = jax.grad(problem.loss)(params)
    extra = extra_update_args(subject, problem)

    ref_updates, ref_state = tx.update(grads, state, params, **extra)
    try:
        updates, new_state = tx.update(
            grads, state, params, **extra, unknown_extra=1, another_unused_arg=jnp.ones(3)
        )
    except TypeError as err:
        raise AssertionError(
            f"{subject.name}: update() rejected unknown extra keyword arguments ({err}); every "
            "update must accept and ignore **extra_args (optax.GradientTransformationExtraArgs)"
        ) from None
    try:
        chex.assert_trees_all_equal((updates, new_state), (ref_updates, ref_state))
    except AssertionError as err:
        raise _reraise(
            f"{subject.name}: unused extra keyword arguments changed the result", err
        ) from None


# -- 3. inject_hyperparams -----------------------------------------------------------------------
def injected_hyperparam_name(subject: Subject) -> str | None:
    """The hyperparameter the inject check changes: learning_rate, else the first non-zero one
    (None for a factory without numeric hyperparameters)."""
    if "learning_rate" in subject.hyperparams:
        return "learning_rate"
    nonzero = [k for k, v in subject.hyperparams.items() if v != 0]
    return (nonzero or list(subject.hyperparams) or [None])[0]


def check_inject_hyperparams(subject: Subject) -> None:
    """``optax.inject_hyperparams(factory)`` (every option not given at its default) works under
    jit and computes what the plain factory computes; editing ``state.hyperparams`` takes effect
    without a retrace."""
    try:
        tx = subject.inject()
        problem = subject.structural_problem
        params = problem.init_params()
        state = tx.init(params)
    except Exception as err:  # report any failure as a contract violation
        raise AssertionError(
            f"{subject.name}: optax.inject_hyperparams({subject.factory.__name__}) failed with "
            f"its defaults ({type(err).__name__}: {err})"
        ) from err
    assert isinstance(state.hyperparams, dict), f"{subject.name}: no state.hyperparams dict"
    missing = set(subject.hyperparams) - set(state.hyperparams)
    assert not missing, f"{subject.name}: hyperparameters {missing} were not injected"
    jitted, traces = _counting_jit(make_step(tx, subject))

    # Same first step as the plain transform.
    p1, s1, _ = jitted(params, state, CLEAN)
    plain_step = jax.jit(make_step(plain_tx(subject), subject))
    q1, _, _ = plain_step(params, plain_tx(subject).init(params), CLEAN)
    # Traced hyperparameters and folded Python constants round differently: compare like the
    # other "same computation" checks (the subject's rtol, relative to each leaf's max).
    mismatches = leaf_mismatches(q1, p1, subject.rtol)
    assert not mismatches, (
        f"{subject.name}: inject_hyperparams(factory) and factory disagree on the first step "
        f"(max|diff| <= {SHARDED_ATOL} + {subject.rtol} * max|leaf|):\n  " + "\n  ".join(mismatches)
    )

    name = injected_hyperparam_name(subject)
    p_same, s_same, _ = jitted(p1, s1, CLEAN)
    if name is None:  # nothing numeric to edit: the defaults-only run above is the check
        jax.block_until_ready(p_same)
        assert traces[0] == 1, f"{subject.name}: the injected step was traced {traces[0]} times"
        return
    old = s1.hyperparams[name]
    if jnp.issubdtype(old.dtype, jnp.integer):
        new = old + 1
    else:
        new = old * 0.5 if np.asarray(old) != 0 else old + 0.1
    s1_changed = s1._replace(hyperparams={**s1.hyperparams, name: new})

    p_changed, s_changed, _ = jitted(p1, s1_changed, CLEAN)
    jax.block_until_ready((p_same, p_changed))
    assert traces[0] == 1, (
        f"{subject.name}: the injected step was traced {traces[0]} times (expected 1); "
        f"changing state.hyperparams[{name!r}] must not change the state's structure.\n"
        f"{_state_drift(s1, s_same)}"
    )
    assert jax.tree.structure(s_same) == jax.tree.structure(s_changed)
    assert any(_changed_leaves(p_same, p_changed)), (
        f"{subject.name}: changing state.hyperparams[{name!r}] from {old} to {new} did not "
        "change the update; the transform ignores the injected value"
    )
    np.testing.assert_allclose(
        np.asarray(s_changed.hyperparams[name]),
        np.asarray(new),
        err_msg=f"{subject.name}: the edited hyperparameter was not carried to the next state",
    )


def is_masked(x: Any) -> bool:
    """``optax.MaskedNode``: what ``optax.masked`` / ``optax.partition`` leave in a state where a
    parameter is masked out. ``optax.tree.map_params`` needs ``is_leaf=is_masked`` to map such
    states (optax documents this for ``optax.masked``)."""
    return isinstance(x, optax.MaskedNode)


def skip_masked(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` for ``map_params(..., is_leaf=is_masked)``: masked-out positions stay masked."""
    return lambda x, *rest: x if is_masked(x) else f(x, *rest)


# -- 4. tree_map_params -------------------------------------------------------------------------
def check_tree_map_params(subject: Subject) -> None:
    """``optax.tree.map_params`` runs on the state, keeps its structure, and only maps
    parameter-shaped subtrees."""
    tx = plain_tx(subject)
    params = subject.structural_problem.init_params()
    state = tx.init(params)
    # Advance one step so the state holds non-trivial values.
    _, state, _ = jax.jit(make_step(tx, subject))(params, state, CLEAN)
    param_shapes = {tuple(x.shape) for x in jax.tree.leaves(params)}

    try:
        identity = optax.tree.map_params(tx, skip_masked(lambda x: x), state, is_leaf=is_masked)
        cast = optax.tree.map_params(
            tx, skip_masked(lambda x: x.astype(jnp.bfloat16)), state, is_leaf=is_masked
        )
        specs = optax.tree.map_params(
            tx,
            skip_masked(lambda _, spec: spec),
            state,
            jax.tree.map(lambda x: f"spec{x.shape}", params),
            transform_non_params=lambda _: "non-param",
            is_leaf=is_masked,
        )
    except Exception as err:  # report any failure as a contract violation
        raise AssertionError(
            f"{subject.name}: optax.tree.map_params failed ({type(err).__name__}: {err}); "
            "init() must work when given optax's params placeholder"
        ) from err

    try:
        chex.assert_trees_all_equal(identity, state)
    except AssertionError as err:
        raise _reraise(
            f"{subject.name}: map_params with the identity changed the state", err
        ) from None
    assert jax.tree.structure(cast) == jax.tree.structure(state), (
        f"{subject.name}: map_params changed the state's tree structure"
    )
    spec_leaves = jax.tree.leaves(specs)
    for before, after, spec in zip(
        jax.tree.leaves(state), jax.tree.leaves(cast), spec_leaves, strict=True
    ):
        if spec == "non-param":
            assert after is before, f"{subject.name}: map_params touched a non-parameter leaf"
        else:
            assert tuple(before.shape) in param_shapes and spec == f"spec{before.shape}", (
                f"{subject.name}: map_params mapped a leaf of shape {before.shape} onto {spec}"
            )
            assert after.dtype == jnp.bfloat16 and after.shape == before.shape


# -- 5. checkpoint round trip --------------------------------------------------------------------
def check_checkpoint_roundtrip(
    subject: Subject, directory: Path, k_steps: int = 3, n_steps: int = 3
) -> None:
    """Save (params, state) with orbax after k steps, restore, continue n steps: identical."""
    tx = plain_tx(subject)
    params = subject.structural_problem.init_params()
    state = tx.init(params)
    step = jax.jit(make_step(tx, subject))
    for _ in range(k_steps):
        params, state, _ = step(params, state, CLEAN)

    live = {"params": params, "state": state}
    path = Path(directory).resolve() / f"ckpt_{subject.name}"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, live)
        ckptr.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, live)
        restored = ckptr.restore(path, abstract)

    assert jax.tree.structure(restored) == jax.tree.structure(live), (
        f"{subject.name}: restored tree structure differs:\n"
        f"  {jax.tree.structure(restored)}\n  {jax.tree.structure(live)}"
    )
    assert _describe(restored) == _describe(live), (
        f"{subject.name}: restored shapes/dtypes differ:\n  {_describe(restored)}\n"
        f"  {_describe(live)}"
    )
    try:
        chex.assert_trees_all_equal(restored, live)
    except AssertionError as err:
        raise _reraise(f"{subject.name}: restored values differ from the saved ones", err) from None

    a_params, a_state = live["params"], live["state"]
    b_params, b_state = restored["params"], restored["state"]
    for i in range(n_steps):
        a_params, a_state, _ = step(a_params, a_state, CLEAN)
        b_params, b_state, _ = step(b_params, b_state, CLEAN)
        try:
            chex.assert_trees_all_equal((a_params, a_state), (b_params, b_state))
        except AssertionError as err:
            raise _reraise(
                f"{subject.name}: the trajectory continued from the restored checkpoint "
                f"diverged from the live one at continued step {i + 1}",
                err,
            ) from None


# -- 6. sharding (results come from sharded_runner.py in a subprocess) -----------------------------
def sharded_subprocess_env() -> dict[str, str]:
    """This process's environment for a subprocess that sees ``N_SHARDED_DEVICES`` CPU devices
    (any device-count flag already in ``XLA_FLAGS`` replaced) and can import the repository."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={N_SHARDED_DEVICES}"
    kept = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device" not in f]
    env["XLA_FLAGS"] = " ".join([*kept, flag])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_sharded_runner(out_path: Path, timeout: float = 900.0) -> dict[str, Any]:
    """Launch ``sharded_runner.py`` once (all subjects) on an 8-device CPU mesh; return its JSON."""
    env = sharded_subprocess_env()
    proc = subprocess.run(
        [sys.executable, str(SHARDED_RUNNER), str(out_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not Path(out_path).exists():
        raise AssertionError(
            f"sharded_runner.py failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(Path(out_path).read_text())


def check_sharded(subject: Subject, results: Mapping[str, Any]) -> None:
    """The sharded run (params + state on an 8-device mesh) matched the single-device run."""
    assert results.get("device_count") == N_SHARDED_DEVICES, (
        f"the sharded runner saw {results.get('device_count')} devices, "
        f"expected {N_SHARDED_DEVICES}"
    )
    entry = results.get("subjects", {}).get(subject.name)
    assert entry is not None, f"{subject.name}: the sharded runner reported nothing for it"
    assert entry["error"] is None, f"{subject.name}: the sharded run raised:\n{entry['error']}"
    assert not entry["problems"], (
        f"{subject.name}: sharded vs single-device run (rtol={subject.rtol}, "
        f"atol={SHARDED_ATOL}):\n  " + "\n  ".join(entry["problems"])
    )
    assert entry["compared_leaves"] > 0, f"{subject.name}: nothing was compared"


# -- 7. NaN / Inf gradients: one policy ---------------------------------------------------------
def find_guard(state: Any) -> SkipNonFiniteState | None:
    """The outermost ``SkipNonFiniteState`` in a state tree (pre-order), or None."""
    for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, SkipNonFiniteState)):
        if isinstance(node, SkipNonFiniteState):
            return node
    return None


def nan_policy_tx(subject: Subject, injected: bool = False) -> optax.GradientTransformation:
    """The transform the NaN checks run: the public factory itself for optlab subjects (under
    ``optax.inject_hyperparams`` if ``injected``); for a reference subject (exempt from optlab's
    policy) the user recipe ``skip_nonfinite(tx)``."""
    tx = subject.inject() if injected else plain_tx(subject)
    return skip_nonfinite(tx) if subject.reference else tx


def _how(subject: Subject) -> str:
    return "skip_nonfinite(reference)" if subject.reference else "the public factory"


def _guard_of(subject: Subject, state: Any) -> SkipNonFiniteState:
    guard = find_guard(state)
    assert guard is not None, (
        f"{subject.name}: its state has no SkipNonFiniteState: it does not follow optlab's "
        "NaN/Inf policy (optlab._src.common.skip_nonfinite)"
    )
    return guard


def _check_skipped(
    subject: Subject,
    what: str,
    params: Params,
    new_params: Params,
    updates: Params,
    before: Any,
    after: Any,
) -> None:
    """The step from (params, before) to (new_params, after) was skipped per the policy."""
    g0, g1 = _guard_of(subject, before), _guard_of(subject, after)
    nonzero = [
        jax.tree_util.keystr(path)
        for path, u in jax.tree_util.tree_leaves_with_path(updates)
        if np.any(np.asarray(u) != 0)
    ]
    assert not nonzero, (
        f"{subject.name} via {_how(subject)}: the step with {what} was not skipped: its update "
        f"is not exactly zero at {nonzero}"
    )
    assert not any(_changed_leaves(params, new_params)), (
        f"{subject.name} via {_how(subject)}: the step with {what} changed the parameters"
    )
    try:
        chex.assert_trees_all_equal(g1.inner, g0.inner)
    except AssertionError as err:
        raise _reraise(
            f"{subject.name} via {_how(subject)}: the step with {what} changed the inner state",
            err,
        ) from None
    assert int(g1.skipped_steps) == int(g0.skipped_steps) + 1, (
        f"{subject.name} via {_how(subject)}: skipped_steps went {int(g0.skipped_steps)} -> "
        f"{int(g1.skipped_steps)} on the step with {what} (expected + 1)"
    )


def check_nan_gradient(
    subject: Subject,
    n_steps: int = 10,
    bad_steps: Mapping[int, float] | None = None,
    injected: bool = False,
) -> None:
    """A NaN (step 3) and an Inf (step 6) gradient are skipped without leaving traces (also
    with the factory under ``optax.inject_hyperparams`` when ``injected``)."""
    bad = dict(bad_steps) if bad_steps is not None else {3: float("nan"), 6: float("inf")}
    tx = nan_policy_tx(subject, injected)
    how = _how(subject) + (" under inject_hyperparams" if injected else "")
    problem = subject.structural_problem
    step = jax.jit(make_full_step(tx, subject))
    params0 = problem.init_params()

    # Reference: the same transform with the bad steps simply left out.
    ref_params, ref_state = params0, tx.init(params0)
    for i in range(n_steps):
        if i not in bad:
            ref_params, ref_state, _, _ = step(ref_params, ref_state, CLEAN, ONE)

    params, state = params0, tx.init(params0)
    losses = []
    for i in range(n_steps):
        poison = np.float32(bad.get(i, 0.0))
        new_params, new_state, loss, updates = step(params, state, poison, ONE)
        losses.append(float(loss))
        bad_state = _float_leaves_finite(new_state)
        assert not bad_state, (
            f"{subject.name} via {how}: after step {i} (gradient poison {poison}) the state has "
            f"non-finite float leaves {bad_state}; a bad gradient must not get stuck in the state"
        )
        assert not _float_leaves_finite(new_params), (
            f"{subject.name} via {how}: non-finite params after step {i} (poison {poison})"
        )
        if i in bad:
            _check_skipped(
                subject, f"a {poison} gradient", params, new_params, updates, state, new_state
            )
        else:
            skipped = (
                int(_guard_of(subject, state).skipped_steps),
                int(_guard_of(subject, new_state).skipped_steps),
            )
            assert skipped[0] == skipped[1], (
                f"{subject.name} via {how}: the clean step {i} was counted as skipped "
                f"({skipped[0]} -> {skipped[1]})"
            )
        params, state = new_params, new_state

    final_loss = float(problem.loss(params))
    first_bad = min(bad)
    assert final_loss < losses[first_bad], (
        f"{subject.name} via {how}: training did not continue after the bad steps "
        f"(loss {losses[first_bad]:.4g} at step {first_bad} -> {final_loss:.4g} at the end)"
    )
    try:
        chex.assert_trees_all_close(params, ref_params, rtol=1e-6, atol=1e-7)
    except AssertionError as err:
        raise _reraise(
            f"{subject.name} via {how}: the run with bad gradients does not match the run that "
            "skipped those steps",
            err,
        ) from None


def check_extreme_gradient(subject: Subject, kind: str, value: float) -> None:
    """A finite but extreme gradient (a ``value`` spike in one entry, or the whole gradient
    scaled by ``value``) leaves params, state and update finite, a skipped step follows the
    policy, and the next normal gradient moves every parameter leaf."""
    assert kind in ("spike", "scale"), kind
    what = f"a gradient {'spike' if kind == 'spike' else 'scaled by'} {value:g}"
    how = _how(subject)
    tx = nan_policy_tx(subject)
    step = jax.jit(make_full_step(tx, subject))
    params = subject.structural_problem.init_params()
    state = tx.init(params)
    for _ in range(2):  # a momentum / statistic that is not all zeros
        params, state, _, _ = step(params, state, CLEAN, ONE)

    poison, scale = (np.float32(value), ONE) if kind == "spike" else (CLEAN, np.float32(value))
    new_params, new_state, _, updates = step(params, state, poison, scale)
    for label, tree in (("state", new_state), ("update", updates), ("params", new_params)):
        bad = _float_leaves_finite(tree)
        assert not bad, (
            f"{subject.name} via {how}: after {what}, non-finite {label} leaves {bad}; a finite "
            "gradient must either be handled or skipped per the NaN/Inf policy"
        )
    g0, g1 = _guard_of(subject, state), _guard_of(subject, new_state)
    if int(g1.skipped_steps) != int(g0.skipped_steps):
        _check_skipped(subject, what, params, new_params, updates, state, new_state)

    after_params, after_state, _, _ = step(new_params, new_state, CLEAN, ONE)
    assert not _float_leaves_finite(after_params) and not _float_leaves_finite(after_state), (
        f"{subject.name} via {how}: a normal step after {what} produced non-finite values"
    )
    frozen = [
        jax.tree_util.keystr(path)
        for (path, _), changed in zip(
            jax.tree_util.tree_leaves_with_path(new_params),
            _changed_leaves(new_params, after_params),
            strict=True,
        )
        if not changed
    ]
    assert not frozen, (
        f"{subject.name} via {how}: after {what}, the next normal gradient did not move the "
        f"parameters {frozen} (an extreme value got stuck in the state)"
    )


# -- 8. convergence ------------------------------------------------------------------------------
def run_to_convergence(subject: Subject, problem: Problem) -> tuple[float, float, int]:
    """(initial loss, final loss, steps) of ``subject`` on ``problem`` (one jitted scan)."""
    lr = subject.problem_descent_lr.get(problem.name, subject.descent_lr)
    subject = dataclasses.replace(subject, descent_lr=lr)
    tx = plain_tx(subject, problem.name)
    steps = subject.steps * problem.steps_factor
    step = make_step(tx, subject, problem)

    @jax.jit
    def run(params: Params) -> jax.Array:
        def body(carry: tuple[Params, optax.OptState], _: None) -> tuple[Any, None]:
            p, s, _ = step(*carry, CLEAN)
            return (p, s), None

        (final, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
        return problem.loss(final)

    params = problem.init_params()
    return float(problem.loss(params)), float(run(params)), steps


def check_convergence(subject: Subject, problem: Problem) -> None:
    """final loss <= problem.rtol * initial loss after subject.steps * problem.steps_factor."""
    initial, final, steps = run_to_convergence(subject, problem)
    bound = problem.rtol * initial
    assert np.isfinite(final) and final <= bound, (
        f"{subject.name} on {problem.name}: loss {initial:.4g} -> {final:.4g} after {steps} "
        f"steps, needs <= {bound:.4g} (= {problem.rtol:g} x initial) with hyperparams "
        f"{subject.hyperparams_for(problem.name)}"
    )
