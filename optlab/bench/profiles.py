r"""AlgoPerf-style performance profiles and scores over several tasks.

Dahl et al., "Benchmarking Neural Network Training Algorithms", arXiv:2306.07179 (2023),
sec. 4.5 and the ``scoring/performance_profile.py`` of github.com/mlcommons/algorithmic-
efficiency; Merkulov, "Modern optimization methods" (its "How to compare them? AlgoPerf
benchmark" part: the fraction of tasks solved within a factor tau of the fastest, and the
normalized area under it, 1.0 = fastest on all; full reference in
:mod:`optlab.bench.references`).

For optimizers ``s`` and tasks ``w`` with time-to-target ``t[s, w]`` (training seconds until
the test accuracy first reaches the task's target, or steps for a task profiled by steps,
:attr:`optlab.bench.tasks.Task.profile_by`; ``inf`` when it never does):

.. math::

    r[s, w] = \frac{t[s, w]}{\min_{s'} t[s', w]}, \qquad
    r[s, w] := \infty \ \text{if the target was missed or } r[s, w] > \tau_{max} = 4,

    \rho_s(\tau) = \frac{1}{|W|} \#\{w : r[s, w] \le \tau\}, \qquad
    \tau_i = 1 + 3 \frac{i}{99}, \ i = 0, \dots, 99 \ (100 \text{ points in } [1, 4]),

    \text{score}_s = \frac{1}{\tau_{max} - 1}
        \sum_{i=0}^{98} \frac{\rho_s(\tau_i) + \rho_s(\tau_{i+1})}{2} (\tau_{i+1} - \tau_i)
    \quad \in [0, 1],

the trapezoidal area under the profile on the 100 points, divided by 3, exactly as AlgoPerf's
``compute_leaderboard_score`` (``np.trapz`` over the profile's columns, normalized by
``max_tau - min_tau``). A method fastest on every task scores 1; one that never reaches a
target within 4x of the fastest scores 0. A task that no method solves counts in ``|W|`` for
every method (so nobody's profile reaches 1). AlgoPerf takes each submission's time as the
median over studies of the best trial; ``optlab compare`` runs one trial per method and task.

Worked example (tested in ``tests/bench/test_bench_profiles.py``): two tasks, times (s)

=====  ======  ======
       task 1  task 2
=====  ======  ======
a       10      15
b       25      10
c       50    missed
=====  ======  ======

gives ``r_a = (1, 1.5)``, ``r_b = (2.5, 1)`` and ``r_c = (inf, inf)`` (50 / 10 = 5 > 4 on
task 1, missed on task 2). ``rho_a`` is 1/2 on ``[1, 1.5)`` and 1 from 1.5 on; ``rho_b`` is 1/2
on ``[1, 2.5)`` and 1 from 2.5 on; ``rho_c = 0``. Both jumps fall at midpoints of grid
intervals (``1.5 = (tau_16 + tau_17) / 2``, ``2.5 = (tau_49 + tau_50) / 2``), where the
trapezoid rule integrates a step exactly: ``area_a = 0.5 * 0.5 + 1 * 2.5 = 2.75``, score
``2.75 / 3 = 0.9167``; ``area_b = 0.5 * 1.5 + 1 * 1.5 = 2.25``, score ``0.75``; score_c ``0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

TAU_MAX = 4.0
"""Ratios above this count as failures (AlgoPerf's ``max_tau``)."""

NUM_POINTS = 100
"""Number of tau points in ``[1, TAU_MAX]`` (AlgoPerf's ``num_points``)."""


@dataclasses.dataclass(frozen=True)
class Profiles:
    """Performance profiles of several optimizers over several tasks.

    Attributes:
        tasks: task names (columns of ``ratios``).
        optimizers: optimizer names.
        times: ``times[s][w]``: time-to-target, ``inf`` where missed.
        ratios: ``ratios[s]``: array over ``tasks`` of ``r[s, w]`` (``inf`` = failure).
        taus: the tau grid.
        rho: ``rho[s]``: the profile on ``taus``.
        scores: ``scores[s]``: normalized area under ``rho[s]``, in ``[0, 1]``.
    """

    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    times: dict[str, dict[str, float]]
    ratios: dict[str, np.ndarray]
    taus: np.ndarray
    rho: dict[str, np.ndarray]
    scores: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-ready (``inf`` written as ``None``)."""

        def fin(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "formula": "r = t / min_s t, inf if missed or r > 4; rho(tau) = mean_w [r <= tau] "
            "on 100 points in [1, 4]; score = trapezoid(rho, tau) / 3 (AlgoPerf)",
            "tau_max": TAU_MAX,
            "tasks": list(self.tasks),
            "times": {s: {w: fin(t) for w, t in ts.items()} for s, ts in self.times.items()},
            "ratios": {s: [fin(r) for r in rs] for s, rs in self.ratios.items()},
            "taus": self.taus.tolist(),
            "rho": {s: v.tolist() for s, v in self.rho.items()},
            "scores": dict(self.scores),
        }


def performance_ratios(
    times: Mapping[str, Mapping[str, float | None]],
    tasks: Sequence[str],
    tau_max: float = TAU_MAX,
) -> dict[str, np.ndarray]:
    """``r[s, w] = t[s, w] / min_s' t[s', w]``, ``inf`` when missed or above ``tau_max``.

    Args:
        times: ``times[optimizer][task]``: time-to-target; ``None``, ``inf``, NaN or a
            missing entry mean the target was not reached.
        tasks: the tasks, in column order.
        tau_max: ratios above it become ``inf``.
    """

    def t(s: str, w: str) -> float:
        v = times[s].get(w)
        return math.inf if v is None or not math.isfinite(v) else float(v)

    out = {s: np.full(len(tasks), np.inf) for s in times}
    for j, w in enumerate(tasks):
        best = min((t(s, w) for s in times), default=math.inf)
        if not math.isfinite(best):
            continue  # nobody reached this task's target: inf for everyone
        for s in times:
            ts = t(s, w)
            # A zero best time (instant target) would divide by zero: call every tie 1.
            r = 1.0 if ts == best else ts / best
            out[s][j] = r if r <= tau_max else np.inf
    return out


def performance_profiles(
    times: Mapping[str, Mapping[str, float | None]],
    tasks: Sequence[str] | None = None,
    *,
    tau_max: float = TAU_MAX,
    num_points: int = NUM_POINTS,
) -> Profiles:
    """Profiles and scores from ``times[optimizer][task]`` (see the module docstring).

    Args:
        times: time-to-target per optimizer and task; missed targets as ``None`` / ``inf``.
        tasks: the tasks (default: every task named in ``times``, in first-seen order).
        tau_max: largest ratio that still counts (4 in AlgoPerf).
        num_points: tau points in ``[1, tau_max]`` (100 in AlgoPerf).
    """
    if tasks is None:
        seen: dict[str, None] = {}
        for ts in times.values():
            seen.update(dict.fromkeys(ts))
        tasks = tuple(seen)
    tasks = tuple(tasks)
    if not tasks or not times:
        raise ValueError("performance profiles need at least one task and one optimizer")
    ratios = performance_ratios(times, tasks, tau_max)
    taus = np.linspace(1.0, tau_max, num_points)
    rho = {s: (r[None, :] <= taus[:, None]).mean(axis=1) for s, r in ratios.items()}
    scores = {s: float(np.trapezoid(v, taus) / (tau_max - 1.0)) for s, v in rho.items()}
    full_times = {
        s: {w: (math.inf if times[s].get(w) is None else float(times[s][w])) for w in tasks}
        for s in times
    }
    return Profiles(tasks, tuple(times), full_times, ratios, taus, rho, scores)
