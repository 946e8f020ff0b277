"""Per-step minimax quintics for the polar factor (Polar Express), computed by optlab.

Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932) replaces the fixed
Newton-Schulz quintic by a different odd quintic at every step. Step ``t`` knows that the
singular values of its input lie in ``[l_t, u_t]`` and uses the polynomial

    p_t(x) = a x + b x^3 + c x^5  minimizing  max_{x in [l_t, u_t]} |1 - p_t(x)| =: E_t.

The image of ``[l_t, u_t]`` is then ``[1 - E_t, 1 + E_t]``, which is the next step's interval.
Composing the greedy minimax steps is optimal among compositions of odd quintics (Theorem 4.1 of
the paper), and the error bound after ``T`` steps is exactly ``E_{T-1}``.

How optlab computes the coefficients (no table is copied; everything is generated here, in
float64 numpy, once per configuration and cached):

1. Start from ``[l_0, u_0] = [lower_bound, 1]``: the input is divided by its Frobenius norm,
   which bounds the spectral norm, so ``sigma_max <= 1``; ``lower_bound`` is the assumed
   ``sigma_min / sigma_max`` (default 1e-3, the paper's choice).
2. For each step solve the minimax problem with the Remez exchange algorithm on the basis
   ``{x, x^3, x^5}``: four reference points ``l = x_0 < x_1 < x_2 < x_3 = u`` (the error
   equioscillates at the endpoints and at the two interior critical points of ``p``), solve the
   4 x 4 linear system ``p(x_i) + (-1)^i E = 1``, move the interior points to the roots of
   ``p'(x) = a + 3 b x^2 + 5 c x^4`` (a quadratic in ``x^2``), repeat until the levelled error
   stops changing. Where the two-critical-point solution is not admissible (the interval is so
   wide that the best quintic is monotone, as for tiny ``l``), the problem degenerates to
   maximizing the slope at ``l`` subject to ``p <= 1 + E`` on the interval; the exchange still
   converges because the reference is re-seeded from Chebyshev points and the error is
   measured on a dense grid (``_minimax_error``), which is also what the tests check.
3. Cushion (Amsel et al.'s "cushioning", their sec. on finite precision): the minimax problem
   is solved on ``[max(l_t, cushion * u_t), u_t]`` and the result is rescaled by the ``gamma``
   that minimizes ``max |1 - gamma p|`` over the true interval ``[l_t, u_t]``, i.e. centred on 1
   there: ``gamma = 2 / (min p + max p)``. Why: the exact minimax quintic for a tiny ``l_t``
   equioscillates, so it dips back to ``1 - E_t`` (0.0085 for ``l = 1e-3``) at its interior
   minimum near ``x = 0.82``. Evaluating ``a x + b x^3 + c x^5`` with ``|a x| ~ |b x^3 + c x^5|
   ~ 7`` there in bfloat16 (unit round-off ``2^-8``, plus the coefficients' own rounding) has
   absolute errors of a few ``1e-2``, larger than 0.0085: singular values near 0.82 change sign
   and converge to -1, and the result's cosine to the polar factor dropped to 0.83 on Gaussian
   256 x 1024 matrices. With ``cushion = 0.024`` (the paper's value) the interior minimum is
   0.2, several times that round-off, while the slope at ``l`` (what lifts the smallest singular
   values) is only 2% lower (8.29 vs 8.47 for ``l = 1e-3``): in exact arithmetic the cushioned
   steps need the same number of iterations.
4. Safety: the step is applied to ``x / (1 + safety)``, i.e. the coefficients are divided by
   ``(1 + safety)^{1, 3, 5}``, so that singular values slightly above ``u_t`` (float round-off,
   bfloat16) are not amplified. The interval propagated to the next step is the exact image of
   ``[l_t, u_t]`` under the safe polynomial (its values at the ends and at the roots of p').
5. Once the interval is narrower than ``1e-3`` the minimax quintic is, to within round-off, the
   Taylor-optimal ``(15 x - 10 x^3 + 3 x^5) / 8`` (its limit; it has p(1) = 1, p'(1) = p''(1) = 0),
   and the Remez system becomes singular, so that polynomial is used directly.

The stated bound of each step (``PolarExpressStep.error``) is checked by the tests on a dense grid.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

#: Default cushion: each step's design interval starts at least this fraction of its upper end
#: (module docstring, item 3; Amsel et al. use 0.02407).
CUSHION = 0.024


class PolarExpressStep(NamedTuple):
    """One step's odd quintic ``a x + b x^3 + c x^5`` and what it guarantees.

    Attributes:
      a, b, c: coefficients (already divided by the safety factor's powers).
      lower, upper: the interval ``[l_t, u_t]`` the step was designed for.
      out_lower, out_upper: the image of ``[l_t, u_t]`` under the polynomial, i.e. the
        interval the singular values are guaranteed to lie in after this step.
    """

    a: float
    b: float
    c: float
    lower: float
    upper: float
    out_lower: float
    out_upper: float

    @property
    def error(self) -> float:
        """max ``|1 - sigma|`` over the guaranteed output interval."""
        return max(1.0 - self.out_lower, self.out_upper - 1.0)


def _poly(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b, c = coeffs
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def _critical_points(coeffs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positive roots of p'(x) = a + 3 b x^2 + 5 c x^4 inside (lo, hi), sorted."""
    a, b, c = coeffs
    roots_sq = np.roots([5.0 * c, 3.0 * b, a]) if c != 0 else np.roots([3.0 * b, a])
    roots_sq = roots_sq[np.isreal(roots_sq)].real
    roots = np.sqrt(roots_sq[roots_sq > 0])
    return np.sort(roots[(roots > lo) & (roots < hi)])


def _image(coeffs: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Exact ``[min p, max p]`` over ``[lo, hi]``: extrema are at the ends or where p' = 0."""
    x = np.concatenate([[lo, hi], _critical_points(coeffs, lo, hi)])
    values = _poly(coeffs, x)
    return float(values.min()), float(values.max())


def _grid(lo: float, hi: float, n: int = 20001) -> np.ndarray:
    # Geometric spacing resolves the small end when lo << hi; a linear grid the large end.
    return np.unique(np.concatenate([np.geomspace(lo, hi, n), np.linspace(lo, hi, n)]))


def _minimax_error(coeffs: np.ndarray, lo: float, hi: float) -> float:
    x = _grid(lo, hi)
    return float(np.max(np.abs(1.0 - _poly(coeffs, x))))


def _remez_odd_quintic(lo: float, hi: float, iters: int = 100) -> np.ndarray:
    """Coefficients (a, b, c) of the odd quintic that best approximates 1 on [lo, hi]."""
    # Chebyshev extrema mapped to [lo, hi] as the initial reference.
    ref = lo + (hi - lo) * 0.5 * (1.0 - np.cos(np.pi * np.arange(4) / 3.0))
    best, best_err = None, np.inf
    for _ in range(iters):
        signs = np.array([1.0, -1.0, 1.0, -1.0])
        system = np.stack([ref, ref**3, ref**5, signs], axis=1)
        sol = np.linalg.solve(system, np.ones(4))
        coeffs = sol[:3]
        err = _minimax_error(coeffs, lo, hi)
        if err < best_err:
            best, best_err = coeffs, err
        crit = _critical_points(coeffs, lo, hi)
        if len(crit) != 2:
            # Degenerate reference: fall back to the dense-grid extrema of the error.
            x = _grid(lo, hi, 4001)
            e = 1.0 - _poly(coeffs, x)
            # Local extrema of the error (sign changes of its slope).
            d = np.diff(e)
            idx = np.where(np.sign(d[1:]) != np.sign(d[:-1]))[0] + 1
            crit = np.sort(x[idx])[:2]
            if len(crit) != 2:
                break
        new_ref = np.array([lo, crit[0], crit[1], hi])
        if np.allclose(new_ref, ref, rtol=1e-14, atol=0.0):
            break
        ref = new_ref
    return best


@functools.lru_cache(maxsize=64)
def polar_express_steps(
    steps: int, lower_bound: float = 1e-3, safety: float = 0.02, cushion: float = CUSHION
) -> tuple[PolarExpressStep, ...]:
    """The per-step minimax quintics for ``steps`` steps (see the module docstring).

    Args:
      steps: number of quintic steps (>= 1).
      lower_bound: assumed ``sigma_min / sigma_max`` of the input, in (0, 1).
      safety: relative headroom above each step's upper bound, >= 0.
      cushion: lower end of each step's design interval as a fraction of its upper end, in
        [0, 1); 0 gives the exact greedy minimax steps (fragile in bfloat16, module docstring).

    Returns:
      A tuple of :class:`PolarExpressStep`, one per step, in the order they are applied.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 1e-7 <= lower_bound < 1.0:
        raise ValueError(f"lower_bound must be in [1e-7, 1), got {lower_bound!r}")
    if not 0.0 <= safety < 1.0:
        raise ValueError(f"safety must be in [0, 1), got {safety!r}")
    if not 0.0 <= cushion < 1.0:
        raise ValueError(f"cushion must be in [0, 1), got {cushion!r}")
    lo, hi = float(lower_bound), 1.0
    out = []
    for _ in range(steps):
        if hi - lo < 1e-3:
            coeffs = np.array([15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0])
        else:
            design_lo = max(lo, cushion * hi)
            coeffs = _remez_odd_quintic(design_lo, hi)
            if design_lo > lo:
                # Centre the cushioned polynomial on 1 over the whole interval [lo, hi].
                p_min, p_max = _image(coeffs, lo, hi)
                coeffs = coeffs * (2.0 / (p_min + p_max))
        scale = 1.0 + safety
        coeffs = coeffs / np.array([scale, scale**3, scale**5])
        out_lo, out_hi = _image(coeffs, lo, hi)
        a, b, c = (float(v) for v in coeffs)
        out.append(PolarExpressStep(a, b, c, lo, hi, out_lo, out_hi))
        lo, hi = out_lo, out_hi
    return tuple(out)


@functools.lru_cache(maxsize=64)
def polar_express_coefficients(
    steps: int, lower_bound: float = 1e-3, safety: float = 0.02, cushion: float = CUSHION
) -> tuple[tuple[float, float, float], ...]:
    """``((a, b, c), ...)`` for each step; Python floats, safe to close over under jit."""
    return tuple((s.a, s.b, s.c) for s in polar_express_steps(steps, lower_bound, safety, cushion))
