"""Sharpness-Aware Minimization (SAM) as one composable optax transform.

SAM (Foret et al., 2021) minimizes the worst loss in a p-norm ball around the weights,

    min_w  L^SAM(w),    L^SAM(w) = max_{||e||_p <= rho} L(w + e).

A first-order Taylor expansion of the inner problem gives its maximizer in closed form
(Hoelder's inequality is tight for it), with g = grad L(w) and 1/p + 1/q = 1:

    e_hat(w) = rho * sign(g) * |g|^(q-1) / (||g||_q^q)^(1/p)

so that ||e_hat||_p = rho and <e_hat, g> = rho ||g||_q. Special cases:

    p = 2    e_hat = rho * g / ||g||_2
    p = inf  e_hat = rho * sign(g)
    p = 1    e_hat = rho * sign(g_i) / k on the k entries with the largest |g_i|, 0 elsewhere
             (the q -> inf limit: the l1 ball's extreme points split evenly over ties)

Dropping second-order terms, the SAM gradient is the plain gradient at the perturbed point,

    grad L^SAM(w) ~= grad L(w + e_hat(w)),

which :func:`sam_perturb` returns, so any optax optimizer placed after it in a chain takes
the SAM step. One step costs two gradient evaluations: the incoming one and ``grad_fn``'s.

ASAM (Kwon et al., 2021), ``adaptive=True``, measures the ball in the rescaled coordinates
T_w^{-1} e with T_w = diag(|w| + eta). Substituting e = T_w e' turns the problem into the one
above for the gradient T_w g, hence

    e_hat = T_w * e_hat_p(T_w g)      (p = 2: rho * T_w^2 g / ||T_w g||_2).

NaN/Inf policy: :func:`sam_perturb` and :func:`sam` follow optlab's one rule
(:func:`optlab.skip_nonfinite`): a step whose incoming gradient, or whose
gradient at the perturbed point (or the base optimizer's new state or update), is not finite is
skipped: zero update, state unchanged, ``skipped_steps`` + 1. e_hat is computed from
g / max|g|, so any finite gradient (1e-30 to 1e30 in float32) gives the right direction and
radius.

References:
  - Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021, arXiv:2010.01412 (eq. 2 for e_hat, Algorithm 1).
  - Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
    Learning of Deep Neural Networks", ICML 2021, arXiv:2102.11600.
  - D. Merkulov, "Stories from training neural networks: Sharpness-Aware Minimization, Mode
    Connectivity, Grokking, Double Descent", seminar, course "Convex optimization methods",
    week 14 ("Optimization for all!" lecture series): the general p-norm e_hat with q = p/(p-1).
  - M. P. Kuznetsova, "An experimental study of modern curvature-aware optimization methods for
    training neural networks", graduation thesis, Lomonosov Moscow State University, 2023
    (eq. 22-27; tuned rho = 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optlab._src import tree as _tree
from optlab._src.common import check_bool, check_leaf_dtypes, check_number, skip_nonfinite

Params = Any
Numeric = float | int | jax.Array | np.ndarray

__all__ = ["SAMPerturbState", "sam", "sam_perturb", "sam_perturbation"]


class SAMPerturbState(NamedTuple):
    """State of the perturbation itself: none. The perturbation is recomputed from each
    gradient. (:func:`sam_perturb`'s state wraps it in a ``SkipNonFiniteState``.)"""


def _check_hyperparams(rho: Any, p: Any, eta: Any) -> float | None:
    """Validate rho, p, eta; return p as a float, or None when it is traced.

    Traced values (``optax.inject_hyperparams`` under ``jax.jit``) cannot be checked; they were
    checked when ``init`` built the transform from the concrete initial values.
    """
    check_number("rho", rho, low=0.0)
    check_number("p", p, low=1.0, allow_inf=True)
    check_number("eta", eta, low=0.0)
    return None if isinstance(p, jax.core.Tracer) else float(np.asarray(p))


def _e_hat(g: Params, rho: Numeric, p: Numeric, p_static: float | None) -> tuple[Params, jax.Array]:
    """e_hat_p(g) over the whole tree, in compute dtype, and whether g was finite.

    A zero gradient gives e_hat = 0; a non-finite one gives e_hat = 0 and ``ok = False``.
    e_hat is invariant to rescaling g, so every path works with u = g / max|g| (entries in
    [-1, 1], the largest of magnitude 1): no power or square of u can overflow, and the sums
    below are >= 1, so none underflows either, for any finite g (1e-30 or 1e30 alike).
    """
    leaves, treedef = jax.tree.flatten(g)
    leaves = [_tree.upcast(x) for x in leaves]
    m = _tree.global_max_abs(leaves)
    ok = jnp.isfinite(m)
    if p_static == math.inf:
        out = [jnp.where(ok, rho * jnp.sign(x), 0.0) for x in leaves]
        return jax.tree.unflatten(treedef, out), ok
    safe_m = jnp.where(ok & (m > 0), m, 1.0)
    if p_static == 2:
        us = [jnp.where(ok, x, 0.0) / safe_m for x in leaves]
        # tree.combine, not a Python sum of per-leaf sums: XLA would fuse that scalar chain
        # into every leaf's `u * scale` (a program quadratic in the number of leaves).
        norm = jnp.sqrt(_tree.combine([jnp.sum(jnp.square(u)) for u in us]))
        # Double `where` so a zero norm never divides: no NaN, no perturbation.
        scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
        return jax.tree.unflatten(treedef, [u * scale for u in us]), ok
    # General p (also the path for a traced p, which covers 2 and inf numerically too).
    # 1/q = 1 - 1/p; as a float expression this gives q = inf at p = 1 and q = 1 at p = inf.
    if p_static is not None:
        inv_p = 1.0 / p_static
        q = math.inf if p_static == 1 else 1.0 / (1.0 - inv_p)
    else:
        inv_p = 1.0 / p
        q = 1.0 / (1.0 - inv_p)
    # The max entries get |u| = 1 by comparison, not division: XLA may divide as a * (1/m),
    # which is not exactly 1, and at p = 1 (q = inf) only u == 1 survives u^q.
    us = [jnp.where(ok, jnp.abs(x), 0.0) for x in leaves]
    us = [jnp.where(a >= safe_m, 1.0, a / safe_m) for a in us]
    s = _tree.combine([jnp.sum(u**q) for u in us])  # as the p = 2 norm above
    denom = jnp.where(s > 0, s, 1.0) ** inv_p
    out = [
        rho * jnp.sign(jnp.where(ok, x, 0.0)) * u ** (q - 1.0) / denom
        for x, u in zip(leaves, us, strict=True)
    ]
    return jax.tree.unflatten(treedef, out), ok


def _perturbation(
    grads: Params,
    params: Params | None,
    rho: Numeric,
    p: Numeric,
    p_static: float | None,
    adaptive: bool,
    eta: Numeric,
) -> tuple[Params, jax.Array]:
    if not adaptive:
        return _e_hat(grads, rho, p, p_static)
    if params is None:
        raise ValueError("sam_perturbation: adaptive=True (ASAM) needs `params` to scale by |w|.")
    t = jax.tree.map(lambda w: jnp.abs(_tree.upcast(w)) + eta, params)
    # e_hat_p(T g) = e_hat_p(T g / max|g|): scaling g first keeps T g from overflowing.
    g_max = _tree.global_max_abs(grads)
    g_scale = jnp.where(jnp.isfinite(g_max) & (g_max > 0), g_max, 1.0)
    tg = jax.tree.map(lambda ti, gi: ti * (_tree.upcast(gi) / g_scale), t, grads)
    e_t, ok = _e_hat(tg, rho, p, p_static)
    ok = ok & jnp.isfinite(g_max)
    return jax.tree.map(lambda ti, ei: jnp.where(ok, ti * ei, 0.0), t, e_t), ok


def sam_perturbation(
    grads: Params,
    params: Params | None = None,
    *,
    rho: Numeric = 0.05,
    p: Numeric = 2,
    adaptive: bool = False,
    eta: Numeric = 0.01,
) -> tuple[Params, jax.Array]:
    """The SAM / ASAM ascent step e_hat for gradient ``grads`` (see the module docstring).

    Args:
      grads: the gradient tree g at ``params``.
      params: the weights w; needed only when ``adaptive``.
      rho: radius of the p-norm ball, >= 0.
      p: the norm, in [1, inf].
      adaptive: ASAM: measure the ball in coordinates ``T_w^{-1} e``, ``T_w = |w| + eta``.
      eta: ASAM's offset, >= 0 (keeps zero weights perturbable).

    Returns:
      ``(e_hat, ok)``: e_hat with the structure of ``grads`` (in at least float32), and a
      scalar bool, False when ``grads`` (or T_w) has a non-finite entry, in which case e_hat is
      all zeros. Any finite gradient, however large or small, gives ``||e_hat||_p = rho``.

    Example:
      >>> import jax.numpy as jnp
      >>> e, ok = sam_perturbation({"w": jnp.array([3.0, 4.0])}, rho=0.5)
      >>> [round(x, 6) for x in e["w"].tolist()], bool(ok)
      ([0.3, 0.4], True)
    """
    p_static = _check_hyperparams(rho, p, eta)
    check_bool("adaptive", adaptive)
    return _perturbation(grads, params, rho, p, p_static, adaptive, eta)


def _sam_perturb_raw(
    rho: Numeric, p: Numeric, adaptive: bool, eta: Numeric, transform: str
) -> optax.GradientTransformationExtraArgs:
    """The perturbation without the NaN/Inf guard (:func:`sam_perturb` and :func:`sam` add it,
    once around everything)."""
    p_static = _check_hyperparams(rho, p, eta)

    def init_fn(params: Params) -> SAMPerturbState:
        check_leaf_dtypes(params, transform)
        return SAMPerturbState()

    def update_fn(
        updates: Params,
        state: SAMPerturbState,
        params: Params | None = None,
        *,
        grad_fn: Callable[[Params], Params] | None = None,
        **extra_args: Any,
    ) -> tuple[Params, SAMPerturbState]:
        del extra_args  # other transforms' extra arguments (chain forwards all of them)
        if grad_fn is None:
            raise ValueError(
                "sam_perturb: update() needs the extra argument `grad_fn`, a function "
                "params -> gradient of the same batch's loss, e.g. "
                "tx.update(grads, state, params, grad_fn=jax.grad(lambda p: loss(p, batch)))."
            )
        if params is None:
            raise ValueError(
                "sam_perturb: update() needs `params` (the current weights) to evaluate "
                "grad_fn at params + e_hat: tx.update(grads, state, params, grad_fn=...)."
            )
        # The guard runs this only for a finite gradient, and e_hat is finite for every finite
        # gradient (it is computed from g / max|g|), so `ok` carries no information here. A
        # gradient that is not finite at the perturbed point reaches the guard's update check.
        e_hat, _ = _perturbation(updates, params, rho, p, p_static, adaptive, eta)
        adv_grads = grad_fn(_tree.add(params, e_hat))
        if jax.tree.structure(adv_grads) != jax.tree.structure(updates):
            raise ValueError(
                "sam_perturb: grad_fn(params) must return a tree with the structure of the "
                f"gradient; got {jax.tree.structure(adv_grads)}, expected "
                f"{jax.tree.structure(updates)}."
            )
        out = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), adv_grads, updates)
        return out, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam_perturb(
    rho: Numeric = 0.05,
    *,
    p: Numeric = 2,
    adaptive: bool = False,
    eta: Numeric = 0.01,
) -> optax.GradientTransformationExtraArgs:
    """SAM's gradient: grad L(w + e_hat(w)), as a transform to put first in an optax chain.

    ``update(updates, state, params, *, grad_fn)`` reads the incoming gradient g = grad L(w)
    from ``updates``, computes::

        e_hat = rho * sign(g) |g|^(q-1) / (||g||_q^q)^(1/p),   1/p + 1/q = 1

    over the whole parameter tree (ASAM: ``e_hat = T_w e_hat_p(T_w g)``, ``T_w = |w| + eta``), and
    returns ``grad_fn(params + e_hat)``. The next transforms in the chain (sgd, adamw, muon,
    shampoo...) then turn that gradient into the step, as in Foret et al. (2021), Algorithm 1:
    w <- w - lr * grad L(w + e_hat). :func:`sam` builds that chain for you.

    Edge cases:
      * zero gradient: e_hat = 0 (no division by zero, no NaN); grad_fn(params) is returned.
      * any finite gradient, from 1e-30 to 1e30: e_hat has the right direction and
        ``||e_hat||_p = rho`` (it is computed from g / max|g|, so nothing over- or underflows).
      * NaN/Inf (optlab's one policy): a non-finite incoming gradient, or a non-finite
        gradient at the perturbed point, skips the step: the output is zero and
        ``state.skipped_steps`` grows by one (``grad_fn`` is not evaluated for a non-finite
        incoming gradient). In a chain of your own the transforms after ``sam_perturb``
        still run on that zero gradient (a momentum decays, a schedule advances); wrap the
        whole chain in ``optlab.skip_nonfinite`` (what :func:`sam` does) to
        freeze them too.

    Composition notes:
      * Put it first: it reads the raw gradient and replaces it by ``grad_fn``'s.
      * ``grad_fn(params) -> grads`` must return a tree like ``updates``; close over the
        batch so both gradients see the same data. It is called once per update.
      * ``optax.inject_hyperparams(sam_perturb)(rho=...)``: ``rho`` and ``eta`` may be jax
        scalars. ``p`` may be too (the general formula then runs for every p), but
        ``static_args=("p",)`` keeps the direct p = 2 / p = inf paths.
      * Gradient accumulation: ``optax.chain(sam_perturb(rho),
        optax.MultiSteps(base, k).gradient_transformation())`` perturbs per micro-batch
        (m-sharpness, Foret et al. sec. 4.1) and averages the SAM gradients.
        ``optax.MultiSteps(sam(base, rho=rho), k)`` instead perturbs with the mean
        gradient of the k micro-batches but returns only the last micro-batch's perturbed
        gradient (and optax 0.2.8 evaluates ``grad_fn`` on every micro-step).
      * BatchNorm / other mutable model state (Flax NNX): the perturbed forward pass must not
        update running statistics. Make ``grad_fn`` pure: close over the graphdef and the
        current non-parameter state, and drop the state it produces::

            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            def loss(p, rest, batch):
                m = nnx.merge(graphdef, p, rest, copy=True)   # copy: pure under jax.grad
                out = loss_of(m(batch["x"]), batch["y"])
                return out, nnx.state(m, nnx.Not(nnx.Param))      # new batch stats
            (l, new_rest), g = jax.value_and_grad(loss, has_aux=True)(params, rest, batch)
            grad_fn = jax.grad(lambda p: loss(p, rest, batch)[0])  # its stats are dropped
            updates, opt_state = tx.update(g, opt_state, params, grad_fn=grad_fn)
            rest = new_rest                                       # stats from the clean pass

        ``examples/sam_flatness.py`` runs this with a BatchNorm MLP.

    Args:
      rho: radius of the perturbation ball, a finite number >= 0 (0 gives plain gradients at
        the cost of one extra gradient). Foret et al. use 0.05; Kuznetsova (2023)'s tuned value
        is 0.1.
      p: the norm of the ball, 1 <= p <= inf. p = 2 is SAM's default and empirically best.
      adaptive: ASAM's scale-invariant ball (Kwon et al., 2021), which takes a larger rho
        (0.5 to 2 in the paper).
      eta: ASAM's offset in ``T_w = |w| + eta``, >= 0 (0.01 in the paper). Unused otherwise.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      ``SkipNonFiniteState(inner=SAMPerturbState(), skipped_steps)``.

    Raises:
      ValueError: at construction, for rho < 0, p < 1, eta < 0, NaN, None or non-numeric
        values; at ``init``, for a parameter leaf that is not real floating (a complex leaf
        would get the wrong radius); at trace time of ``update``, when ``grad_fn`` or
        ``params`` is missing, or when ``grad_fn`` returns a tree of another structure.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from optlab import sam_perturb
      >>> loss = lambda w: jnp.sum(w ** 4)
      >>> tx = optax.chain(sam_perturb(rho=0.05), optax.sgd(0.1))
      >>> w = jnp.array([1.0, -2.0]); state = tx.init(w)
      >>> @jax.jit
      ... def step(w, state):
      ...     g = jax.grad(loss)(w)
      ...     u, state = tx.update(g, state, w, grad_fn=jax.grad(loss))
      ...     return optax.apply_updates(w, u), state
      >>> w, state = step(w, state)
      >>> w.shape
      (2,)
    """
    check_bool("adaptive", adaptive)
    # branchless: the second gradient runs at half speed inside lax.cond on CPU.
    return skip_nonfinite(
        _sam_perturb_raw(rho, p, adaptive, eta, "optlab.sam_perturb"), branchless=True
    )


