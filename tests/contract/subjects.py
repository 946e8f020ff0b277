"""The registry of transforms that the shared contract suite (``test_contract.py``) checks.

Every subject is a PUBLIC factory of optlab (or optax, for reference subjects), called by the
suite itself: ``factory(**static, **hyperparams)`` for the plain transform and
``optax.inject_hyperparams(factory, static_args=tuple(static))(**static, **hyperparams)`` (every
other argument at its default) for the injected one. To put a transform under contract, append
a :class:`Subject` to :data:`SUBJECTS`::

    SUBJECTS.append(Subject("muon", optlab.muon, {"learning_rate": 0.02, "beta": 0.95},
                            problem_hyperparams={"rosenbrock": {"learning_rate": 0.1}}))

Field semantics:

* ``name``: the pytest id (unique).
* ``factory``: the public factory itself (``optlab.muon``, ``optlab.sam``...), never a wrapper
  with a fixed signature; ``test_subject_registry_is_well_formed`` checks that it is exported by
  optlab or optax. The single exception is the one ``recipe`` subject below.
* ``hyperparams``: numeric keyword arguments of ``factory``; the inject check passes them to
  ``optax.inject_hyperparams``, so the factory must accept them as 0-d (traced) arrays.
* ``static``: every other keyword argument the suite needs (strings, Python ints used as loop
  counts or schedules, a base optimizer): passed to both the plain and the injected factory and
  declared ``static_args`` for ``optax.inject_hyperparams``.
* ``reference``: an optax transform kept as a known-good baseline. References are exempt from
  optlab's NaN/Inf policy: the NaN and extreme-value checks run them under
  ``optlab._src.common.skip_nonfinite`` (the recipe for a user's own chain).
* ``recipe``: a documented user chain built from public optlab pieces (at most one subject).
* ``needs_grad_fn``: every ``update()`` also receives ``grad_fn=jax.grad(problem.loss)`` (a
  function params -> gradient) as an extra keyword argument (sharpness-aware methods need it).
* ``descent_lr``: ``None`` when the update is the step (``params + update``); for a transform
  that returns a descent direction (``scale_by_muon``, ``sam_perturb``...), the suite steps by
  ``params - descent_lr * update`` itself, so the transform under test is still the public one,
  not a chain.
* ``problem``: the problem the structural checks (jit, extra args, inject, map_params,
  checkpoint, NaN, extreme values, sharding) run on; ``"mixed"`` unless the transform rejects
  vectors (then ``"matrix_regression"``: one (16, 8) matrix named ``"w"``, like mixed's).
* ``problems``: the convergence problems (``None``: all of ``problems.PROBLEMS``).
* ``problem_hyperparams``: per-problem overrides of ``hyperparams`` or ``static`` (keys are
  problem names), used by the convergence checks only; ``problem_descent_lr`` likewise for
  ``descent_lr``.
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
from typing import Any

import numpy as np
import optax

import optlab
from optlab._src.common import skip_nonfinite

from .problems import _MATREG_X, _MIX_X, PROBLEMS, Problem


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    factory: Callable[..., optax.GradientTransformation]
    hyperparams: Mapping[str, float]
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference: bool = False
    recipe: bool = False
    needs_grad_fn: bool = False
    descent_lr: float | None = None
    problem: str = "mixed"
    problems: tuple[str, ...] | None = None
    problem_hyperparams: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    problem_descent_lr: Mapping[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 300
    rtol: float = 1e-5
    # Extra keyword arguments of every update() on a problem (K-FAC's curvature), beside grad_fn.
    extra_args: Callable[[Problem], Mapping[str, Any]] | None = None

    @property
    def structural_problem(self) -> Problem:
        """The :class:`Problem` the structural checks (and the sharded run) use."""
        return PROBLEMS[self.problem]

    def make(self, **overrides: Any) -> optax.GradientTransformation:
        """``factory(**static, **hyperparams)`` with ``overrides`` applied."""
        return self.factory(**{**self.static, **self.hyperparams, **overrides})

    def inject(self) -> optax.GradientTransformation:
        """The factory under ``optax.inject_hyperparams`` (other arguments at their defaults)."""
        wrapped = optax.inject_hyperparams(self.factory, static_args=tuple(self.static))
        return wrapped(**self.static, **self.hyperparams)

    def hyperparams_for(self, problem_name: str) -> dict[str, Any]:
        """``static`` and ``hyperparams`` with this problem's overrides applied."""
        return {**self.static, **self.hyperparams, **self.problem_hyperparams.get(problem_name, {})}

    def convergence_problems(self) -> list[str]:
        return list(PROBLEMS) if self.problems is None else list(self.problems)


