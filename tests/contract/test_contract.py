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

from . import checks
from .problems import PROBLEMS, Problem
from .subjects import SUBJECTS, Subject

SUBJECT_PARAMS = [pytest.param(s, id=s.name) for s in SUBJECTS]
PROBLEM_PARAMS = [pytest.param(p, id=name) for name, p in PROBLEMS.items()]


def test_subject_registry_is_well_formed() -> None:
    names = [s.name for s in SUBJECTS]
    assert len(names) == len(set(names)), f"duplicate subject names: {names}"
    for s in SUBJECTS:
        assert all(isinstance(v, int | float) for v in s.hyperparams.values()), s.name
        unknown = set(s.problem_hyperparams) - set(PROBLEMS)
        assert not unknown, f"{s.name}: problem_hyperparams for unknown problems {unknown}"
        assert s.steps >= 1, s.name


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_jit_no_recompile(subject: Subject) -> None:
    checks.check_jit_no_recompile(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_extra_args(subject: Subject) -> None:
    checks.check_extra_args(subject)


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_inject_hyperparams(subject: Subject) -> None:
    if not subject.hyperparams:
        pytest.skip("no numeric hyperparameters")
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


@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
def test_nan_gradient(subject: Subject) -> None:
    checks.check_nan_gradient(subject)


@pytest.mark.parametrize("problem", PROBLEM_PARAMS)
@pytest.mark.parametrize("subject", SUBJECT_PARAMS)
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


def test_contract_catches_retracing_state() -> None:
    subject = Subject("python_counter", sgd_with_python_counter, {"learning_rate": 0.1})
    with pytest.raises(AssertionError, match="traced 2 times"):
        checks.check_jit_no_recompile(subject)


def test_contract_catches_nan_stuck_in_state() -> None:
    subject = Subject(
        "leaky_skip", momentum_with_leaky_skip, {"learning_rate": 0.05}, nan_safe=True
    )
    with pytest.raises(AssertionError, match="non-finite float leaves"):
        checks.check_nan_gradient(subject)
    # The same transform is fine under the documented apply_if_finite recipe.
    checks.check_nan_gradient(dataclasses.replace(subject, nan_safe=False))


def test_contract_catches_ignored_gradient_and_rigid_signature() -> None:
    subject = Subject("decay_only", decay_only, {"learning_rate": 0.05})
    with pytest.raises(AssertionError, match="needs <="):
        checks.check_convergence(subject, PROBLEMS["parabola"])
    with pytest.raises(AssertionError, match="rejected unused extra keyword arguments"):
        checks.check_extra_args(subject)
