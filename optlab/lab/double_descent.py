"""Double descent: the test error peaks at the interpolation threshold and falls again past it.

Belkin, Hsu, Ma, Mandal (2019), "Reconciling modern machine-learning practice and the classical
bias-variance trade-off": with minimum-norm least squares, the test error of a model with ``P``
features fitted to ``n`` noisy samples rises as ``P`` approaches ``n`` (the fit must pass
through every noisy label with a nearly singular design) and falls again for ``P > n``, where
among the many interpolants the minimum-norm one is smooth. A small ridge penalty removes the
peak (Nakkiran et al. 2020, "Optimal regularization can mitigate double descent").

The cheapest clean reproduction is polynomial regression in the Legendre basis (orthogonal for
the uniform distribution on ``[-1, 1]``; monomials are too ill-conditioned to show it):

* :func:`legendre_features`: ``P_0(t), ..., P_d(t)`` by Bonnet's recursion
  ``(k + 1) P_{k+1} = (2k + 1) t P_k - k P_{k-1}``;
* :func:`min_norm_fit`: ``w = V diag(s / (s^2 + ridge)) U^T y`` from the thin SVD
  ``Phi = U diag(s) V^T`` (``ridge = 0``: the pseudo-inverse, minimum-norm least squares);
* :func:`degree_sweep`: mean test error over ``trials`` noise draws for every degree.

Example:
  >>> import numpy as np
  >>> from optlab.lab import double_descent as dd
  >>> t = np.linspace(-1, 1, 5)
  >>> np.round(dd.legendre_features(t, 2)[:, 2], 3)  # P_2 = (3 t^2 - 1) / 2
  array([ 1.   , -0.125, -0.5  , -0.125,  1.   ])
  >>> res = dd.degree_sweep(n_train=10, degrees=[2, 9, 40], noise=0.1, trials=2, seed=0)
  >>> res.test_mse.shape
  (3,)

Command line: ``optlab lab double-descent``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

DESIGNS = ("equispaced", "uniform", "chebyshev")


def legendre_features(t: np.ndarray, degree: int) -> np.ndarray:
    """``[P_0(t), ..., P_degree(t)]`` as columns (shape ``(len(t), degree + 1)``), float64."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    t = np.asarray(t, np.float64)
    out = np.empty((t.shape[0], degree + 1))
    out[:, 0] = 1.0
    if degree >= 1:
        out[:, 1] = t
    for k in range(1, degree):
        out[:, k + 1] = ((2 * k + 1) * t * out[:, k] - k * out[:, k - 1]) / (k + 1)
    return out


def min_norm_fit(phi: np.ndarray, y: np.ndarray, *, ridge: float = 0.0) -> np.ndarray:
    """Ridge (``ridge > 0``) or minimum-norm least-squares (``ridge = 0``) coefficients.

    ``argmin ||Phi w - y||^2 + ridge ||w||^2``; at ``ridge = 0`` the minimizer of ``||w||``
    among the least-squares solutions, ``pinv(Phi) y``. Singular values below
    ``max(shape) * eps * s_max`` are treated as zero, numpy's ``lstsq`` cutoff.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    u, s, vt = np.linalg.svd(phi, full_matrices=False)
    cut = max(phi.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    keep = s > cut
    inv = np.zeros_like(s)
    inv[keep] = s[keep] / (s[keep] ** 2 + ridge)
    return vt.T @ (inv * (u.T @ y))


def target(t: np.ndarray) -> np.ndarray:
    """The noiseless function, ``atan(2 t)`` (smooth, not a polynomial)."""
    return np.arctan(2.0 * t)


@dataclasses.dataclass
class Sweep:
    """Test and train mean squared errors (means over trials) and coefficient norms per degree."""

    degrees: np.ndarray
    n_train: int
    ridge: float
    test_mse: np.ndarray
    train_mse: np.ndarray
    coef_norm: np.ndarray

    @property
    def threshold_degree(self) -> int:
        """The degree with as many features as samples: ``degree + 1 = n_train``."""
        return self.n_train - 1


def degree_sweep(
    *,
    n_train: int,
    degrees: Sequence[int],
    noise: float,
    trials: int,
    seed: int,
    ridge: float = 0.0,
    n_test: int = 2000,
    f: Callable[[np.ndarray], np.ndarray] = target,
    design: str = "equispaced",
) -> Sweep:
    """Fit ``f(t) + noise * N(0, 1)`` at ``n_train`` points of ``[-1, 1]`` with Legendre
    features of each degree; test on ``n_test`` uniform random points against the noiseless
    ``f``. Each trial draws new noise, test points (and training points unless
    ``design="equispaced"``), the same draws for every degree.

    ``design``: ``"equispaced"`` (default: the peak stands alone; the unregularized error is
    still ``> 10^6`` times the best at the threshold), ``"uniform"`` (random points cluster, so
    high-degree interpolants oscillate wildly between them and the descent past the threshold
    is much slower) or ``"chebyshev"`` (``cos(pi U)``).
    """
    degrees = np.asarray(degrees, int)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(degrees))
    train = np.zeros(len(degrees))
    norm = np.zeros(len(degrees))
    dmax = int(degrees.max())
    for _ in range(trials):
        if design == "uniform":
            t = rng.uniform(-1, 1, n_train)
        elif design == "chebyshev":
            t = np.cos(np.pi * rng.uniform(0, 1, n_train))
        elif design == "equispaced":
            t = np.linspace(-1, 1, n_train)
        else:
            raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
        y = f(t) + noise * rng.standard_normal(n_train)
        tt = rng.uniform(-1, 1, n_test)
        phi_all, phit_all = legendre_features(t, dmax), legendre_features(tt, dmax)
        for i, d in enumerate(degrees):
            w = min_norm_fit(phi_all[:, : d + 1], y, ridge=ridge)
            train[i] += np.mean((phi_all[:, : d + 1] @ w - y) ** 2)
            test[i] += np.mean((phit_all[:, : d + 1] @ w - f(tt)) ** 2)
            norm[i] += np.linalg.norm(w)
    return Sweep(degrees, n_train, ridge, test / trials, train / trials, norm / trials)


def peak_ratio(sweep: Sweep) -> tuple[float, float]:
    """Test error at the threshold over the minimum below it, and over the minimum above it."""
    d = sweep.degrees
    at = sweep.test_mse[d == sweep.threshold_degree]
    if at.size == 0:
        raise ValueError("the sweep does not contain the threshold degree n_train - 1")
    below, above = (
        sweep.test_mse[d < sweep.threshold_degree],
        sweep.test_mse[d > sweep.threshold_degree],
    )
    return float(at[0] / below.min()), float(at[0] / above.min())
