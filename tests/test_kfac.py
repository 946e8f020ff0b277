"""kfac_value_and_grad / scale_by_kfac / kfac against float64 numpy transcriptions of K-FAC's
definitions (Martens & Grosse 2015; KFC, Grosse & Martens 2016; Eschenhagen et al. 2023), and
their errors, jit and nnx.Optimizer behaviour.

Tolerances. Factors are float32 sums of ``R`` products; their relative error is at most about
``R u`` (``u = 6e-8``), ``< 1e-5`` for the ``R <= 150`` rows used here. Inverses come from a
float32 ``eigh``: relative error about ``kappa * d * u`` (``< 1e-5`` for the condition numbers
``kappa < 50`` of these factors). "Tiny damping" adds ridges ``r = pi sqrt(lambda)`` that move
``F^{-1} x`` by at most ``r / lambda_min(F)`` relatively; each test says what that is.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optlab
from optlab._src.kfac import KFACState, _leaf_path

RNG = np.random.default_rng(0)


def f64(x):
    return np.asarray(x, np.float64)


def leaves_by_path(tree):
    """``{"kernel": array, "layers/0/bias": array, ...}`` of an nnx.State or dict."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_leaf_path(p): f64(x) for p, x in flat}


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def rel(a, b):
    return float(np.linalg.norm(f64(a) - b) / np.linalg.norm(b))


def with_one(x):
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def kfac_update(model, x, y, loss, fisher, damping, key=0, **kwargs):
    """One scale_by_kfac step (precondition at once): the update, grads, curvature."""
    vg = optlab.kfac_value_and_grad(loss, fisher)
    _, grads, curvature = vg(model, x, y, key=jax.random.key(key))
    params = nnx.state(model, nnx.Param)
    tx = optlab.scale_by_kfac(damping=damping, precondition_every=1, **kwargs)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params, curvature=curvature)
    return leaves_by_path(updates), leaves_by_path(grads), curvature, state


# -- single dense layer, one output ----------------------------------------------------------------
@pytest.mark.parametrize("fisher", ["true", "empirical"])
@pytest.mark.parametrize("loss", ["sigmoid_cross_entropy", "squared_error"])
def test_one_output_update_is_parallel_to_a_inverse_grad(loss, fisher):
    # With one output G is a scalar, so K-FAC's update is (A + r I)^{-1} grad times a positive
    # number. A = mean [x;1][x;1]^T has lambda_min ~0.3 here; damping 1e-8 gives r = pi * 1e-4
    # (pi ~ 1..10): a relative change <= 3e-3, i.e. 1 - cos <= 5e-6, far below 1e-4.
    x = RNG.normal(size=(64, 5)).astype(np.float32)
    y = (RNG.random((64, 1)) < 0.5).astype(np.float32)
    model = nnx.Linear(5, 1, rngs=nnx.Rngs(1))
    u, g, curvature, _ = kfac_update(model, x, y, loss, fisher, damping=1e-8)
    a = with_one(f64(x))
    big_a = a.T @ a / len(a)
    np.testing.assert_allclose(curvature[""].a, big_a, rtol=1e-5, atol=1e-6)
    grad = np.concatenate([g["kernel"], g["bias"][None, :]])
    reference = np.linalg.solve(big_a + 1e-8 * np.eye(6), grad)
    update = np.concatenate([u["kernel"], u["bias"][None, :]])
    assert cosine(update, reference) > 0.9999


# -- dense layer, several outputs, empirical Fisher ------------------------------------------------
def test_multi_output_empirical_matches_numpy_definitions():
    # Squared error sum_k (z_k - y_k)^2: per-example g = 2 (z - y), full rank with 64 examples.
    x = RNG.normal(size=(64, 5)).astype(np.float32)
    y = RNG.normal(size=(64, 3)).astype(np.float32)
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(2))
    w, b = f64(model.kernel[...]), f64(model.bias[...])
    u, grads, curvature, _ = kfac_update(model, x, y, "squared_error", "empirical", damping=1e-12)
    a = with_one(f64(x))
    gs = 2.0 * (f64(x) @ w + b - f64(y))  # d loss_n / d s_n
    big_a = a.T @ a / 64
    big_g = gs.T @ gs / 64
    d_wbar = a.T @ gs / 64  # gradient of the mean loss, bias as the last row
    np.testing.assert_allclose(curvature[""].a, big_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curvature[""].g, big_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["kernel"], d_wbar[:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["bias"], d_wbar[5], rtol=1e-5, atol=1e-6)
    reference = np.linalg.solve(big_a, d_wbar) @ np.linalg.inv(big_g)
    update = np.concatenate([u["kernel"], u["bias"][None, :]])
    # Ridges pi * 1e-6 and 1e-6 / pi against lambda_min(A) ~0.3, lambda_min(G) ~1: < 1e-5.
    assert rel(update, reference) < 1e-4


def test_pi_damping_matches_the_formula():
    # A moderate damping: the exact factored Tikhonov formula of Martens & Grosse sec. 6.3.
    x = RNG.normal(size=(32, 4)).astype(np.float32)
    y = RNG.normal(size=(32, 3)).astype(np.float32)
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(3))
    lam = 0.1
    u, grads, curvature, _ = kfac_update(model, x, y, "squared_error", "empirical", damping=lam)
    big_a, big_g = f64(curvature[""].a), f64(curvature[""].g)
    pi = np.sqrt((np.trace(big_a) / 5) / (np.trace(big_g) / 3))
    d_wbar = np.concatenate([grads["kernel"], grads["bias"][None, :]])
    reference = np.linalg.solve(big_a + pi * np.sqrt(lam) * np.eye(5), d_wbar) @ np.linalg.inv(
        big_g + np.sqrt(lam) / pi * np.eye(3)
    )
    update = np.concatenate([u["kernel"], u["bias"][None, :]])
    assert rel(update, reference) < 1e-5


# -- convolutions: KFC by explicit im2col --------------------------------------------------------
class ConvNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 3, (3, 2), strides=(2, 1), padding="SAME", rngs=rngs)
        self.head = nnx.Linear(4 * 6 * 3, 2, rngs=rngs)

    def __call__(self, x):
        s = self.conv(x)
        return self.head(s.reshape(s.shape[0], -1))