def scale_by_muon_user_chain(
    learning_rate: optax.ScalarOrSchedule, *, beta: float = 0.95
) -> optax.GradientTransformationExtraArgs:
    """The documented recipe for Muon in a chain of one's own (the suite's one recipe subject).

    ``scale_by_muon`` rejects rank < 2 leaves by design, so ``optax.partition`` routes them to
    ``scale_by_adam``; the whole chain is wrapped in ``skip_nonfinite`` so that a skipped step
    freezes Adam's moments and the schedule too (``scale_by_muon``'s own guard only freezes its
    momentum and would hand a zero update to the rest of the chain).
    """
    return skip_nonfinite(
        optax.chain(
            optax.partition(
                {"muon": optlab.scale_by_muon(beta=beta), "adam": optax.scale_by_adam(b2=0.95)},
                optlab.muon_labels,
            ),
            optax.scale_by_learning_rate(learning_rate),
        )
    )


def kfac_curvature(problem: Problem) -> dict[str, Any]:
    """K-FAC's curvature for the regression problems (the ``extra_args`` of the K-FAC subjects).

    Their loss is ``0.5 mean_n ||W^T x_n (+ b) - y_n||^2``, whose exact Hessian in ``[W; b]`` is
    ``A (x) I`` with ``A = mean [x; 1][x; 1]^T``: the factors ``A`` and ``G = I`` make K-FAC
    Newton's method (the Gauss-Newton matrix of a squared error is the identity).
    """
    if problem.name not in ("mixed", "matrix_regression"):
        return {}
    x = np.asarray(_MIX_X if problem.name == "mixed" else _MATREG_X, np.float64)
    if problem.name == "mixed":
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = np.asarray(x.T @ x / len(x), np.float32)
    return {"curvature": {"dense": optlab.KFACFactors(a, np.eye(8, dtype=np.float32))}}


_KFAC: dict[str, Any] = {
    "static": {"layers": {"dense": optlab.KFACLayer("w", "b")}, "precondition_every": 2},
    "problem": "mixed",
    "problems": ("mixed", "matrix_regression"),
    "problem_hyperparams": {"matrix_regression": {"layers": {"dense": optlab.KFACLayer("w")}}},
    "extra_args": kfac_curvature,
    "rtol": 1e-4,  # the state holds float32 eigh inverses (see Subject.rtol)
}


#: For transforms that accept rank >= 2 leaves only.
_MATRIX_ONLY: dict[str, Any] = {
    "problem": "matrix_regression",
    "problems": ("matrix_parabola", "matrix_regression"),
}

