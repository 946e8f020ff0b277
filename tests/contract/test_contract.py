"""The shared optlab transform contract, parametrized over ``subjects.SUBJECTS``.

Register a transform by appending a ``Subject`` to ``SUBJECTS`` in ``subjects.py``; every check
in ``checks.py`` then runs on it. The last section runs the checks on deliberately broken
transforms to show that the contract can fail.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optlab
from optlab._src.common import SkipNonFiniteState, skip_nonfinite

from . import checks
from .problems import PROBLEMS, Problem
from .subjects import SUBJECTS, Subject

SUBJECT_PARAMS = [pytest.param(s, id=s.name) for s in SUBJECTS]
EXTREME_PARAMS = [
    pytest.param(kind, value, id=f"{kind}{value:g}") for kind, value in checks.EXTREME_GRADIENTS
]
CONVERGENCE_PARAMS = [
    pytest.param(s, PROBLEMS[name], id=f"{s.name}-{name}")
    for s in SUBJECTS
    for name in s.convergence_problems()
]


def test_subject_registry_is_well_formed() -> None:
    names = [s.name for s in SUBJECTS]
    assert len(names) == len(set(names)), f"duplicate subject names: {names}"
    assert sum(s.recipe for s in SUBJECTS) <= 1, "at most one documented chain recipe"
    for s in SUBJECTS:
        assert all(isinstance(v, int | float) for v in s.hyperparams.values()), s.name
        assert not set(s.hyperparams) & set(s.static), s.name
        assert s.problem in PROBLEMS, s.name
        unknown = (
            set(s.problem_hyperparams) | set(s.problem_descent_lr) | set(s.convergence_problems())
        ) - set(PROBLEMS)
        assert not unknown, f"{s.name}: unknown problems {unknown}"
        assert s.steps >= 1, s.name
        assert not (s.reference and s.recipe), s.name
        if s.recipe:
            continue
        # The suite calls the public factory itself, not a wrapper with a fixed signature.
        home = optax if s.reference else optlab
        assert getattr(home, s.factory.__name__, None) is s.factory, (
            f"{s.name}: {s.factory!r} is not {home.__name__}.{s.factory.__name__}"
        )


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_jit_no_recompile(subject: Subject) -> None:
    checks.check_jit_no_recompile(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_extra_args(subject: Subject) -> None:
    checks.check_extra_args(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_inject_hyperparams(subject: Subject) -> None:
    checks.check_inject_hyperparams(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_tree_map_params(subject: Subject) -> None:
    checks.check_tree_map_params(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_checkpoint_roundtrip(subject: Subject, tmp_path: Path) -> None:
    checks.check_checkpoint_roundtrip(subject, tmp_path)


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """All subjects' sharded runs, from ONE subprocess with 8 forced CPU devices."""
    return checks.run_sharded_runner(tmp_path_factory.mktemp("sharded") / "results.json")


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_sharded_matches_single_device(subject: Subject, sharded_results: dict[str, Any]) -> None:
    checks.check_sharded(subject, sharded_results)


@pytest.mark.parametrize("injected", [False, True], ids=["plain", "injected"])
@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_nan_gradient(subject: Subject, injected: bool) -> None:
    checks.check_nan_gradient(subject, injected=injected)


@pytest.mark.parametrize(("kind", "value"), EXTREME_PARAMS)
@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_extreme_gradient(subject: Subject, kind: str, value: float) -> None:
    checks.check_extreme_gradient(subject, kind, value)


@pytest.mark.parametrize(("subject", "problem"), CONVERGENCE_PARAMS)
def test_convergence(subject: Subject, problem: Problem) -> None:
    checks.check_convergence(subject, problem)


# -- the contract can fail ------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _PythonCounterState:
    """Bug: the step count lives in static pytree metadata, so every step has a new treedef."""

    step: int = dataclasses.field(metadata={"static": True})


def sgd_with_python_counter(learning_rate: float) -> optax.GradientTransformation:
    def init(params: Any) -> _PythonCounterState:
        del params
        return _PythonCounterState(step=0)

    def update(
        updates: Any, state: _PythonCounterState, params: Any = None
    ) -> tuple[Any, _PythonCounterState]:
        del params
        updates = jax.tree.map(lambda g: -learning_rate * g, updates)
        return updates, _PythonCounterState(step=state.step + 1)

    return optax.GradientTransformation(init, update)