def im2col(x, kh, kw, sh, sw):
    """SAME-padded patches ``[N, H', W', kh * kw * C]`` in the kernel's (kh, kw, C) order."""
    n, h, w, c = x.shape
    oh, ow = -(-h // sh), -(-w // sw)
    ph = max((oh - 1) * sh + kh - h, 0)
    pw = max((ow - 1) * sw + kw - w, 0)
    xp = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
    out = np.empty((n, oh, ow, kh * kw * c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :].reshape(n, -1)
    return out


def test_conv_factors_are_kfc_by_im2col():
    x = RNG.normal(size=(5, 7, 6, 2)).astype(np.float32)
    y = RNG.normal(size=(5, 2)).astype(np.float32)
    model = ConvNet(nnx.Rngs(4))
    _, _, curvature = optlab.kfac_value_and_grad("squared_error", "empirical")(model, x, y)
    wc = f64(model.conv.kernel[...]).reshape(-1, 3)
    bc = f64(model.conv.bias[...])
    v, c = f64(model.head.kernel[...]), f64(model.head.bias[...])
    patches = im2col(f64(x), 3, 2, 2, 1)  # [5, 4, 6, 12]
    s = patches @ wc + bc
    np.testing.assert_allclose(f64(model.conv(x)), s, rtol=1e-5, atol=1e-5)  # the im2col is right
    h = s.reshape(5, -1)
    dz = 2.0 * (h @ v + c - f64(y))  # d loss_n / d z_n
    ds = (dz @ v.T).reshape(s.shape)  # d loss_n / d s_{n, t}
    rows = with_one(patches.reshape(-1, 12))
    # KFC: Omega averaged over the 5 x 24 (example, location) pairs; Gamma summed over the
    # locations and averaged over the 5 examples (= num_cases).
    omega = rows.T @ rows / len(rows)
    gamma = ds.reshape(-1, 3).T @ ds.reshape(-1, 3) / 5
    np.testing.assert_allclose(curvature["conv"].a, omega, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curvature["conv"].g, gamma, rtol=1e-5, atol=1e-6)
    head_a = with_one(h)
    np.testing.assert_allclose(curvature["head"].a, head_a.T @ head_a / 5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(curvature["head"].g, dz.T @ dz / 5, rtol=1e-5, atol=1e-5)


# -- true Fisher ---------------------------------------------------------------------------------
def test_true_fisher_g_converges_to_the_exact_expectation():
    # For softmax cross-entropy g = p - onehot(y); with y ~ p, E[g g^T] = diag(p) - p p^T per
    # example. One key's G averages N single-sample estimates, so K keys average K N of them:
    # E||mean - exact||_F^2 = V / (K N), V the mean single-sample variance (computed exactly).
    n, d, c = 8, 3, 4
    x = RNG.normal(size=(n, d)).astype(np.float32)
    y = np.zeros(n, np.int32)
    model = nnx.Linear(d, c, rngs=nnx.Rngs(5))
    graphdef, state = nnx.split(model)
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "true")

    @jax.jit
    def g_of(keys):
        return jax.vmap(lambda k: vg(nnx.merge(graphdef, state), x, y, key=k)[2][""].g)(keys)

    z = f64(x) @ f64(model.kernel[...]) + f64(model.bias[...])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    exact = np.mean([np.diag(q) - np.outer(q, q) for q in p], axis=0)
    variance = 0.0
    for q in p:
        sigma = np.diag(q) - np.outer(q, q)
        for k in range(c):
            gk = q - np.eye(c)[k]
            variance += q[k] * np.sum((np.outer(gk, gk) - sigma) ** 2) / n
    samples = f64(g_of(jax.random.split(jax.random.key(0), 4096)))
    errors = {}
    for k in (64, 256, 1024, 4096):
        errors[k] = np.linalg.norm(samples[:k].mean(0) - exact)
        expected = np.sqrt(variance / (k * n))
        # Markov on err^2: P(err > 5 x its RMS) <= 4% per k; and not suspiciously small either
        # (err < RMS / 20 has probability ~1e-3 for a sum of many independent terms).
        assert expected / 20 < errors[k] < 5 * expected, (k, errors[k], expected)
    # The 1/sqrt(K) rate: 64x the samples, expected 8x smaller.
    assert errors[4096] < errors[64] / 2


# -- embeddings and weight sharing -----------------------------------------------------------------
class Tagger(nnx.Module):
    """Embedding, then one Linear applied at every position and called twice (shared)."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(7, 4, rngs=rngs)
        self.mix = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        h = jnp.tanh(self.mix(h))
        h = jnp.tanh(self.mix(h))
        return self.head(h)


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_embedding_and_shared_layer_factors(sharing):
    ids = RNG.integers(0, 7, size=(3, 5)).astype(np.int32)
    y = RNG.integers(0, 3, size=(3, 5)).astype(np.int32)
    model = Tagger(nnx.Rngs(6))
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical", sharing=sharing)
    _, _, curvature = vg(model, ids, y)
    # The references: forward and backward by hand in float64.
    e = f64(model.embed.embedding[...])
    wm, bm = f64(model.mix.kernel[...]), f64(model.mix.bias[...])
    wh, bh = f64(model.head.kernel[...]), f64(model.head.bias[...])
    a0 = e[ids]
    s1 = a0 @ wm + bm
    a1 = np.tanh(s1)
    s2 = a1 @ wm + bm
    a2 = np.tanh(s2)
    z = a2 @ wh + bh
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gz = p - np.eye(3)[y]  # d loss_{n,t} / d z_{n,t}
    g2 = (gz @ wh.T) * (1 - a2**2)
    g1 = (g2 @ wm.T) * (1 - a1**2)
    g0 = g1 @ wm.T  # d loss / d embedding output
    m = 15  # loss cases: 3 sequences x 5 positions
    freq = np.bincount(ids.ravel(), minlength=7) / 15
    np.testing.assert_allclose(curvature["embed"].a, freq, rtol=1e-6)
    np.testing.assert_allclose(
        curvature["embed"].g, g0.reshape(-1, 4).T @ g0.reshape(-1, 4) / m, rtol=1e-4, atol=1e-6
    )
    if sharing == "expand":
        rows_a = with_one(np.concatenate([a0.reshape(-1, 4), a1.reshape(-1, 4)]))
        rows_g = np.concatenate([g1.reshape(-1, 4), g2.reshape(-1, 4)])
        big_a = rows_a.T @ rows_a / len(rows_a)
    else:
        per_n_a = with_one(np.concatenate([a0, a1], axis=1).mean(axis=1))
        rows_g = np.concatenate([g1, g2], axis=1).sum(axis=1)
        big_a = per_n_a.T @ per_n_a / 3
    np.testing.assert_allclose(curvature["mix"].a, big_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curvature["mix"].g, rows_g.T @ rows_g / m, rtol=1e-4, atol=1e-7)


def test_embedding_update_uses_the_diagonal_input_factor():
    ids = RNG.integers(0, 7, size=(3, 5)).astype(np.int32)
    y = RNG.integers(0, 3, size=(3, 5)).astype(np.int32)
    model = Tagger(nnx.Rngs(7))
    lam = 0.05
    u, grads, curvature, _ = kfac_update(
        model, ids, y, "softmax_cross_entropy", "empirical", damping=lam
    )
    a, g = f64(curvature["embed"].a), f64(curvature["embed"].g)
    pi = np.sqrt(np.mean(a) / (np.trace(g) / 4))
    reference = (grads["embed/embedding"] / (a + pi * np.sqrt(lam))[:, None]) @ np.linalg.inv(
        g + np.sqrt(lam) / pi * np.eye(4)
    )
    assert rel(u["embed/embedding"], reference) < 1e-5


# -- the transform: moving averages, schedule, diagonal rule, clipping -----------------------------
def dense_problem(seed=0, n=32):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.normal(size=(n, 2)).astype(np.float32),
    )


def test_factor_averages_and_refresh_schedule():
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(8))
    params = nnx.state(model, nnx.Param)
    vg = optlab.kfac_value_and_grad("squared_error", "empirical")
    tx = optlab.scale_by_kfac(
        damping=1e-2, factor_decay=0.5, precondition_every=2, start_preconditioning_step=1
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    contributions, states, outs = [], [], []
    for seed in range(4):
        x, y = dense_problem(seed)
        _, grads, curvature = vg(model, x, y)
        contributions.append(curvature[""])
        u, state = update(grads, state, params, curvature=curvature)
        states.append(state.inner)
        outs.append((leaves_by_path(u), leaves_by_path(grads)))
    # Decay min(1 - 1/k, 0.5): step 1 takes the contribution, step 2 the mean, then EMA 0.5.
    a = [f64(c.a) for c in contributions]
    expected = [a[0], (a[0] + a[1]) / 2]
    expected += [0.5 * expected[-1] + 0.5 * a[2]]
    expected += [0.5 * expected[-1] + 0.5 * a[3]]
    for s, e in zip(states, expected):
        # Groups sorted by size: G (2 x 2, 4 entries) first, then A (5 x 5).
        got = f64(s.factors[4 : 4 + 25]).reshape(5, 5)
        np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7)
    # Before the start (step 0): the gradient itself, inverses still the identity.
    np.testing.assert_array_equal(outs[0][0]["kernel"], outs[0][1]["kernel"])
    # Refreshes at steps 1 and 3 only.
    assert not np.array_equal(states[0].inverses, states[1].inverses)
    np.testing.assert_array_equal(states[1].inverses, states[2].inverses)
    assert not np.array_equal(states[2].inverses, states[3].inverses)
    assert [int(s.count) for s in states] == [1, 2, 3, 4]
    assert int(states[-1].rejected_inverses) == 0


class Normed(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(3, rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.norm(self.dense(x)))


def test_unregistered_parameters_get_the_diagonal_rule():
    x, y = dense_problem(1)
    model = Normed(nnx.Rngs(9))
    lam = 1e-2
    u, grads, _, _ = kfac_update(model, x, y, "squared_error", "empirical", damping=lam)
    for leaf in ("norm/scale", "norm/bias"):
        g = grads[leaf]
        np.testing.assert_allclose(u[leaf], g / (g * g + lam), rtol=1e-5)


def test_norm_constraint_clips_by_the_kl_bound():
    x, y = dense_problem(2)
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(10))
    free, grads, _, _ = kfac_update(model, x, y, "squared_error", "empirical", damping=1e-2)
    clipped, _, _, _ = kfac_update(
        model, x, y, "squared_error", "empirical", damping=1e-2, norm_constraint=1e-4
    )
    inner = sum(np.vdot(free[k], grads[k]) for k in free)
    scale = min(1.0, np.sqrt(1e-4 / abs(inner)))
    assert scale < 0.5  # the bound is active
    for k in free:
        np.testing.assert_allclose(clipped[k], scale * free[k], rtol=1e-5, atol=1e-8)


# -- optimizer, jit, nnx.Optimizer, optax.chain ----------------------------------------------------
class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def classification(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.argmax(x[:, :3] + 0.3 * x[:, 3:], axis=1)).astype(np.int32)
    return x, y


def nnx_jit_losses(model, tx, x, y, steps):
    """Training losses of ``steps`` K-FAC steps (true Fisher) inside ``nnx.jit`` with
    ``nnx.Optimizer``, and the optimizer."""
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "true")

    @nnx.jit
    def step(model, optimizer, key):
        loss, grads, curvature = vg(model, x, y, key=key)
        optimizer.update(model, grads, curvature=curvature)
        return loss

    return [float(step(model, optimizer, jax.random.key(i))) for i in range(steps)], optimizer


def test_trains_inside_nnx_jit_with_nnx_optimizer():
    x, y = classification()
    model = MLP(nnx.Rngs(11))
    tx = optlab.kfac(0.2, damping=1e-2, weight_decay=1e-4, norm_constraint=1e-2)
    losses, optimizer = nnx_jit_losses(model, tx, x, y, 30)
    assert losses[-1] < 0.3 * losses[0], losses
    state = optimizer.opt_state
    assert int(state.skipped_steps[...]) == 0


def test_jax_jit_and_optax_chain_match_eager():
    x, y = classification(1)
    model = MLP(nnx.Rngs(12))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optlab.scale_by_kfac(damping=1e-2, precondition_every=1), optax.sgd(0.1))
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")

    def step(params, state):
        loss, grads, curvature = vg(nnx.merge(graphdef, params), x, y)
        updates, state = tx.update(grads, state, params, curvature=curvature)
        return optax.apply_updates(params, updates), state, loss

    eager = (params, tx.init(params))
    jitted = (params, tx.init(params))
    step_jit = jax.jit(step)
    for _ in range(3):
        *eager, loss_e = step(*eager)
        *jitted, loss_j = step_jit(*jitted)
    assert isinstance(jitted[1][0].inner, KFACState)
    for a, b in zip(jax.tree.leaves(eager[0]), jax.tree.leaves(jitted[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(loss_j) < float(vg(nnx.merge(graphdef, params), x, y)[0])


def test_layers_option_for_pure_jax_params():
    # The low-level path: a dict of arrays, layers named by hand, factors built by hand.
    x, y = dense_problem(3)
    params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
    tx = optlab.scale_by_kfac(
        damping=1e-12, precondition_every=1, layers={"dense": optlab.KFACLayer("w", "b")}
    )
    preds = x @ params["w"] + params["b"]
    g = 2.0 * (preds - y)
    factors = optlab.kfac_dense_factors(x, g, num_cases=len(x))
    grads = {"w": jnp.asarray(x.T @ g / len(x)), "b": jnp.asarray(g.mean(0))}
    u, _ = tx.update(grads, tx.init(params), params, curvature={"dense": factors})
    # Empirical Fisher of sum_k (z_k - y_k)^2: g = 2 (z - y); A^{-1} dW G^{-1} in float64.
    a = with_one(f64(x))
    big_a, big_g = a.T @ a / len(a), f64(g).T @ f64(g) / len(a)
    d = np.concatenate([f64(grads["w"]), f64(grads["b"])[None]])
    reference = np.linalg.solve(big_a, d) @ np.linalg.inv(big_g)
    assert rel(np.concatenate([u["w"], u["b"][None]]), reference) < 1e-4


def test_layers_of_one_shape_are_preconditioned_each_with_its_own_factors():
    # Layers of one shape share one batched product: "a" and "c" (8 -> 16) have their A
    # factors in consecutive rows of the 9 x 9 group and their G factors in rows 0 and 2 of the
    # 16 x 16 group (layer "b"'s G between them): both the slice and the gather path. Each
    # layer's update must be its own damped (A + pi r I)^{-1} dWbar (G + r / pi I)^{-1}
    # (Martens & Grosse sec. 6.3), in float64, whatever its neighbours.
    shapes = {"a": (8, 16), "b": (16, 16), "c": (8, 16), "d": (16, 16)}
    params = {k: {"kernel": jnp.zeros(s), "bias": jnp.zeros(s[1])} for k, s in shapes.items()}

    def spd(d):
        m = RNG.normal(size=(d, 2 * d))
        return (m @ m.T / (2 * d) + 0.5 * np.eye(d)).astype(np.float32)

    curvature = {k: optlab.KFACFactors(spd(s[0] + 1), spd(s[1])) for k, s in shapes.items()}
    grads = jax.tree.map(lambda x: jnp.asarray(RNG.normal(size=x.shape), jnp.float32), params)
    lam = 0.1
    tx = optlab.scale_by_kfac(damping=lam, precondition_every=1)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params, curvature=curvature)
    for name, (d_in, d_out) in shapes.items():
        big_a, big_g = f64(curvature[name].a), f64(curvature[name].g)
        pi = np.sqrt((np.trace(big_a) / (d_in + 1)) / (np.trace(big_g) / d_out))
        d = np.concatenate([f64(grads[name]["kernel"]), f64(grads[name]["bias"])[None]])
        ridge_a, ridge_g = pi * np.sqrt(lam), np.sqrt(lam) / pi
        reference = np.linalg.solve(big_a + ridge_a * np.eye(d_in + 1), d) @ np.linalg.inv(
            big_g + ridge_g * np.eye(d_out)
        )
        update = np.concatenate([f64(u[name]["kernel"]), f64(u[name]["bias"])[None]])
        # Factors with eigenvalues in [0.5, ~3.5] plus the ridges: condition numbers < 10, so
        # float32 inverses and products are within ~1e-6 relative.
        assert rel(update, reference) < 1e-5, name


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"fisher": "exact"}, "fisher"),
        ({"sharing": "sum"}, "sharing"),
    ],
)
def test_value_and_grad_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optlab.kfac_value_and_grad(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"damping": -1.0}, "damping"),
        ({"damping": 0.0}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"factor_decay": 1.5}, "factor_decay"),
        ({"precondition_every": 0}, "precondition_every"),
        ({"start_preconditioning_step": -1}, "start_preconditioning_step"),
        ({"norm_constraint": 0.0}, "norm_constraint"),
        ({"layers": ["w"]}, "layers"),
        ({"layers": {"d": ("w", None, "conv")}}, "layers"),
    ],
)
def test_transforms_reject_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optlab.scale_by_kfac(**kwargs)
    with pytest.raises(ValueError, match=name):
        optlab.kfac(0.1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"momentum": 1.0}, "momentum"), ({"weight_decay": -1.0}, "weight_decay")]
)
def test_kfac_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optlab.kfac(0.1, **kwargs)


def test_model_without_supported_layer_is_rejected():
    class Free(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((3, 2)))

        def __call__(self, x):
            return x @ self.w[...]

    vg = optlab.kfac_value_and_grad("squared_error", "empirical")
    with pytest.raises(ValueError, match="no supported layer"):
        vg(Free(), jnp.ones((4, 3)), jnp.ones((4, 2)))


def test_call_errors():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="key"):
        optlab.kfac_value_and_grad("softmax_cross_entropy", "true")(model, x, jnp.zeros(4, int))
    with pytest.raises(ValueError, match="y has shape"):
        optlab.kfac_value_and_grad("squared_error", "empirical")(model, x, jnp.zeros(4))
    params = nnx.state(model, nnx.Param)
    tx = optlab.scale_by_kfac()
    state = tx.init(params)
    with pytest.raises(ValueError, match="curvature"):
        tx.update(params, state, params)
    bad = {"": optlab.KFACFactors(jnp.eye(3), jnp.eye(2))}  # A misses the bias row
    with pytest.raises(ValueError, match="expected"):
        tx.update(params, state, params, curvature=bad)
    with pytest.raises(ValueError, match="no parameter leaf"):
        optlab.scale_by_kfac(layers={"d": optlab.KFACLayer("nope")}).init(params)


def test_layer_inside_scan_is_a_clear_error():
    class Scanned(nnx.Module):
        def __init__(self, rngs):
            self.cell = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            def body(h, _):
                return jnp.tanh(self.cell(h)), None

            h, _ = jax.lax.scan(body, x, None, length=2)
            return h

    vg = optlab.kfac_value_and_grad("squared_error", "empirical")
    with pytest.raises(ValueError, match="unroll"):
        vg(Scanned(nnx.Rngs(0)), jnp.ones((4, 3)), jnp.ones((4, 3)))


# -- recurrent layers (weight sharing over time) ---------------------------------------------------
def mean_loss_and_grads(model, x, y):
    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reverse": True, "keep_order": True},
        {"reverse": True, "keep_order": False},
        {"time_major": True},
    ],
)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_rnn_unrolled_for_capture_computes_what_nnx_rnn_computes(options, with_lengths):
    # nnx.RNN runs its cell under nnx.scan (another trace); kfac_value_and_grad unrolls it in
    # Python. Loss and gradient must be nnx.value_and_grad's of the scanned model (float32
    # sums of <= ~100 terms: 1e-5 relative).
    class Tagger(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(3, 4, rngs=rngs), **options)
            self.head = nnx.Linear(4, 5, rngs=rngs)

        def __call__(self, x):
            lengths = jnp.array([6, 3, 1, 5]) if with_lengths else None
            return self.head(self.rnn(x, seq_lengths=lengths))

    model = Tagger(nnx.Rngs(21))
    shape = (6, 4, 3) if options.get("time_major") else (4, 6, 3)
    x = jnp.asarray(RNG.normal(size=shape), jnp.float32)
    y = jnp.asarray(RNG.integers(0, 5, size=shape[:2]))
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")
    loss, grads, curvature = vg(model, x, y)
    want_loss, want_grads = mean_loss_and_grads(model, x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert set(curvature) == {"rnn/cell/dense_i", "rnn/cell/dense_h", "head"}


def test_rnn_return_carry_with_lengths_matches_nnx_rnn():
    # The carry after each sequence's last valid step, as nnx.RNN selects it.
    class Last(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs), return_carry=True)
            self.head = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            (_, h), _ = self.rnn(x, seq_lengths=jnp.array([2, 5, 4]))
            return self.head(h)

    model = Last(nnx.Rngs(22))
    x = jnp.asarray(RNG.normal(size=(3, 5, 3)), jnp.float32)
    y = jnp.asarray([0, 1, 1])
    loss, grads, _ = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")(model, x, y)
    want_loss, want_grads = mean_loss_and_grads(model, x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def reference_lstm(params, x, e):
    """OptimizedLSTMCell over time in plain jnp, with perturbations ``e[t]`` added to the gate
    pre-activations ``s_t = x_t W_i + h_{t-1} W_h + b``: outputs and the hidden states fed in."""
    h = c = jnp.zeros((x.shape[0], params["wh"].shape[0]))
    outs, fed = [], []
    for t in range(x.shape[1]):
        fed.append(h)
        s = x[:, t] @ params["wi"] + h @ params["wh"] + params["b"] + e[t]
        i, f, g, o = jnp.split(s, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        outs.append(h)
    return jnp.stack(outs, axis=1), fed


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_lstm_tagger_factors_match_the_definitions(sharing):
    # The LSTM's two dense layers are shared over T steps (Eschenhagen et al. 2023): "expand"
    # has a row per (example, step), "reduce" averages a and sums g over steps per example.
    # The pre-activation gradients come from a plain-jnp LSTM differentiated with respect to
    # perturbations of its gate pre-activations (not from optlab's capture); both layers' G
    # are the same since their outputs are summed into s_t. float32 sums of <= 120 rows: 1e-4.
    model = optlab.models.LSTMTagger(30, 5, embed_dim=6, hidden_size=4, rngs=nnx.Rngs(23))
    n, steps = 5, 6
    tokens = jnp.asarray(RNG.integers(0, 30, size=(n, steps)))
    y = jnp.asarray(RNG.integers(0, 5, size=(n, steps)))
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical", sharing=sharing)
    _, _, curvature = vg(model, tokens, y)

    cell = model.rnn.cell
    p = {
        "wi": cell.dense_i.kernel[...],
        "wh": cell.dense_h.kernel[...],
        "b": cell.dense_h.bias[...],
    }
    x = model.embed.embedding[...][tokens]

    def summed_loss(e):
        h, _ = reference_lstm(p, x, e)
        logits = h @ model.head.kernel[...] + model.head.bias[...]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    e0 = jnp.zeros((steps, n, 16))
    g = f64(jax.grad(summed_loss)(e0))  # [T, N, 16]
    _, fed = reference_lstm(p, x, e0)
    xs = f64(x).transpose(1, 0, 2)  # [T, N, 6]
    hs = with_one_last(f64(jnp.stack(fed)))  # [T, N, 5]
    m = n * steps
    if sharing == "expand":
        a_in = np.einsum("tni,tnj->ij", xs, xs) / m
        a_h = np.einsum("tni,tnj->ij", hs, hs) / m
        big_g = np.einsum("tni,tnj->ij", g, g) / m
    else:
        xm, hm, gs = xs.mean(0), hs.mean(0), g.sum(0)
        a_in, a_h, big_g = xm.T @ xm / n, hm.T @ hm / n, gs.T @ gs / m
    assert rel(curvature["rnn/cell/dense_i"].a, a_in) < 1e-4
    assert rel(curvature["rnn/cell/dense_h"].a, a_h) < 1e-4
    assert rel(curvature["rnn/cell/dense_i"].g, big_g) < 1e-4
    assert rel(curvature["rnn/cell/dense_h"].g, big_g) < 1e-4


def with_one_last(x):
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)


def test_kfac_trains_an_lstm_tagger_inside_jit():
    # Weight sharing over time end to end: nnx.jit, nnx.Optimizer, the loss goes down.
    model = optlab.models.LSTMTagger(20, 3, embed_dim=8, hidden_size=8, rngs=nnx.Rngs(24))
    tokens = jnp.asarray(RNG.integers(0, 20, size=(16, 5)))
    y = (tokens % 3 + jnp.roll(tokens, 1, axis=1) % 3) % 3
    losses, _ = nnx_jit_losses(model, optlab.kfac(0.1, damping=1e-2), tokens, y, 30)
    assert losses[-1] < 0.5 * losses[0]


def test_multisteps_accumulates_and_passes_curvature():
    x, y = classification(2)
    model = MLP(nnx.Rngs(13))
    params = nnx.state(model, nnx.Param)
    tx = optax.MultiSteps(optlab.kfac(0.1, damping=1e-2, precondition_every=1), 2)
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")
    state = tx.init(params)
    for i in range(4):
        _, grads, curvature = vg(model, x, y)
        updates, state = jax.jit(tx.update)(grads, state, params, curvature=curvature)
        moved = any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
        assert moved == (i % 2 == 1)
    assert int(state.inner_opt_state.inner[0].count) == 2


def test_steps_without_curvature_keep_the_factors():
    # curvature={} (compute_curvature=False): factors, their update count and the decay's
    # step counter stay; the next curvature is averaged as the second one.
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(14))
    params = nnx.state(model, nnx.Param)
    vg = optlab.kfac_value_and_grad("squared_error", "empirical")
    tx = optlab.scale_by_kfac(damping=1e-2, factor_decay=0.9, precondition_every=1)
    state = tx.init(params)
    seen = []
    for seed, with_curvature in enumerate([True, False, False, True]):
        x, y = dense_problem(seed)
        _, grads, curvature = vg(model, x, y, compute_curvature=with_curvature)
        assert (curvature == {}) == (not with_curvature)
        if with_curvature:
            seen.append(f64(curvature[""].a))
        _, state = tx.update(grads, state, params, curvature=curvature)
    inner = state.inner
    assert int(inner.curvature_updates) == 2 and int(inner.count) == 4
    np.testing.assert_allclose(
        f64(inner.factors[4:29]).reshape(5, 5), (seen[0] + seen[1]) / 2, rtol=1e-5, atol=1e-7
    )


def test_no_curvature_yet_means_identity_inverses():
    model = nnx.Linear(4, 2, rngs=nnx.Rngs(15))
    params = nnx.state(model, nnx.Param)
    x, y = dense_problem(4)
    _, grads, _ = optlab.kfac_value_and_grad("squared_error", "empirical")(
        model, x, y, compute_curvature=False
    )
    tx = optlab.scale_by_kfac(damping=1e-2, precondition_every=1)
    updates, state = tx.update(grads, tx.init(params), params, curvature={})
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(u, g)
    assert int(state.inner.curvature_updates) == 0
    with pytest.raises(ValueError, match="compute_curvature"):
        optlab.kfac_value_and_grad("squared_error", "empirical")(
            model, x, y, compute_curvature=jnp.asarray(True)
        )


def test_compare_runner_trains_kfac_with_curvature_every_other_step():
    # optlab compare's loop: the registered "kfac" gets its curvature from
    # kfac_value_and_grad, here on every 2nd step only (a second compiled step without it).
    pytest.importorskip("sklearn")
    from optlab.bench import registry, runner, tasks

    task = tasks.get_task("digits-mlp")
    built = registry.build_optimizer("kfac", task.name, {"curvature_every": 2})
    settings = runner.RunSettings(epochs=1, steps=6, batch_size=64, seed=0, target=0.5)
    result = runner.train_one(task, task.load(None), built, settings)
    assert len(result.step_loss) == 6 and all(np.isfinite(result.step_loss))
    assert result.step_loss[-1] < result.step_loss[0]


def test_accelerator_refresh_path_matches_the_host_path(monkeypatch):
    # Off CPU the damped inverses come from jax.lax.linalg.cholesky in float32 (no device here:
    # the same code runs on CPU with on_cpu() patched). Both invert the same damped factors,
    # whose condition numbers are < 1e3 here: float32 agrees with float64 to ~kappa u ~ 1e-4.
    x, y = classification(3)
    model = MLP(nnx.Rngs(16))
    host, _, _, _ = kfac_update(model, x, y, "softmax_cross_entropy", "empirical", damping=1e-2)
    monkeypatch.setattr(optlab._src.kfac._lapack, "on_cpu", lambda: False)
    device, _, _, _ = kfac_update(model, x, y, "softmax_cross_entropy", "empirical", damping=1e-2)
    for k in host:
        assert rel(device[k], host[k]) < 1e-4, (k, rel(device[k], host[k]))


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": (5, 5), "padding": "VALID"},
        {"kernel_size": (3, 3), "kernel_dilation": (2, 1), "padding": ((1, 2), (0, 1))},
        {"kernel_size": (3, 3), "input_dilation": 2, "padding": ((1, 1), (2, 0))},
        {"kernel_size": (3,), "padding": "CAUSAL"},
        {"kernel_size": (3, 3), "padding": "CIRCULAR", "strides": 2},
        {"kernel_size": (3, 3), "padding": ((-1, 1), (1, 1))},
        {"kernel_size": (2, 3, 2), "padding": "SAME", "strides": (1, 2, 1)},
    ],
)
def test_conv_patches_reproduce_the_convolution(options):
    # The im2col K-FAC uses must be the layer's own: patches @ kernel == nnx.Conv (float32
    # sums of <= 27 products: error <= 27 u max|term| ~ 1e-5 for these magnitudes).
    from optlab._src.kfac_curvature import _conv_patches

    nd = len(options["kernel_size"])
    conv = nnx.Conv(3, 4, rngs=nnx.Rngs(0), use_bias=False, **options)
    x = jnp.asarray(RNG.normal(size=(2,) + (7,) * nd + (3,)), jnp.float32)
    patches = _conv_patches(conv, x)
    out = conv(x)
    np.testing.assert_allclose(
        patches @ conv.kernel[...].reshape(-1, 4), out.reshape(patches.shape[:-1] + (4,)), atol=1e-5
    )


def _kfac_jax():
    """kfac-jax 0.0.8 with the JAX >= 0.10 shim of benchmarks/kfac.py (skip when missing)."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("kfac_jax")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kfac.py"
    spec = importlib.util.spec_from_file_location("_kfac_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.import_kfac_jax()


def test_factors_match_kfac_jax():
    # Same MLP, batch and targets as kfac-jax's BlockDiagonalCurvature (its dense blocks).
    # "fisher_empirical": A equal, and G equal up to kfac-jax's normalization of that mode: it
    # forms G from the gradients of the batch-mean loss, g_n / N, so G_kfac-jax = G / N.
    # "fisher_gradients" (true Fisher): equal in expectation; both are means of K N sampled
    # outer products from different random streams, compared within 5 standard errors.
    bench, kfac_jax = _kfac_jax()
    weights = bench.init_weights((6, 8, 5, 3), seed=0)
    x = jnp.asarray(RNG.normal(size=(16, 6)), jnp.float32)
    y = jnp.asarray(RNG.integers(0, 3, 16), jnp.int32)

    def loss_fn(params, batch):
        h, t = batch
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        out = h @ params[-1][0] + params[-1][1]
        kfac_jax.register_softmax_cross_entropy_loss(out, t)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, t))

    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    model = bench.MLP(weights, "tanh")
    names = ["layers/0", "layers/1", "layers/2"]

    def peer(mode, key):
        est = kfac_jax.BlockDiagonalCurvature(func=loss_fn, default_estimation_mode=mode)
        state = est.init(jax.random.key(0), (params, (x, y)), None, None)
        state = est.update_curvature_matrix_estimate(
            state, 0.0, 1.0, 0.0, 16, jax.random.key(key), (params, (x, y))
        )
        return [tuple(f64(f.value) for f in b.factors) for b in state.blocks_states]

    ours = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")(model, x, y)[2]
    for name, (a, g) in zip(names, peer("fisher_empirical", 0)):
        np.testing.assert_allclose(ours[name].a, a, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(f64(ours[name].g) / 16, g, rtol=1e-5, atol=1e-9)

    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "true")
    k = 64
    mine = np.stack(
        [f64(vg(model, x, y, key=jax.random.key(i))[2]["layers/2"].g) for i in range(k)]
    )
    theirs = np.mean([peer("fisher_gradients", 1000 + i)[2][1] for i in range(k)], axis=0)
    standard_error = np.sqrt(2 * np.sum(mine.var(axis=0, ddof=1)) / k)
    assert np.linalg.norm(mine.mean(0) - theirs) < 5 * standard_error


def test_a_factor_that_is_not_positive_definite_keeps_the_previous_inverse():
    # A = -I is finite (the NaN guard lets it through) but A + r I is not positive definite:
    # the Cholesky fails, the inverse stays the identity and the rejection is counted.
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = optlab.scale_by_kfac(
        damping=1e-4, precondition_every=1, layers={"d": optlab.KFACLayer("w", "b")}
    )
    bad = {"d": optlab.KFACFactors(-jnp.eye(4), jnp.eye(2))}
    updates, state = tx.update(params, tx.init(params), params, curvature=bad)
    assert int(state.inner.rejected_inverses) == 1
    np.testing.assert_array_equal(state.inner.inverses[4:], np.eye(4).ravel())
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


# -- the NaN/Inf guard, decided before the step ----------------------------------------------------
def dense_step_inputs(scale_a):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(30))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    curvature = {"": optlab.KFACFactors(scale_a * jnp.eye(4), jnp.eye(2))}
    return params, grads, curvature


