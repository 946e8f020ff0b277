"""The registry of transforms that the shared contract suite (``test_contract.py``) checks.

To put a transform under contract, append a :class:`Subject` to :data:`SUBJECTS`::

    SUBJECTS.append(Subject("muon", optlab.muon, {"learning_rate": 0.02, "beta": 0.95},
                            problem_hyperparams={"rosenbrock": {"learning_rate": 0.1}}))

Field semantics:

* ``name``: the pytest id (unique).
* ``make``: a factory returning an ``optax.GradientTransformation``; the suite calls
  ``make(**hyperparams)``. Non-numeric or static options (ints used as Python loop counts,
  strings, flags) do not belong in ``hyperparams``: bind them with ``functools.partial``.
* ``hyperparams``: the numeric keyword arguments of ``make``. They are also passed to
  ``optax.inject_hyperparams(make)(**hyperparams)``, so ``make`` must accept them as 0-d arrays.
* ``needs_grad_fn``: when True, every ``update()`` call also receives
  ``grad_fn=jax.grad(problem.loss)`` (a function params -> gradient) as an extra keyword
  argument (sharpness-aware methods need it).
* ``nan_safe``: when True the transform itself must skip a step whose gradient is non-finite
  (zero update, state unchanged and finite). When False the suite checks the documented recipe
  ``optax.apply_if_finite(tx, max_consecutive_errors=...)`` around the transform instead.
* ``problem_hyperparams``: per-problem overrides of ``hyperparams`` (keys are problem names from
  ``problems.PROBLEMS``), used by the convergence checks only.
* ``steps``: convergence steps per problem (a problem may multiply it, see
  ``Problem.steps_factor``). Keep it small: the whole default suite must stay fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import optax


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    make: Callable[..., optax.GradientTransformation]
    hyperparams: Mapping[str, float]
    needs_grad_fn: bool = False
    nan_safe: bool = False
    problem_hyperparams: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    steps: int = 300

    def hyperparams_for(self, problem_name: str) -> dict[str, float]:
        """``hyperparams`` with this problem's overrides applied."""
        return {**self.hyperparams, **self.problem_hyperparams.get(problem_name, {})}


SUBJECTS: list[Subject] = [
    Subject(
        "adamw",
        optax.adamw,
        {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        # The banana valley wants a larger step; 0.05 needs ~1000 steps there.
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2}},
    ),
]
