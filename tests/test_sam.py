"""Tests for optlab.sam: e_hat against numpy references, one exact SAM step, edge cases and
composition with optax (chain, jit, inject_hyperparams, MultiSteps, apply_if_finite)."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optlab._src import tree as _tree
from optlab._src.common import SkipNonFiniteState
from optlab._src.sam import SAMPerturbState, sam, sam_perturb, sam_perturbation


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _random_tree(rng: np.random.Generator, dtype=np.float64) -> dict:
    return {
        "dense": {
            "w": rng.normal(size=(3, 4)).astype(dtype),
            "b": rng.normal(size=4).astype(dtype),
        },
        "scale": rng.normal(size=()).astype(dtype),
    }


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _e_ref(
    g: np.ndarray, rho: float, p: float, w: np.ndarray | None = None, eta: float = 0.01
) -> np.ndarray:
    """Independent float64 reference: eq. 2 of Foret et al. (ASAM: T e_hat(T g))."""
    t = np.ones_like(g) if w is None else np.abs(w) + eta
    g = t * g
    if p == math.inf:
        e = rho * np.sign(g)
    elif p == 1:
        top = np.abs(g) == np.abs(g).max()
        e = rho * np.sign(g) * top / top.sum()
    else:
        q = p / (p - 1)
        e = rho * np.sign(g) * np.abs(g) ** (q - 1) / np.sum(np.abs(g) ** q) ** (1 / p)
    return t * e


def _identity_grad_fn(params):
    # grad_fn(w) = w, so sam_perturb's output is params + e_hat: reads e_hat off the transform.
    return params


@pytest.mark.parametrize("p", [2, math.inf, 1.5, 3.0, 1])
@pytest.mark.parametrize("adaptive", [False, True])
def test_e_hat_matches_numpy_reference(x64, p, adaptive):
    rng = np.random.default_rng(0)
    g, w = _random_tree(rng), _random_tree(rng)
    rho = 0.07
    tx = sam_perturb(rho=rho, p=p, adaptive=adaptive)
    out, _ = jax.jit(lambda g, s, w: tx.update(g, s, w, grad_fn=_identity_grad_fn))(
        g, tx.init(w), w
    )
    e = _flat(out) - _flat(w)
    expected = _e_ref(_flat(g), rho, p, _flat(w) if adaptive else None)
    np.testing.assert_allclose(e, expected, rtol=1e-10, atol=1e-14)
    # The direct helper agrees with the transform.
    e_direct, ok = sam_perturbation(g, w, rho=rho, p=p, adaptive=adaptive)
    assert bool(ok)
    np.testing.assert_allclose(_flat(e_direct), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("p", [1.2, 1.5, 2, 4.0, math.inf])
def test_e_hat_solves_the_linearized_problem(x64, p):
    # ||e||_p = rho and <e, g> = rho ||g||_q (Hoelder is tight): e maximizes e.g on the ball.
    g = np.random.default_rng(1).normal(size=50)
    rho = 0.3
    e = np.asarray(sam_perturbation(jnp.asarray(g), rho=rho, p=p)[0])
    q = 1.0 if p == math.inf else p / (p - 1)
    np.testing.assert_allclose(np.linalg.norm(e, ord=p), rho, rtol=1e-10)
    np.testing.assert_allclose(e @ g, rho * np.linalg.norm(g, ord=q), rtol=1e-10)


def test_p1_splits_over_ties():
    e, _ = sam_perturbation(jnp.array([1.0, -3.0, 3.0, 0.5]), rho=1.0, p=1)
    np.testing.assert_allclose(np.asarray(e), [0.0, -0.5, 0.5, 0.0])


def test_general_p_has_no_overflow_in_float32():
    # |g|^q with q = 11 overflows float32 for |g| = 1e4; e_hat is scale invariant.
    g = jnp.array([1e4, -2e4, 5e3], jnp.float32)
    e = np.asarray(sam_perturbation(g, rho=1.0, p=1.1)[0], np.float64)
    np.testing.assert_allclose(e, _e_ref(np.asarray(g, np.float64), 1.0, 1.1), rtol=1e-5)


@pytest.mark.parametrize("p,adaptive", [(2, False), (math.inf, False), (2, True), (1.5, True)])
def test_one_sam_sgd_step_on_a_quadratic_is_exact(x64, p, adaptive):
    # L(w) = 0.5 w^T A w - b^T w over a tree; w+ = w - lr * grad L(w + e_hat), in numpy.
    rng = np.random.default_rng(2)
    params = _random_tree(rng)
    flat0, unravel = jax.flatten_util.ravel_pytree(params)
    n = flat0.size
    m = rng.normal(size=(n, n))
    a, b = m @ m.T / n + np.eye(n), rng.normal(size=n)
    lr, rho = 0.1, 0.05

    def loss(tree):
        w = jax.flatten_util.ravel_pytree(tree)[0]
        return 0.5 * w @ (a @ w) - b @ w

    tx = optax.chain(sam_perturb(rho=rho, p=p, adaptive=adaptive), optax.sgd(lr))

    @jax.jit
    def step(params, state):
        u, state = tx.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
        return optax.apply_updates(params, u), state

    new, _ = step(params, tx.init(params))
    w = np.asarray(flat0)
    g = a @ w - b
    e = _e_ref(g, rho, p, w if adaptive else None)
    expected = w - lr * (a @ (w + e) - b)
    np.testing.assert_allclose(_flat(new), expected, rtol=1e-12, atol=1e-12)


def test_one_step_float32_matches_float64_reference():
    rng = np.random.default_rng(3)
    w = rng.normal(size=8)
    a = np.diag(np.arange(1.0, 9.0))
    lr, rho = 0.1, 0.05

    def loss(w):
        return 0.5 * w @ (jnp.asarray(a, jnp.float32) @ w)

    tx = sam(optax.sgd(lr), rho=rho)
    w32 = jnp.asarray(w, jnp.float32)
    u, _ = tx.update(jax.grad(loss)(w32), tx.init(w32), w32, grad_fn=jax.grad(loss))
    g = a @ w
    expected = w - lr * (a @ (w + rho * g / np.linalg.norm(g)))
    np.testing.assert_allclose(np.asarray(optax.apply_updates(w32, u)), expected, rtol=2e-6)


@pytest.mark.parametrize("p", [2, math.inf, 1.5, 1])
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradient_gives_no_perturbation_and_no_nan(p, adaptive):
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = sam_perturb(rho=0.1, p=p, adaptive=adaptive)
    out, _ = jax.jit(lambda g, s, w: tx.update(g, s, w, grad_fn=_identity_grad_fn))(
        zeros, tx.init(params), params
    )
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_non_finite_gradient_is_skipped_with_zero_output_and_counted():
    params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(0.5)}
    good = {"w": jnp.array([1.0, -1.0, 3.0]), "b": jnp.array(1.0)}
    calls = []

    def grad_fn(p):  # finite everywhere: the NaN must come from the incoming gradient
        calls.append(1)
        return jax.tree.map(lambda x: 2.0 * x, p)

    for bad_value in (jnp.nan, jnp.inf):
        bad = {**good, "w": good["w"].at[1].set(bad_value)}
        for p in (2, math.inf, 1.5):
            tx = sam_perturb(rho=0.1, p=p)
            out, state = jax.jit(
                lambda g, tx=tx: tx.update(g, tx.init(params), params, grad_fn=grad_fn)
            )(bad)
            assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(out))
            assert isinstance(state, SkipNonFiniteState) and int(state.skipped_steps) == 1

        # sam(base): one guard around the perturbation and the base optimizer.
        opt = sam(optax.sgd(0.1, momentum=0.9), rho=0.1)
        update = jax.jit(lambda g, s, opt=opt: opt.update(g, s, params, grad_fn=grad_fn))
        _, state = update(good, opt.init(params))
        u, new_state = update(bad, state)
        assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
        assert int(new_state.skipped_steps) == 1
        for x, y in zip(
            jax.tree.leaves(new_state.inner), jax.tree.leaves(state.inner), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_non_finite_gradient_at_the_perturbed_point_is_skipped_and_base_state_kept():
    params = {"w": jnp.array([1.0, 2.0, 3.0])}
    g = {"w": jnp.array([0.5, -1.0, 2.0])}

    def grad_fn(p):  # NaN at w + e_hat only (the perturbed point), finite at w
        return {"w": jnp.where(jnp.all(p["w"] == params["w"]), 2.0 * p["w"], jnp.nan)}

    for opt in (sam(optax.sgd(0.1, momentum=0.9), rho=0.1), sam_perturb(rho=0.1)):
        state0 = opt.init(params)
        state = jax.tree.map(
            lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state0
        )  # a non-trivial momentum to keep
        u, new_state = jax.jit(lambda g, s, opt=opt: opt.update(g, s, params, grad_fn=grad_fn))(
            g, state
        )
        assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
        assert int(new_state.skipped_steps) == 1
        for x, y in zip(
            jax.tree.leaves(new_state.inner), jax.tree.leaves(state.inner), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tree_global_norms_match_numpy():
    tree = {"a": jnp.array([[3.0, -4.0]]), "b": jnp.array([1.0, -12.0], jnp.bfloat16)}
    flat = np.array([3.0, -4.0, 1.0, -12.0])
    for order in (1, 2, 3.0, math.inf):
        np.testing.assert_allclose(
            float(_tree.global_norm(tree, order)), np.linalg.norm(flat, order), rtol=1e-6
        )
    assert float(_tree.global_norm({}, 2)) == 0.0
    assert _tree.global_norm(tree, 2).dtype == jnp.float32  # bfloat16 leaves reduce in f32


def test_inf_gradient_also_passes_through():
    g = jnp.array([jnp.inf, 1.0])
    for p in (2, math.inf, 1.5):
        e, ok = sam_perturbation(g, rho=0.1, p=p)
        assert not bool(ok)
        np.testing.assert_array_equal(np.asarray(e), [0.0, 0.0])


def test_missing_grad_fn_or_params_raises_at_trace_time():
    params = jnp.ones(3)
    tx = optax.chain(sam_perturb(0.05), optax.sgd(0.1))
    state = tx.init(params)
    with pytest.raises(ValueError, match="grad_fn"):
        jax.jit(lambda g, s, p: tx.update(g, s, p))(params, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None, grad_fn=_identity_grad_fn)


def test_grad_fn_with_wrong_structure_raises():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    tx = sam_perturb(0.05)
    with pytest.raises(ValueError, match="structure"):
        tx.update(params, tx.init(params), params, grad_fn=lambda p: p["a"])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": math.inf}, "rho"),
        ({"rho": math.nan}, "rho"),
        ({"rho": "0.1"}, "rho"),
        ({"rho": True}, "rho"),
        ({"rho": np.ones(2)}, "rho"),
        ({"p": 0.5}, "p"),
        ({"p": 0}, "p"),
        ({"p": math.nan}, "p"),
        ({"p": "inf"}, "p"),
        ({"eta": -1.0}, "eta"),
        ({"adaptive": "yes"}, "adaptive"),
        ({"rho": None}, "rho"),
        ({"p": None}, "p"),
        ({"eta": None}, "eta"),
        ({"eta": math.nan}, "eta"),
        ({"adaptive": None}, "adaptive"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        sam_perturb(**kwargs)
    with pytest.raises(ValueError, match=rf"^{name} must"):
        sam(optax.sgd(0.1), **kwargs)


def test_accepts_numpy_and_jax_scalars():
    for rho in (np.float32(0.1), jnp.asarray(0.1), 0, 1):
        sam_perturb(rho=rho, p=jnp.asarray(2.0))


def test_state_is_the_policy_counter_around_an_empty_namedtuple():
    state = sam_perturb().init({"w": jnp.ones(3)})
    assert isinstance(state, SkipNonFiniteState) and state.inner == SAMPerturbState()
    assert int(state.skipped_steps) == 0


def test_chain_under_jit_with_adamw_does_not_retrace():
    def loss(p, x):
        return jnp.mean((x @ p["w"] + p["b"]) ** 2)

    params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    tx = optax.chain(sam_perturb(0.05), optax.adamw(1e-2))
    traces = []

    @jax.jit
    def step(params, state, x):
        traces.append(1)
        g = jax.grad(loss)(params, x)
        u, state = tx.update(g, state, params, grad_fn=jax.grad(lambda p: loss(p, x)))
        return optax.apply_updates(params, u), state

    state = tx.init(params)
    x = jnp.ones((8, 4))
    for i in range(3):
        params, state = step(params, state, x * (i + 1))
    assert len(traces) == 1
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params))


def test_inject_hyperparams_rho_is_injectable_and_matches_fixed_rho():
    def loss(w):
        return jnp.sum(jnp.cos(w) * jnp.arange(1.0, 4.0))

    w = jnp.array([0.3, -0.2, 1.0])
    inj = optax.inject_hyperparams(sam_perturb)(rho=0.05)  # p, eta become traced too

    @jax.jit
    def run(state):
        return inj.update(jax.grad(loss)(w), state, w, grad_fn=jax.grad(loss))

    state = inj.init(w)
    state.hyperparams["rho"] = jnp.asarray(0.2)
    out, state = run(state)
    ref = sam_perturb(rho=0.2)
    want, _ = ref.update(jax.grad(loss)(w), ref.init(w), w, grad_fn=jax.grad(loss))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-6)
    assert float(state.hyperparams["rho"]) == pytest.approx(0.2)

    # static p keeps the direct paths; traced p = inf agrees with the direct p = inf path.
    inj_static = optax.inject_hyperparams(sam_perturb, static_args=("p",))(rho=0.1, p=2)
    inj_inf = optax.inject_hyperparams(sam_perturb)(rho=0.1, p=math.inf)
    out_inf, _ = jax.jit(
        lambda s: inj_inf.update(jax.grad(loss)(w), s, w, grad_fn=_identity_grad_fn)
    )(inj_inf.init(w))
    np.testing.assert_allclose(
        np.asarray(out_inf - w), 0.1 * np.sign(np.asarray(jax.grad(loss)(w))), rtol=1e-5
    )
    out_s, _ = jax.jit(
        lambda s: inj_static.update(jax.grad(loss)(w), s, w, grad_fn=jax.grad(loss))
    )(inj_static.init(w))
    np.testing.assert_allclose(
        np.asarray(out_s),
        np.asarray(
            sam_perturb(0.1).update(
                jax.grad(loss)(w), sam_perturb(0.1).init(w), w, grad_fn=jax.grad(loss)
            )[0]
        ),
        rtol=1e-6,
    )


def test_inject_hyperparams_rejects_bad_rho_at_init():
    with pytest.raises(ValueError, match="^rho must"):
        optax.inject_hyperparams(sam_perturb)(rho=-1.0).init(jnp.ones(2))


def test_multisteps_composition_averages_per_microbatch_sam_gradients():
    def loss(w, x):
        return jnp.sum((w * x) ** 2)

    w = jnp.array([1.0, -1.0, 0.5])
    xs = [jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, -1.0, 2.0])]
    rho, lr = 0.1, 0.1
    tx = optax.chain(sam_perturb(rho), optax.MultiSteps(optax.sgd(lr), 2).gradient_transformation())
    state = tx.init(w)
    total = jnp.zeros_like(w)
    for x in xs:
        gf = jax.grad(lambda v, x=x: loss(v, x))
        u, state = jax.jit(lambda g, s, gf=gf: tx.update(g, s, w, grad_fn=gf))(gf(w), state)
        total = total + u
    sam_grads = []
    for x in xs:
        gf = jax.grad(lambda v, x=x: loss(v, x))
        e = rho * gf(w) / jnp.linalg.norm(gf(w))
        sam_grads.append(gf(w + e))
    np.testing.assert_allclose(
        np.asarray(total), -lr * np.mean(np.asarray(sam_grads), 0), rtol=1e-6
    )
    # The other nesting also runs (perturbs with the running mean gradient).
    outer = optax.MultiSteps(sam(optax.sgd(lr), rho=rho), 2)
    s = outer.init(w)
    gf = jax.grad(lambda v: loss(v, xs[0]))
    for _ in range(2):
        u, s = outer.update(gf(w), s, w, grad_fn=gf)
    assert bool(jnp.all(jnp.isfinite(u)))


def test_other_extra_args_are_tolerated_and_low_precision_keeps_dtype():
    params = {"w": jnp.array([1.0, -2.0], jnp.bfloat16)}
    tx = sam(optax.sgd(0.1), rho=0.05)
    g = {"w": jnp.array([0.5, 0.25], jnp.bfloat16)}
    u, _ = tx.update(g, tx.init(params), params, grad_fn=_identity_grad_fn, value=jnp.ones(()))
    assert u["w"].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(u["w"].astype(jnp.float32))))


def test_batchnorm_pattern_leaves_running_stats_to_the_clean_pass():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)
            self.out = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.bn(self.lin(x))))

    graphdef, params, rest = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (16, 3)) + 2.0  # off-centre: kernel moves mean
    tx = sam(optax.sgd(0.1), rho=2.0)

    def loss(p, rest):
        m = nnx.merge(graphdef, p, rest, copy=True)  # fresh Variables: safe under jax.grad
        return jnp.mean((m(x) - 1.0) ** 2), nnx.state(m, nnx.Not(nnx.Param))

    @jax.jit
    def step(params, rest, opt_state):
        (_, new_rest), g = jax.value_and_grad(loss, has_aux=True)(params, rest)
        grad_fn = jax.grad(lambda p: loss(p, rest)[0])  # perturbed pass: stats discarded
        u, opt_state = tx.update(g, opt_state, params, grad_fn=grad_fn)
        # What a stateful perturbed forward pass would have left in the running stats:
        e_hat, _ = sam_perturbation(g, rho=2.0)
        _, perturbed = loss(jax.tree.map(lambda w, e: w + e, params, e_hat), rest)
        return optax.apply_updates(params, u), new_rest, perturbed, loss(params, rest)[1]

    _, new_rest, perturbed, clean = step(params, rest, tx.init(params))
    for a, b in zip(jax.tree.leaves(new_rest), jax.tree.leaves(clean), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(new_rest), jax.tree.leaves(perturbed), strict=True)
    )
    assert diff > 1e-3  # the test would notice stats from the perturbed pass


# -- extreme but finite gradients ------------------------------------------------------------------
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30])
@pytest.mark.parametrize("p", [2, 1.5, 3.0, math.inf, 1])
@pytest.mark.parametrize("adaptive", [False, True])
def test_direction_and_radius_for_tiny_and_huge_gradients(magnitude, p, adaptive):
    # e_hat does not depend on the scale of g: float32 gradients from 1e-30 to 1e30 give the
    # float64 e_hat of the unscaled gradient to float32 round-off (a few ulps per operation,
    # times the |u|^(q-1) power: rtol 1e-5 for q <= 3), and ||e||_p = rho (ASAM: in T^-1 e).
    rng = np.random.default_rng(5)
    g = rng.normal(size=12)
    w = rng.normal(size=12)
    rho = 0.05
    g32 = jnp.asarray(g * magnitude, jnp.float32)
    e, ok = sam_perturbation(g32, jnp.asarray(w, jnp.float32), rho=rho, p=p, adaptive=adaptive)
    assert bool(ok)
    w32 = np.asarray(jnp.asarray(w, jnp.float32), np.float64)  # the weights T is built from
    # The float64 reference of the gradient actually given (g rounded to float32, unscaled).
    g_given = np.asarray(g32, np.float64) / magnitude
    expected = _e_ref(g_given, rho, p, w32 if adaptive else None)
    np.testing.assert_allclose(np.asarray(e, np.float64), expected, rtol=1e-5, atol=1e-7 * rho)
    t = np.abs(w32) + 0.01 if adaptive else np.ones(12)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(e, np.float64) / t, ord=p), rho, rtol=1e-5)


def test_sam_step_after_a_huge_gradient_is_the_sam_step_of_its_direction():
    # The perturbation of a 1e30 gradient is that of its direction; the base optimizer then
    # sees grad_fn at w + e_hat (finite), so the step is not skipped.
    w = jnp.array([1.0, -2.0, 0.5])

    def loss(v):
        return 0.5 * jnp.sum(jnp.arange(1.0, 4.0) * v**2)

    g = jax.grad(loss)(w)
    tx = sam(optax.sgd(0.1), rho=0.05)
    u_ref, _ = tx.update(g, tx.init(w), w, grad_fn=jax.grad(loss))
    u, state = tx.update(g * 1e30, tx.init(w), w, grad_fn=jax.grad(loss))
    assert int(state.skipped_steps) == 0
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=1e-6)


# -- dtypes, shapes, signatures --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32])
def test_non_floating_parameters_are_rejected_at_init_naming_the_leaf(dtype):
    params = {"w": jnp.ones(3), "z": jnp.ones(2, dtype)}
    with pytest.raises(ValueError, match=r"optlab.sam_perturb supports real floating.*\['z'\]"):
        sam_perturb(0.05).init(params)
    with pytest.raises(ValueError, match=r"optlab.sam supports real floating.*\['z'\]"):
        sam(optax.sgd(0.1)).init(params)


def test_zero_size_leaves_get_zero_size_gradients():
    params = {"w": jnp.array([1.0, -2.0]), "empty": jnp.zeros((0, 3))}
    g = {"w": jnp.array([0.3, 0.4]), "empty": jnp.zeros((0, 3))}
    tx = sam_perturb(0.5)
    out, state = jax.jit(lambda g, s: tx.update(g, s, params, grad_fn=_identity_grad_fn))(
        g, tx.init(params)
    )
    assert out["empty"].shape == (0, 3) and int(state.skipped_steps) == 0
    np.testing.assert_allclose(np.asarray(out["w"]), [1.3, -1.6], rtol=1e-6)  # w + 0.5 g/|g|


@pytest.mark.parametrize(("factory", "first"), [(sam_perturb, 1), (sam, 1)])
def test_options_after_the_first_argument_are_keyword_only(factory, first):
    params = list(inspect.signature(factory).parameters.values())
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[first:]), params


@pytest.mark.parametrize("base", [None, "sgd", optax.sgd])
def test_sam_rejects_a_base_optimizer_that_is_not_a_transform(base):
    with pytest.raises(ValueError, match="^base_optimizer must be an optax"):
        sam(base)


def test_sam_under_inject_hyperparams_with_defaults_and_unknown_extra_args():
    def loss(v):
        return jnp.sum(jnp.cos(v) * jnp.arange(1.0, 4.0))

    w = jnp.array([0.3, -0.2, 1.0])
    base = optax.sgd(0.1, momentum=0.9)
    injected = optax.inject_hyperparams(sam)(base_optimizer=base, rho=0.2)
    plain = sam(base, rho=0.2)
    state = injected.init(w)
    assert {"rho", "p", "eta"} <= set(state.hyperparams)
    u, state = jax.jit(
        lambda s: injected.update(jax.grad(loss)(w), s, w, grad_fn=jax.grad(loss), unknown_extra=1)
    )(state)
    ref, _ = plain.update(
        jax.grad(loss)(w), plain.init(w), w, grad_fn=jax.grad(loss), unknown_extra=1
    )
    np.testing.assert_allclose(np.asarray(u), np.asarray(ref), rtol=1e-6)


@pytest.mark.parametrize("p", [2, 3.0, math.inf])
def test_perturbation_program_grows_linearly_with_leaves(p):
    """Compile time (issue 18): e_hat's global reductions are one reduction over the
    concatenated leaves. A Python sum of per-leaf scalars was fused, duplicated, into every
    leaf's output (the program grew quadratically: 2.9-3.2x instructions for 2x the leaves,
    measured). Linear growth gives at most 2x plus the constant part's share, below 2.2x."""

    def instructions(n: int) -> int:
        tree = {f"w{i}": jax.ShapeDtypeStruct((64,), jnp.float32) for i in range(n)}
        text = jax.jit(lambda g: sam_perturbation(g, rho=0.1, p=p)).lower(tree).compile().as_text()
        return sum(1 for line in text.splitlines() if " = " in line)

    assert instructions(32) <= 2.2 * instructions(16)