def test_curvature_that_would_overflow_the_factors_is_skipped_before_the_step():
    # New factors <= old largest diagonal + largest contribution entry, kept below a quarter
    # of float32's max (3.40e38 / 4 = 8.5e37): 8e37 is admitted, 9e37 skipped, and so are NaN
    # and Inf curvature.
    limit = 0.25 * float(jnp.finfo(jnp.float32).max)
    tx = optlab.scale_by_kfac(damping=1e-2, precondition_every=1)
    for scale, skipped in ((0.94 * limit, 0), (1.06 * limit, 1), (np.nan, 1), (np.inf, 1)):
        params, grads, curvature = dense_step_inputs(scale)
        state = tx.init(params)
        updates, new_state = jax.jit(tx.update)(grads, state, params, curvature=curvature)
        assert int(new_state.skipped_steps) == skipped, scale
        assert np.all(np.isfinite(np.asarray(new_state.inner.factors)))
        if skipped:
            assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
            chex_equal(new_state.inner, state.inner)
        else:
            assert int(new_state.inner.count) == 1


def test_old_factors_count_toward_the_bound():
    # A second step: old diagonal 8e37 (a plain mean of one contribution) plus 8e37 > 8.5e37.
    limit = 0.25 * float(jnp.finfo(jnp.float32).max)
    tx = optlab.scale_by_kfac(damping=1e-2, precondition_every=1)
    params, grads, curvature = dense_step_inputs(0.94 * limit)
    state = tx.init(params)
    _, state = tx.update(grads, state, params, curvature=curvature)
    _, state2 = tx.update(grads, state, params, curvature=curvature)
    assert int(state.skipped_steps) == 0 and int(state2.skipped_steps) == 1
    chex_equal(state2.inner, state.inner)