def sam(
    base_optimizer: optax.GradientTransformation,
    *,
    rho: Numeric = 0.05,
    p: Numeric = 2,
    adaptive: bool = False,
    eta: Numeric = 0.01,
) -> optax.GradientTransformationExtraArgs:
    """SAM around any optax optimizer, under optlab's NaN/Inf policy.

    ``skip_nonfinite(optax.chain(perturbation, base_optimizer))``: :func:`sam_perturb`'s
    perturbation followed by ``base_optimizer``, with one guard around both, so a step whose
    gradient is not finite at ``w`` or at ``w + e_hat`` (or whose base-optimizer state or update
    would not be) changes nothing: zero update, the base optimizer's state unchanged,
    ``state.skipped_steps`` + 1. The update needs ``params`` and the extra argument
    ``grad_fn``; see :func:`sam_perturb` for the arguments.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from optlab import sam
      >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> tx = sam(optax.sgd(0.1), rho=0.05)
      >>> w = jnp.zeros(3); state = tx.init(w)
      >>> u, state = tx.update(jax.grad(loss)(w), state, w, grad_fn=jax.grad(loss))
      >>> [round(x, 4) for x in optax.apply_updates(w, u).tolist()]
      [0.2058, 0.2058, 0.2058]
    """
    if not (
        isinstance(base_optimizer, optax.GradientTransformation)
        or (
            callable(getattr(base_optimizer, "init", None))
            and callable(getattr(base_optimizer, "update", None))
        )
    ):
        raise ValueError(
            "base_optimizer must be an optax.GradientTransformation (e.g. "
            f"optax.sgd(0.1)), got {base_optimizer!r}"
        )
    check_bool("adaptive", adaptive)
    # branchless: the second gradient runs at half speed inside lax.cond on CPU (60 vs 31 ms
    # per LeNet-5 step); selecting the base optimizer's state costs one pass over it.
    return skip_nonfinite(
        optax.chain(_sam_perturb_raw(rho, p, adaptive, eta, "optlab.sam"), base_optimizer),
        branchless=True,
    )
