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

Model-wise double descent of a neural network (Nakkiran, Kaplun, Bansal, Yang, Barak,
Sutskever 2020, "Deep Double Descent: Where Bigger Models and More Data Hurt"): with label
noise, the test error of networks trained to convergence peaks at the width where the network
can just fit the noisy training set, and falls again for wider networks; Belkin et al. place
that threshold for two-layer networks near ``n K`` parameters (``n`` samples, ``K`` classes).
The second part reproduces it with one-hidden-layer ReLU MLPs on scikit-learn's digits:

* :func:`digits_label_noise`: a random split of the 1797 digits, exactly
  ``round(noise * n_train)`` training labels replaced by a different class (uniform among the
  other nine), clean test labels;
* :func:`mlp_param_count`: ``(d_in + 1) w + (w + 1) K`` for width ``w``;
* :func:`width_sweep`: full-batch Adam on the cross-entropy for a fixed number of steps per
  width, ``trials`` independent splits, noise draws and initializations (vmapped), mean
  training and test error per width.

  >>> sw = dd.width_sweep([2, 8], n_train=100, noise=0.2, steps=20, trials=2, seed=0)
  >>> sw.params.tolist()  # 75 w + 10 for 64 inputs and 10 classes
  [160, 610]
  >>> sw.test_error.shape
  (2,)

Command line: ``optlab lab double-descent`` (``--mlp-*`` options for the second part).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


# -- model-wise double descent: MLPs on the digits ---------------------------------------------

DIGITS_INPUTS, DIGITS_CLASSES, DIGITS_SAMPLES = 64, 10, 1797