SUBJECTS: list[Subject] = [
    Subject(
        "adamw",
        optax.adamw,
        {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
        reference=True,
        # The banana valley wants a larger step; 0.05 needs ~1000 steps there.
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2}},
    ),
    # -- Muon --------------------------------------------------------------------------------------
    Subject(
        "muon",
        optlab.muon,
        {"learning_rate": 0.03, "beta": 0.95, "weight_decay": 0.0},
        # Muon's orthogonalized steps have a fixed size, so a constant lr stalls at a loss
        # ~lr^2: on "mixed" 0.03 reaches 8.6e-4 x initial, 0.02 reaches 1.5e-4 (bound 1e-3).
        problem_hyperparams={"mixed": {"learning_rate": 0.02}},
    ),
    Subject(
        "scale_by_muon",
        optlab.scale_by_muon,
        {"beta": 0.95},
        descent_lr=0.02,
        **_MATRIX_ONLY,
    ),
    Subject(
        "orthogonalize_muon",
        optlab.orthogonalize_muon,
        {},  # no numeric hyperparameters: the inject check runs it with its defaults
        descent_lr=0.02,
        # Fixed-size steps without momentum: on matrix_parabola 300 steps reach 4.5e-3 x the
        # initial loss, 600 reach 7.9e-6 (bound 1e-3).
        steps=600,
        **_MATRIX_ONLY,
    ),
    Subject(
        "scale_by_muon_user_chain",
        scale_by_muon_user_chain,
        {"learning_rate": 0.03, "beta": 0.95},
        recipe=True,
        problem_hyperparams={"mixed": {"learning_rate": 0.02}},
    ),
    # -- SAM ---------------------------------------------------------------------------------------
    Subject(
        "sam",
        optlab.sam,
        {"rho": 0.05},
        static={"base_optimizer": optax.adamw(0.05)},
        needs_grad_fn=True,
        # Across the banana valley the curvature is ~1e3: with rho = 0.05 SAM stalls at loss ~0.4.
        problem_hyperparams={"rosenbrock": {"base_optimizer": optax.adamw(0.2), "rho": 0.005}},
    ),
    Subject(
        "sam_perturb",
        optlab.sam_perturb,
        {"rho": 0.05},
        needs_grad_fn=True,
        descent_lr=0.1,  # SAM-SGD: stable up to 2 / (largest curvature = 10 on parabola)
        # Plain gradient descent (which SAM-SGD is, up to the perturbation) does not cross the
        # banana valley in 600 steps at any stable learning rate: not a property of sam_perturb.
        problems=("parabola", "matrix_parabola", "mixed", "matrix_regression"),
        # SAM-SGD stalls where the fixed-radius perturbation dominates the gradient: on mixed
        # rho = 0.05 ends at 1.8e-3 x the initial loss, 0.02 at 3.1e-4 (bound 1e-3). The
        # matrix parabola's curvatures are 0.01..1: lr 0.1 ends at 8.7e-3, 0.5 at 7.6e-5.
        problem_hyperparams={"mixed": {"rho": 0.02}},
        problem_descent_lr={"matrix_parabola": 0.5},
    ),
    # -- Shampoo -----------------------------------------------------------------------------------
    # Roots every 2-3 steps from step 1: the contract's problems are tiny, the schedule is not.
    # eps = 1e-3: the first statistics have rank 1-2, and with a 1e-6 ridge their null space is
    # amplified so much that float32 round-off (jit vs eager, 1 vs 8 devices) shows at 1e-4.
    Subject(
        "shampoo",
        optlab.shampoo,
        {"learning_rate": 0.05, "b1": 0.9, "weight_decay": 1e-4, "eps": 1e-3},
        static={"precondition_every": 2, "start_preconditioning_step": 1},
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2}},
        rtol=1e-4,  # the state holds float32 eigh roots (see Subject.rtol)
    ),
    Subject(
        "scale_by_shampoo",
        optlab.scale_by_shampoo,
        {"beta2": 0.999, "eps": 1e-3},
        static={"precondition_every": 3, "start_preconditioning_step": 1},
        # Adam-grafted preconditioned steps without momentum: lr 0.05 ends at 2.8e-2 x the
        # initial loss on matrix_regression, 0.02 at 6.6e-7 (bound 1e-3). On rosenbrock none of
        # 0.02 / 0.05 / 0.1 gets below 7.8e-3 without momentum; the shampoo subject covers it.
        descent_lr=0.02,
        problems=("parabola", "matrix_parabola", "mixed", "matrix_regression"),
        rtol=1e-4,  # the state holds float32 eigh roots (see Subject.rtol)
    ),
    # -- SOAP --------------------------------------------------------------------------------------
    # Bases refreshed every 2 steps: the contract's problems are tiny, the schedule is not.
    # Only axes of size <= 8 rotated: the problems' matrices are 16 x 8 and 8 x 16, whose
    # 16 x 16 statistic has rank <= 8 at first, and a degenerate eigenspace has no unique basis
    # (eigh picks one from the rounding of the statistic: 8 devices and one, summing in another
    # order, pick different ones and the runs part beyond any rtol). The 8 x 8 one is full rank.
    Subject(
        "soap",
        optlab.soap,
        {"learning_rate": 0.05, "b1": 0.9, "b2": 0.95, "weight_decay": 1e-4},
        static={"precondition_every": 2, "max_preconditioned_dim": 8},
        problem_hyperparams={"rosenbrock": {"learning_rate": 0.2}},
        rtol=1e-4,  # the state holds float32 eigh / QR bases (see Subject.rtol)
    ),
    # -- K-FAC -------------------------------------------------------------------------------------
    # Exact curvature of the regression problems (kfac_curvature): K-FAC is damped Newton there.
    Subject("kfac", optlab.kfac, {"learning_rate": 0.5, "damping": 1e-3, "momentum": 0.5}, **_KFAC),
    # Inverses every step: damping (the injected hyperparameter) acts only when they refresh.
    Subject(
        "scale_by_kfac",
        optlab.scale_by_kfac,
        {"damping": 1e-3},
        descent_lr=0.5,
        **{**_KFAC, "static": {**_KFAC["static"], "precondition_every": 1}},
    ),
]