def test_momentum_that_would_overflow_keeps_its_value_and_the_step_is_counted():
    # A finite preconditioned update of 3e38 on top of a momentum of 3e38 overflows float32 in
    # every entry: the momentum keeps its value (entry by entry), the update is zeroed, the
    # step counted; K-FAC's factors (finite) keep the step.
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(31))
    params = nnx.state(model, nnx.Param)
    tx = optlab.kfac(1.0, damping=1.0, momentum=0.9, start_preconditioning_step=10)
    state = tx.init(params)
    big = jax.tree.map(lambda p: jnp.full_like(p, 3e38), params)
    curvature = {"": optlab.KFACFactors(jnp.eye(4), jnp.eye(2))}
    updates, state = tx.update(big, state, params, curvature=curvature)
    assert int(state.skipped_steps) == 0
    trace = state.inner[1].mu  # the momentum, in the layer's stacked layout
    updates, state2 = tx.update(big, state, params, curvature=curvature)
    assert int(state2.skipped_steps) == 1
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    chex_equal(state2.inner[1].mu, trace)
    assert int(state2.inner[0].count) == 2


def test_only_the_momentum_entries_that_would_overflow_keep_their_value():
    # Before the start the update is the gradient: the momentum is m1 = g, then
    # m2 = 0.9 m1 + g, which overflows float32 only where g = 3e38. That entry keeps 3e38, the
    # others take the step (1.9); the update, NaN there, is zeroed whole and the step counted.
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(31))
    params = nnx.state(model, nnx.Param)
    tx = optlab.kfac(1.0, damping=1.0, momentum=0.9, start_preconditioning_step=10)
    state = tx.init(params)
    grads = jax.tree.map(
        lambda p: jnp.ones_like(p).at[0, 0].set(3e38) if p.ndim == 2 else jnp.ones_like(p), params
    )
    curvature = {"": optlab.KFACFactors(jnp.eye(4), jnp.eye(2))}
    _, state = tx.update(grads, state, params, curvature=curvature)
    updates, state = tx.update(grads, state, params, curvature=curvature)
    assert int(state.skipped_steps) == 1
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    # The momentum in the layer's stacked layout: [W; b], the 3 x 2 kernel's rows then the bias.
    momentum = np.asarray(state.inner[1].mu)
    assert momentum.shape == (8,)
    kernel, bias = momentum[:6].reshape(3, 2), momentum[6:]
    assert kernel[0, 0] == np.float32(3e38)
    expected = np.float32(np.float32(0.9) * np.float32(1.0) + np.float32(1.0))
    assert np.all(np.delete(kernel.ravel(), 0) == expected)
    assert np.all(bias == expected)


