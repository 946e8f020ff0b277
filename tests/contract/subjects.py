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
* ``rtol``: how close two computations of the same steps must be (jit vs eager, 8 devices vs
  one): ``max|a - b| <= 1e-6 + rtol * max|b|`` per leaf. Raise it only for transforms whose state
  holds results of float32 matrix factorizations (eigh-based roots are accurate to ~1e-5 of the
  largest entry), and say why.
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
    rtol: float = 1e-5

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


def _sam_adamw(rho: float, learning_rate: float) -> optax.GradientTransformation:
    from optlab._src.sam import sam_perturb  # not re-exported from optlab yet

    return optax.chain(sam_perturb(rho), optax.adamw(learning_rate))


SUBJECTS.append(
    Subject(
        "sam_adamw",
        _sam_adamw,
        {"rho": 0.05, "learning_rate": 0.05},
        needs_grad_fn=True,
        # Across the banana valley the curvature is ~1e3: with rho = 0.05 SAM stalls at loss ~0.4.
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2, "rho": 0.005}},
    )
)


def _shampoo(learning_rate: float, b1: float, weight_decay: float) -> optax.GradientTransformation:
    from optlab._src.shampoo import shampoo

    # Roots every 2 steps from step 1: the contract's problems are tiny, the schedule is not.
    # eps = 1e-3: the first statistics have rank 1-2, and with a 1e-6 ridge their null space is
    # amplified so much that float32 round-off (jit vs eager, 1 vs 8 devices) shows at 1e-4.
    return shampoo(learning_rate, b1=b1, weight_decay=weight_decay, eps=1e-3,
                   precondition_every=2, start_preconditioning_step=1)


def _scale_by_shampoo_then_sgd(learning_rate: float, beta2: float) -> optax.GradientTransformation:
    from optlab._src.shampoo import scale_by_shampoo

    # A user's own chain: Shampoo's preconditioning, then optax's SGD with heavy-ball momentum.
    return optax.chain(
        scale_by_shampoo(beta2=beta2, eps=1e-3, precondition_every=3,
                         start_preconditioning_step=1),
        optax.sgd(learning_rate, momentum=0.9),
    )


SUBJECTS.append(
    Subject(
        "shampoo",
        _shampoo,
        {"learning_rate": 0.05, "b1": 0.9, "weight_decay": 1e-4},
        nan_safe=True,  # the alias freezes its whole state on a step scale_by_shampoo skips
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2}},
        rtol=1e-4,  # the state holds float32 eigh roots (see Subject.rtol)
    )
)
SUBJECTS.append(
    Subject(
        "scale_by_shampoo_sgd",
        _scale_by_shampoo_then_sgd,
        {"learning_rate": 0.01, "beta2": 0.999},
        # scale_by_shampoo skips non-finite steps itself (ShampooState.skipped_steps), but the
        # momentum after it would decay on the skipped step: the chain needs apply_if_finite.
        nan_safe=False,
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.02}},
        rtol=1e-4,  # the state holds float32 eigh roots (see Subject.rtol)
    )
)


def _muon(learning_rate: float, beta: float, weight_decay: float) -> optax.GradientTransformation:
    from optlab._src.muon import muon  # the full optimizer: Muon on "w", AdamW on rank < 2 leaves

    return muon(learning_rate, beta=beta, weight_decay=weight_decay)


def _scale_by_muon_chain(learning_rate: float, beta: float) -> optax.GradientTransformation:
    # scale_by_muon rejects rank < 2 leaves by design, so the documented recipe routes them
    # (the bias; all of parabola / rosenbrock) to scale_by_adam with optax.partition.
    from optlab._src.muon import muon_labels, scale_by_muon

    return optax.chain(
        optax.partition(
            {"muon": scale_by_muon(beta=beta), "adam": optax.scale_by_adam(b2=0.95)}, muon_labels
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


SUBJECTS.extend(
    [
        Subject(
            "muon",
            _muon,
            {"learning_rate": 0.03, "beta": 0.95, "weight_decay": 0.0},
            nan_safe=True,  # optlab.muon wraps itself in optax.apply_if_finite by default
            # Muon's orthogonalized steps have a fixed size, so a constant lr stalls at a loss
            # ~lr^2: on "mixed" 0.03 reaches 8.6e-4 x initial, 0.02 reaches 1.5e-4 (bound 1e-3).
            problem_hyperparams={"mixed": {"learning_rate": 0.02}},
        ),
        Subject(
            "scale_by_muon_chain",
            _scale_by_muon_chain,
            {"learning_rate": 0.03, "beta": 0.95},
            problem_hyperparams={"mixed": {"learning_rate": 0.02}},
        ),
    ]
)