@dataclasses.dataclass(frozen=True)
class NoisySplit:
    """Training inputs, noisy and original labels, which were changed, clean test data."""

    x_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray
    flipped: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_label_noise(*, n_train: int, noise: float, seed: int) -> NoisySplit:
    """scikit-learn's bundled digits (offline), pixels scaled to ``[0, 1]``, split at random
    into ``n_train`` training and ``1797 - n_train`` test samples; exactly
    ``round(noise * n_train)`` training labels (chosen without replacement) are moved to one of
    the nine other classes, uniformly."""
    if not 1 <= n_train < DIGITS_SAMPLES:
        raise ValueError(f"n_train must be in [1, {DIGITS_SAMPLES - 1}], got {n_train}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    tr, te = perm[:n_train], perm[n_train:]
    clean = y[tr].astype(np.int32)
    y_train = clean.copy()
    k = int(round(noise * n_train))
    idx = rng.choice(n_train, size=k, replace=False)
    # An offset in 1..K-1 modulo K: always a different class, each of the others equally likely.
    y_train[idx] = (y_train[idx] + rng.integers(1, DIGITS_CLASSES, size=k)) % DIGITS_CLASSES
    flipped = np.zeros(n_train, bool)
    flipped[idx] = True
    return NoisySplit(x[tr], y_train, clean, flipped, x[te], y[te].astype(np.int32))


def mlp_param_count(
    width: int, d_in: int = DIGITS_INPUTS, num_classes: int = DIGITS_CLASSES
) -> int:
    """Weights and biases of ``d_in -> width -> num_classes``: ``(d_in + 1) width + (width + 1)
    num_classes``."""
    return (d_in + 1) * width + (width + 1) * num_classes


def threshold_width(
    n_train: int, d_in: int = DIGITS_INPUTS, num_classes: int = DIGITS_CLASSES
) -> float:
    """The (real) width at which :func:`mlp_param_count` equals ``n_train * num_classes``."""
    return (n_train * num_classes - num_classes) / (d_in + 1 + num_classes)


@dataclasses.dataclass
class WidthSweep:
    """Per width: parameters, and training error (on the noisy labels), test error and
    losses, each ``(trials,)`` per width in the ``*_trials`` arrays and averaged otherwise."""

    widths: np.ndarray
    params: np.ndarray
    n_train: int
    noise: float
    train_error_trials: np.ndarray
    test_error_trials: np.ndarray
    train_loss_trials: np.ndarray
    test_loss_trials: np.ndarray

    @property
    def train_error(self) -> np.ndarray:
        return self.train_error_trials.mean(axis=1)

    @property
    def test_error(self) -> np.ndarray:
        return self.test_error_trials.mean(axis=1)

    @property
    def train_loss(self) -> np.ndarray:
        return self.train_loss_trials.mean(axis=1)

    @property
    def test_loss(self) -> np.ndarray:
        return self.test_loss_trials.mean(axis=1)

    def interpolation_index(self, tolerance: float = 0.01) -> int | None:
        """The first width whose mean training error is at most ``tolerance`` (it fits the
        noisy labels), or None."""
        hit = np.flatnonzero(self.train_error <= tolerance)
        return int(hit[0]) if hit.size else None

    def peak(self) -> dict[str, Any]:
        """The test-error peak around the interpolation width ``w*`` (the first that fits the
        noisy labels): the largest test error in ``[w*/2, 2 w*]``, the best below ``w*/2`` and
        the best above ``2 w*`` (None where the sweep has no such widths), and whether the peak
        exceeds both."""
        i = self.interpolation_index()
        out: dict[str, Any] = {"interpolation_width": None if i is None else int(self.widths[i])}
        if i is None:
            return {**out, "shows": False}
        w, e = self.widths, self.test_error
        w0 = w[i]
        band = (w >= w0 / 2) & (w <= 2 * w0)
        j = int(np.flatnonzero(band)[np.argmax(e[band])])
        below, above = w < w0 / 2, w > 2 * w0
        out.update(
            peak_width=int(w[j]),
            peak_test_error=float(e[j]),
            best_below=float(e[below].min()) if below.any() else None,
            best_below_width=int(w[below][np.argmin(e[below])]) if below.any() else None,
            best_above=float(e[above].min()) if above.any() else None,
            best_above_width=int(w[above][np.argmin(e[above])]) if above.any() else None,
        )
        out["shows"] = bool(
            below.any() and above.any() and e[j] > out["best_below"] and e[j] > out["best_above"]
        )
        return out


def width_sweep(
    widths: Sequence[int],
    *,
    n_train: int,
    noise: float,
    steps: int,
    trials: int,
    seed: int,
    learning_rate: float = 3e-3,
    progress: Any = None,
) -> WidthSweep:
    """Train ``64 -> w -> 10`` ReLU MLPs (He-normal first layer, LeCun-normal second, zero
    biases) with full-batch ``optax.adam(learning_rate)`` on the mean cross-entropy for
    ``steps`` steps, for each width ``w``; trial ``t`` uses :func:`digits_label_noise` with seed
    ``seed + t`` and the same initialization key for every width. ``progress``: an object whose
    ``update(k)`` is called after each compiled group of ``k`` widths."""
    widths_arr = np.asarray(widths, int)
    if widths_arr.size == 0 or widths_arr.min() < 1:
        raise ValueError(f"widths must be positive integers, got {list(widths)}")
    if steps < 1 or trials < 1:
        raise ValueError(f"steps and trials must be >= 1, got {steps}, {trials}")
    splits = [
        digits_label_noise(n_train=n_train, noise=noise, seed=seed + t) for t in range(trials)
    ]
    data = tuple(
        jnp.asarray(np.stack([getattr(s, f) for s in splits]))
        for f in ("x_train", "y_train", "x_test", "y_test")
    )
    keys = jax.random.split(jax.random.key(seed), trials)
    res = np.zeros((4, len(widths_arr), trials))
    for group in _groups(widths_arr):
        ws = widths_arr[group]
        out = _train_mlps(
            *data,
            keys,
            jnp.float32(learning_rate),
            jnp.asarray(ws, jnp.int32),
            pad=int(ws.max()),
            steps=steps,
        )
        res[:, group] = np.asarray(out, np.float64)
        if progress is not None:
            progress.update(len(group))
    return WidthSweep(
        widths_arr,
        np.array([mlp_param_count(int(w)) for w in widths_arr]),
        n_train,
        noise,
        *res,
    )


def _groups(widths: np.ndarray, floor: int = 512) -> list[np.ndarray]:
    """Indices of ``widths`` in groups trained by one compiled program each, padded to the
    group's largest width: consecutive (sorted) widths join a group while the padded hidden
    units stay within twice the real ones or ``floor`` (compiling costs more than the padding
    of small widths)."""
    order = np.argsort(widths, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None:
            cand = widths[g + [i]]
            if len(cand) * cand.max() <= max(2 * cand.sum(), floor):
                g.append(int(i))
                continue
        groups.append([int(i)])
    return [np.asarray(g) for g in groups]


@functools.partial(jax.jit, static_argnames=("pad", "steps"))
def _train_mlps(
    x: jax.Array,
    y: jax.Array,
    xt: jax.Array,
    yt: jax.Array,
    keys: jax.Array,
    lr: jax.Array,
    widths: jax.Array,
    *,
    pad: int,
    steps: int,
) -> jax.Array:
    # (train error, test error, train loss, test loss) x widths x trials. A width-w network is
    # the padded one with hidden units >= w masked to 0: their weights get zero gradients, so
    # Adam never moves them, and the function is exactly the width-w network's. Unit j's
    # weights are drawn from fold_in(key, j), so they do not depend on the padding.
    tx = optax.adam(lr)
    d_in, k = x.shape[-1], DIGITS_CLASSES
    units = jnp.arange(pad)

    def column(key: jax.Array, j: jax.Array, n: int) -> jax.Array:
        return jax.random.normal(jax.random.fold_in(key, j), (n,))

    def one(
        x: jax.Array, y: jax.Array, xt: jax.Array, yt: jax.Array, key: jax.Array, w: jax.Array
    ) -> jax.Array:
        k1, k2 = jax.random.split(key)
        mask = (units < w).astype(x.dtype)
        p = {
            "w1": jax.vmap(lambda j: column(k1, j, d_in), out_axes=1)(units) * jnp.sqrt(2.0 / d_in),
            "b1": jnp.zeros(pad),
            "w2": jax.vmap(lambda j: column(k2, j, k))(units) / jnp.sqrt(w.astype(x.dtype)),
            "b2": jnp.zeros(k),
        }

        def f(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
            return (jax.nn.relu(x @ p["w1"] + p["b1"]) * mask) @ p["w2"] + p["b2"]

        def loss(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean()

        def step(carry: tuple, _: None) -> tuple[tuple, None]:
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)

        def err(x: jax.Array, y: jax.Array) -> jax.Array:
            return jnp.mean(jnp.argmax(f(p, x), axis=1) != y)

        return jnp.stack([err(x, y), err(xt, yt), loss(p, x, y), loss(p, xt, yt)])

    per_trial = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None), out_axes=1)
    # (4, widths, trials)
    return jax.vmap(per_trial, in_axes=(None, None, None, None, None, 0), out_axes=1)(
        x, y, xt, yt, keys, widths
    )


def plot_width_sweep(sweep: WidthSweep, path: str | os.PathLike) -> None:
    """Test and training error (left) and cross-entropy (right) vs hidden width, log width
    axis, the interpolation width and the ``n K``-parameter width marked."""
    from optlab.lab._plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    w = sweep.widths
    i = sweep.interpolation_index()
    for ax, (test, train, ylabel) in zip(
        axes,
        (
            (sweep.test_error, sweep.train_error, "error (0-1)"),
            (sweep.test_loss, sweep.train_loss, "cross-entropy"),
        ),
    ):
        ax.plot(w, test, "o-", color="C0", label="test (clean labels)")
        ax.plot(w, train, "s:", color="C1", label="train (noisy labels)")
        if i is not None:
            ax.axvline(w[i], color="C3", linestyle="--", linewidth=1, label="fits the noisy labels")
        ax.axvline(
            threshold_width(sweep.n_train),
            color="gray",
            linestyle=":",
            linewidth=1,
            label="parameters = n K",
        )
        ax.set(xscale="log", xlabel="hidden width", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    trials = sweep.test_error_trials.shape[1]
    axes[0].set_title(
        f"MLP 64-w-10 on digits, n = {sweep.n_train}, {100 * sweep.noise:g}% label noise, "
        f"mean of {trials}"
    )
    axes[1].set_title("loss (cross-entropy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