def chex_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- exact damping: (A (x) G + lambda I)^{-1} through eigendecompositions --------------------------
def kron_solve(big_a, big_g, d_w, lam):
    """``U`` with ``A U G + lambda U = dW`` (row-major vec: ``(A (x) G) vec U = vec(A U G)``)."""
    system = np.kron(big_a, big_g) + lam * np.eye(big_a.shape[0] * big_g.shape[0])
    return np.linalg.solve(system, d_w.ravel()).reshape(d_w.shape)


def test_exact_damping_solves_the_damped_kronecker_system():
    # Float32 eigendecompositions of factors of norm ~1: the solution's relative error is about
    # kappa * d * u with kappa = (|A||G| + lambda) / lambda < 50 here: < 5e-5, checked at 2e-4.
    x = RNG.normal(size=(32, 4)).astype(np.float32)
    y = RNG.normal(size=(32, 3)).astype(np.float32)
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(40))
    lam = 0.1
    u, grads, curvature, state = kfac_update(
        model, x, y, "squared_error", "empirical", damping=lam, damping_mode="exact"
    )
    big_a, big_g = f64(curvature[""].a), f64(curvature[""].g)
    d_wbar = np.concatenate([grads["kernel"], grads["bias"][None, :]])
    reference = kron_solve(big_a, big_g, d_wbar, lam)
    update = np.concatenate([u["kernel"], u["bias"][None, :]])
    assert rel(update, reference) < 2e-4
    # Not the factored form: the two differ by far more than the tolerance here.
    factored, *_ = kfac_update(model, x, y, "squared_error", "empirical", damping=lam)
    assert rel(np.concatenate([factored["kernel"], factored["bias"][None, :]]), reference) > 1e-2
    assert int(state.inner.rejected_inverses) == 0