def momentum_with_leaky_skip(learning_rate: float) -> optax.GradientTransformation:
    """Bug: zeroes the update on a non-finite gradient but still folds it into the momentum."""

    def init(params: Any) -> optax.TraceState:
        return optax.TraceState(trace=jax.tree.map(jnp.zeros_like, params))

    def update(
        updates: Any, state: optax.TraceState, params: Any = None
    ) -> tuple[Any, optax.TraceState]:
        del params
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]))
        trace = jax.tree.map(lambda t, g: 0.9 * t + g, state.trace, updates)
        out = jax.tree.map(lambda t: jnp.where(finite, -learning_rate * t, 0.0), trace)
        return out, optax.TraceState(trace=trace)

    return optax.GradientTransformation(init, update)


def decay_only(learning_rate: float) -> optax.GradientTransformationExtraArgs:
    """Bug: ignores the gradient (shrinks the params), and rejects extra keyword arguments."""

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(
        updates: Any, state: optax.EmptyState, params: Any = None
    ) -> tuple[Any, optax.EmptyState]:
        return jax.tree.map(lambda p: -learning_rate * p, params), state

    return optax.GradientTransformationExtraArgs(init, update)


def counted_leaky_skip(learning_rate: float) -> optax.GradientTransformation:
    """Bug: looks like the policy (a SkipNonFiniteState, zero update and a count on a bad step)
    but folds the bad gradient into its momentum anyway."""
    leaky = momentum_with_leaky_skip(learning_rate)

    def init(params: Any) -> SkipNonFiniteState:
        return SkipNonFiniteState(inner=leaky.init(params), skipped_steps=jnp.zeros([], jnp.int32))

    def update(
        updates: Any, state: SkipNonFiniteState, params: Any = None
    ) -> tuple[Any, SkipNonFiniteState]:
        bad = ~jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]))
        out, inner = leaky.update(updates, state.inner, params)
        return out, SkipNonFiniteState(inner, state.skipped_steps + bad.astype(jnp.int32))

    return optax.GradientTransformation(init, update)


def momentum_with_overflowing_state(learning_rate: float) -> optax.GradientTransformation:
    """Bug: guarded, but its second-moment statistic squares the gradient in float32, and the
    guard is told to look at the incoming gradient only (like ``optax.apply_if_finite``): a
    finite 1e20 gradient puts an Inf into the state."""

    def init(params: Any) -> optax.ScaleByRmsState:
        return optax.ScaleByRmsState(nu=jax.tree.map(jnp.zeros_like, params))

    def update(
        updates: Any, state: optax.ScaleByRmsState, params: Any = None
    ) -> tuple[Any, optax.ScaleByRmsState]:
        del params
        nu = jax.tree.map(lambda v, g: 0.9 * v + 0.1 * g * g, state.nu, updates)
        out = jax.tree.map(lambda g, v: -learning_rate * g / (jnp.sqrt(v) + 1e-8), updates, nu)
        return out, optax.ScaleByRmsState(nu=nu)

    return skip_nonfinite(
        optax.GradientTransformation(init, update), state_is_finite=lambda _: jnp.asarray(True)
    )


def test_contract_catches_retracing_state() -> None:
    subject = Subject("python_counter", sgd_with_python_counter, {"learning_rate": 0.1})
    with pytest.raises(AssertionError, match="traced 2 times"):
        checks.check_jit_no_recompile(subject)


def test_contract_catches_nan_stuck_in_state() -> None:
    subject = Subject("leaky_skip", momentum_with_leaky_skip, {"learning_rate": 0.05})
    # Unguarded: it has no SkipNonFiniteState at all, so it does not follow the policy.
    with pytest.raises(AssertionError, match="no SkipNonFiniteState"):
        checks.check_nan_gradient(subject)
    # It counts and zeroes the bad step like the policy says, but the NaN still gets in.
    counting = Subject("leaky_skip_counted", counted_leaky_skip, {"learning_rate": 0.05})
    with pytest.raises(AssertionError, match="non-finite float leaves"):
        checks.check_nan_gradient(counting)
    # The same transform is fine under the policy's recipe (what reference subjects get).
    checks.check_nan_gradient(dataclasses.replace(subject, reference=True))


def test_contract_catches_overflowing_state() -> None:
    subject = Subject("overflowing_rms", momentum_with_overflowing_state, {"learning_rate": 0.05})
    checks.check_nan_gradient(subject)  # NaN / Inf gradients are caught by the gradient check
    with pytest.raises(AssertionError, match="non-finite state leaves"):
        checks.check_extreme_gradient(subject, "spike", 1e20)


def test_contract_catches_ignored_gradient_and_rigid_signature() -> None:
    subject = Subject("decay_only", decay_only, {"learning_rate": 0.05})
    with pytest.raises(AssertionError, match="needs <="):
        checks.check_convergence(subject, PROBLEMS["parabola"])
    with pytest.raises(AssertionError, match="rejected unknown extra keyword arguments"):
        checks.check_extra_args(subject)