def test_exact_damping_of_an_embedding_uses_its_diagonal_input_factor():
    ids = RNG.integers(0, 7, size=(3, 5)).astype(np.int32)
    y = RNG.integers(0, 3, size=(3, 5)).astype(np.int32)
    model = Tagger(nnx.Rngs(41))
    lam = 0.05
    u, grads, curvature, _ = kfac_update(
        model, ids, y, "softmax_cross_entropy", "empirical", damping=lam, damping_mode="exact"
    )
    a, g = f64(curvature["embed"].a), f64(curvature["embed"].g)
    reference = kron_solve(np.diag(a), g, grads["embed/embedding"], lam)
    assert rel(u["embed/embedding"], reference) < 2e-4
    for name in ("mix", "head"):
        d_wbar = np.concatenate([grads[f"{name}/kernel"], grads[f"{name}/bias"][None, :]])
        want = kron_solve(f64(curvature[name].a), f64(curvature[name].g), d_wbar, lam)
        got = np.concatenate([u[f"{name}/kernel"], u[f"{name}/bias"][None, :]])
        assert rel(got, want) < 2e-4


def test_exact_damping_trains_inside_nnx_jit():
    x, y = classification(50)
    model = MLP(nnx.Rngs(42))
    tx = optlab.kfac(0.1, damping=1e-2, damping_mode="exact", precondition_every=2)
    losses, _ = nnx_jit_losses(model, tx, x, y, 20)
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="damping_mode"):
        optlab.kfac(0.1, damping_mode="eigen")


# -- ignored labels (padding) ----------------------------------------------------------------------
def test_negative_labels_are_no_loss_cases():
    # A per-token tagger on right-padded sentences: the loss, gradient and factors equal those
    # of the real tokens alone (float64 references from the same forward by hand).
    ids = RNG.integers(0, 7, size=(3, 5)).astype(np.int32)
    y = RNG.integers(0, 3, size=(3, 5)).astype(np.int32)
    y[0, 3:] = -1
    y[2, 1:] = -1
    real = y >= 0
    model = Tagger(nnx.Rngs(50))
    vg = optlab.kfac_value_and_grad("softmax_cross_entropy", "empirical")
    loss, grads, curvature = vg(model, ids, y)

    def masked_loss(m):
        logits = m(ids)
        per = optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(y, 0))
        return jnp.sum(per * real) / real.sum()

    want_loss, want_grads = nnx.value_and_grad(masked_loss)(model)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The head is applied per token: its A is over the real tokens only.
    e = f64(model.embed.embedding[...])
    wm, bm = f64(model.mix.kernel[...]), f64(model.mix.bias[...])
    a2 = np.tanh(np.tanh(e[ids] @ wm + bm) @ wm + bm)
    rows = with_one(a2[real])
    assert rel(curvature["head"].a, rows.T @ rows / len(rows)) < 1e-5
    freq = np.bincount(ids[real], minlength=7) / real.sum()
    np.testing.assert_allclose(curvature["embed"].a, freq, rtol=1e-6)
    # G of the head: d loss_case / d z for real cases, over the number of real cases.
    z = rows @ np.concatenate([f64(model.head.kernel[...]), f64(model.head.bias[...])[None]])
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gz = p - np.eye(3)[y[real]]
    assert rel(curvature["head"].g, gz.T @ gz / real.sum()) < 1e-5


def test_step_program_grows_linearly_with_layers():
    # Compile time (issue 18): the momentum guard's "all finite" scalar and KL clipping's
    # <U, g> feed every leaf; as Python sums of per-leaf scalars XLA fused them, duplicated,
    # into each leaf (K-FAC on 25/50/100-layer MLPs: 23k/76k/271k instructions, measured).
    # Linear growth: at most 2x plus the constant part's share for 2x the layers, below 2.2x.
    def instructions(n):
        params = {f"l{i}": {"kernel": jnp.zeros((16, 16)), "bias": jnp.zeros(16)} for i in range(n)}
        curvature = {f"l{i}": optlab.KFACFactors(jnp.eye(17), jnp.eye(16)) for i in range(n)}
        tx = optlab.kfac(0.1, damping=1e-2, norm_constraint=1e-2, weight_decay=1e-4)

        def step(g, s, c):
            return tx.update(g, s, params, curvature=c)

        text = jax.jit(step).lower(params, tx.init(params), curvature).compile().as_text()
        return sum(1 for line in text.splitlines() if " = " in line)

    assert instructions(32) <= 2.2 * instructions(16)
