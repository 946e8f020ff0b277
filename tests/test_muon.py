"""Tests of optlab.muon against independent float64 NumPy references."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab._src.common import SkipNonFiniteState
from optlab._src.muon import (
    MUON_EXCLUDED_NAMES,
    MuonDimensionNumbers,
    ScaleByMuonState,
    muon,
    muon_labels,
    orthogonalize_muon,
    resolve_method,
    scale_by_muon,
)
from optlab.linalg import orthogonalize


def polar64(x: np.ndarray) -> np.ndarray:
    """U V^T of x in float64 (NumPy's SVD)."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


def random_tree(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def singular_values(x: jax.Array) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def apply(tx: optax.GradientTransformation, updates, *, jit: bool = False):
    """The first update of ``tx`` for ``updates`` (a fresh state)."""
    update = jax.jit(tx.update) if jit else tx.update
    return update(updates, tx.init(updates))[0]


SHAPES = {"wide": (6, 10), "tall": (12, 5), "square": (7, 7)}


# -- the update equals U V^T of the momentum -------------------------------------------------------
@pytest.mark.parametrize("nesterov", [True, False])
def test_svd_update_matches_float64_reference_for_three_steps(nesterov: bool) -> None:
    beta = 0.9
    tx = scale_by_muon(beta=beta, nesterov=nesterov, method="svd", scale=None)
    grads = [random_tree(s, SHAPES) for s in range(3)]
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    mu = {k: np.zeros(s) for k, s in SHAPES.items()}
    for g in grads:
        updates, state = update(g, state)
        for k in SHAPES:
            g64 = np.asarray(g[k], np.float64)
            mu[k] = beta * mu[k] + g64
            direction = g64 + beta * mu[k] if nesterov else mu[k]
            np.testing.assert_allclose(np.asarray(updates[k]), polar64(direction), atol=2e-5)
            np.testing.assert_allclose(np.asarray(state.inner.mu[k]), mu[k], rtol=1e-5, atol=1e-6)
    assert int(state.inner.count) == 3 and int(state.skipped_steps) == 0


def test_momentum_matches_handwritten_loop_and_mu_dtype() -> None:
    beta = 0.8
    grads = [random_tree(10 + s, {"w": (4, 6)}) for s in range(4)]
    for nesterov in (True, False):
        tx = scale_by_muon(beta=beta, nesterov=nesterov, method="svd", scale=None)
        state = tx.init(grads[0])
        m = np.zeros((4, 6))
        for g in grads:
            _, state = tx.update(g, state)
            m = beta * m + np.asarray(g["w"], np.float64)  # M_t = beta M_{t-1} + G_t
        np.testing.assert_allclose(np.asarray(state.inner.mu["w"]), m, rtol=1e-5)
    tx = scale_by_muon(mu_dtype=jnp.bfloat16)
    state = tx.init(grads[0])
    assert isinstance(state.inner, ScaleByMuonState) and state.inner.mu["w"].dtype == jnp.bfloat16
    updates, state2 = jax.jit(tx.update)(grads[0], state)
    assert state2.inner.mu["w"].dtype == jnp.bfloat16 and updates["w"].dtype == jnp.float32


# -- layouts ---------------------------------------------------------------------------------------
def test_conv_kernel_is_orthogonalized_as_reshaped_matrix() -> None:
    kernel = random_tree(3, {"k": (3, 3, 4, 8)})  # Flax [h, w, in, out]
    out = apply(orthogonalize_muon(method="svd"), kernel)["k"]
    expected = polar64(np.asarray(kernel["k"]).reshape(36, 8)).reshape(3, 3, 4, 8)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


def test_nnx_attention_projection_kernels_use_in_by_heads_times_head_dim() -> None:
    g = random_tree(4, {"q": (16, 2, 8), "o": (2, 8, 16)})
    tree = {"attn": {"query": {"kernel": g["q"]}, "out": {"kernel": g["o"]}}}
    out = apply(orthogonalize_muon(method="svd"), tree)["attn"]
    q_ref = polar64(np.asarray(g["q"]).reshape(16, 16)).reshape(16, 2, 8)
    o_ref = polar64(np.asarray(g["o"]).reshape(16, 16)).reshape(2, 8, 16)
    np.testing.assert_allclose(np.asarray(out["query"]["kernel"]), q_ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["out"]["kernel"]), o_ref, atol=2e-5)


def test_dimension_numbers_with_batch_axes_equal_per_slice_results() -> None:
    g = random_tree(5, {"stacked": (3, 6, 4), "middle": (6, 2, 5, 3)})
    dims = {
        "stacked": MuonDimensionNumbers(reduction_axis=1, output_axis=2),  # batch axis 0
        # batch axis 1; reduction 0; output (2, 3) -> 6 x 15 per slice
        "middle": optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=(2, -1)),
    }
    out = apply(orthogonalize_muon(method="svd", dimension_numbers=dims), g)
    x = np.asarray(g["stacked"])
    for i in range(3):
        np.testing.assert_allclose(np.asarray(out["stacked"][i]), polar64(x[i]), atol=2e-5)
    x = np.asarray(g["middle"])
    for j in range(2):
        ref = polar64(x[:, j].reshape(6, 15)).reshape(6, 5, 3)
        np.testing.assert_allclose(np.asarray(out["middle"][:, j]), ref, atol=2e-5)

    # The same through a root callable (optax's convention) and per-leaf callables.
    by_fn = apply(orthogonalize_muon(method="svd", dimension_numbers=lambda u: dims), g)
    per_leaf = {"stacked": lambda leaf: dims["stacked"], "middle": dims["middle"]}
    by_leaf = apply(orthogonalize_muon(method="svd", dimension_numbers=per_leaf), g)
    for k in g:
        np.testing.assert_allclose(np.asarray(by_fn[k]), np.asarray(out[k]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(by_leaf[k]), np.asarray(out[k]), atol=1e-6)


def test_grouped_leaves_equal_individual_orthogonalization() -> None:
    g = random_tree(6, {"a": (8, 16), "b": (16, 8), "c": (8, 16), "d": (8, 8)})
    for method in ("newton_schulz", "gram_newton_schulz"):  # ("auto" is checked below)
        out = apply(orthogonalize_muon(method=method), g, jit=True)
        for k, x in g.items():
            ref = jax.jit(orthogonalize, static_argnames="method")(x, method=method)
            np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref), atol=2e-5)


# -- labels: what reaches Muon ---------------------------------------------------------------------
def test_rank_below_two_never_reaches_muon_and_is_rejected_when_labelled() -> None:
    params = {"w": jnp.ones((4, 6)), "b": jnp.zeros(6), "s": jnp.zeros(())}
    assert muon_labels(params) == {"w": "muon", "b": "adam", "s": "adam"}
    grads = random_tree(7, {"w": (4, 6), "b": (6,), "s": ()})
    # The bias and the scalar move exactly as optax.adamw moves them.
    tx = muon(0.05, adam_learning_rate=0.01)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    adam = optax.adamw(0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    ref, _ = jax.jit(adam.update)(grads, adam.init(params), params)
    for k in ("b", "s"):
        np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(ref[k]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\['b'\].*rank 1 < 2"):
        apply(scale_by_muon(), grads)
    bad = muon(0.05, labels={"w": "muon", "b": "muon", "s": "adam"})
    with pytest.raises(ValueError, match=r"\['b'\]"):
        bad.update(grads, bad.init(params), params)


class TinyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(50, 8, rngs=rngs)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 50, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.head(self.norm(jax.nn.relu(self.hidden(self.embed(tokens)))))


def test_flax_nnx_embedding_and_head_go_to_adamw() -> None:
    # Abstract init (no eager op-by-op initialization), then NumPy values: fast.
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: TinyLM(nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
    labels = muon_labels(params)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
    muon_leaves = sorted(k for k, v in flat.items() if v == "muon")
    assert muon_leaves == ["['hidden']['kernel'].value"], flat

    tokens = jnp.arange(12) % 50

    def loss(p: nnx.State) -> jax.Array:
        logits = nnx.merge(graphdef, p)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

    grads = jax.jit(jax.grad(loss))(params)
    tx = muon(0.02, adam_learning_rate=1e-3)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    adam = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.0)
    ref, _ = jax.jit(adam.update)(grads, adam.init(params), params)
    np.testing.assert_allclose(
        np.asarray(updates["embed"]["embedding"][...]),
        np.asarray(ref["embed"]["embedding"][...]),
        rtol=1e-5,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        np.asarray(updates["head"]["kernel"][...]),
        np.asarray(ref["head"]["kernel"][...]),
        rtol=1e-5,
        atol=1e-9,
    )
    hidden = np.asarray(updates["hidden"]["kernel"][...])  # 8 x 16, Muon: sigma ~ lr*sqrt(2)
    assert np.all(np.abs(singular_values(hidden) / (0.02 * np.sqrt(2)) - 1) < 0.35)


def test_labels_exclude_names_linen_suffix_and_custom_list() -> None:
    params = {
        "Embed_0": {"embedding": jnp.zeros((10, 4))},
        "Dense_0": {"kernel": jnp.zeros((4, 4))},
        "lm_head": {"kernel": jnp.zeros((4, 10))},
        "stem": {"kernel": jnp.zeros((3, 3, 1, 4))},
    }
    assert muon_labels(params) == {
        "Embed_0": {"embedding": "adam"},
        "Dense_0": {"kernel": "muon"},
        "lm_head": {"kernel": "adam"},
        "stem": {"kernel": "muon"},
    }
    custom = muon_labels(params, exclude=(*MUON_EXCLUDED_NAMES, "stem"))
    assert custom["stem"]["kernel"] == "adam"


# -- scales and method choice ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("spectral", lambda fi, fo: np.sqrt(max(1.0, fo / fi))),
        ("rms", lambda fi, fo: 0.2 * np.sqrt(max(fi, fo))),
        (None, lambda fi, fo: 1.0),
        (lambda fi, fo: fi / 100.0, lambda fi, fo: fi / 100.0),
    ],
)
def test_scale_rules(scale, expected) -> None:
    g = random_tree(8, {"wide": (4, 12), "tall": (12, 4), "conv": (2, 2, 3, 5)})
    tx = scale_by_muon(method="svd", scale=scale)
    updates, _ = tx.update(g, tx.init(g))
    fans = {"wide": (4, 12), "tall": (12, 4), "conv": (12, 5)}
    for k, (fi, fo) in fans.items():
        s = singular_values(np.asarray(updates[k]).reshape(fi, fo))
        np.testing.assert_allclose(s, expected(fi, fo), rtol=1e-5)


def test_auto_method_choice() -> None:
    assert resolve_method("auto", (512, 2048)) == "gram_newton_schulz"
    assert resolve_method("auto", (2048, 512)) == "gram_newton_schulz"
    assert resolve_method("auto", (512, 512)) == "polar_express"
    assert resolve_method("auto", (512, 700)) == "polar_express"  # 1.37 <= 1.5
    assert resolve_method("auto", (64, 256)) == "polar_express"  # small: the accurate form
    assert resolve_method("auto", (512, 2048), compute_dtype=jnp.bfloat16) == "polar_express"
    assert resolve_method("auto", (512, 2048), jnp.bfloat16) == "gram_newton_schulz"  # f32 math
    assert resolve_method("svd", (4, 4)) == "svd"
    g = random_tree(9, {"wide": (128, 256), "square": (8, 8)})
    out = apply(orthogonalize_muon(), g, jit=True)
    ortho = jax.jit(orthogonalize, static_argnames=("method", "coefficients"))
    wide_ref = ortho(g["wide"], method="gram_newton_schulz", coefficients="polar_express")
    np.testing.assert_allclose(np.asarray(out["wide"]), np.asarray(wide_ref), atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(out["square"]), np.asarray(ortho(g["square"], method="polar_express")), atol=2e-5
    )
    # Polar Express converges: both are orthogonal to well within NS's [0.68, 1.13] band.
    for k in g:
        s = singular_values(out[k])
        assert np.all(np.abs(s - 1) < 0.02), (k, s)


def test_bfloat16_compute_dtype_runs() -> None:
    # Rectangular Gaussians are well conditioned (a square one has sigma_min ~ 0, which no
    # 7-step iteration lifts to 1, in any dtype).
    g = random_tree(11, {"w": (32, 64), "v": (96, 48)})
    tx = scale_by_muon(compute_dtype=jnp.bfloat16, mu_dtype=jnp.bfloat16, scale=None)
    updates, state = jax.jit(tx.update)(g, tx.init(g))
    for k in g:
        assert updates[k].dtype == jnp.float32 and state.inner.mu[k].dtype == jnp.bfloat16
        s = singular_values(updates[k])
        # Polar Express in bfloat16: the top of the spectrum to ~1e-2; bfloat16's rounding of the
        # Gram matrix leaves sigma_min ~0.87 here (cond 5), still inside NS's [0.68, 1.13] band.
        assert np.all(np.abs(s - 1) < 0.2) and np.median(np.abs(s - 1)) < 0.02, s


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (scale_by_muon, {"method": "qr"}, "method must be one of"),
        (orthogonalize_muon, {"method": "newton"}, "method must be one of"),
        (scale_by_muon, {"scale": "width"}, "scale must be one of"),
        (scale_by_muon, {"beta": 1.0}, r"beta must be in \[0, 1\)"),
        (scale_by_muon, {"beta": -0.1}, r"beta must be in \[0, 1\)"),
        (scale_by_muon, {"steps": 0}, "steps must be an integer >= 1"),
        (scale_by_muon, {"steps": 2.5}, "steps must be an integer >= 1"),
        (scale_by_muon, {"nesterov": "yes"}, "nesterov must be True or False"),
        (scale_by_muon, {"mu_dtype": jnp.int32}, "mu_dtype must be"),
        (scale_by_muon, {"coefficients": "chebyshev"}, "coefficients must be"),
        (muon, {"learning_rate": 0.1, "beta": 1.5}, "beta must be in"),
        (muon, {"learning_rate": 0.1, "method": "polar"}, "method must be one of"),
        (muon, {"learning_rate": 0.1, "adam_b2": 1.0}, r"adam_b2 must be in \[0, 1\)"),
        (muon, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(factory, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_bad_dimension_numbers_raise() -> None:
    g = random_tree(12, {"w": (3, 4, 5)})
    with pytest.raises(ValueError, match="overlap"):
        apply(orthogonalize_muon(dimension_numbers=MuonDimensionNumbers(0, (0, 1))), g)
    with pytest.raises(ValueError, match="out of range"):
        apply(orthogonalize_muon(dimension_numbers=MuonDimensionNumbers(0, 3)), g)


# -- composition: jit, inject_hyperparams, schedules, NaN ------------------------------------------
def test_inject_hyperparams_sees_lr_beta_weight_decay_and_jit_traces_once() -> None:
    params = {"w": jnp.ones((4, 8)) * 0.1, "b": jnp.zeros(8)}
    grads = random_tree(13, {"w": (4, 8), "b": (8,)})
    tx = optax.inject_hyperparams(muon)(learning_rate=0.02, beta=0.9, weight_decay=0.1)
    state = tx.init(params)
    assert {"learning_rate", "beta", "weight_decay"} <= set(state.hyperparams)
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p1, s1 = step(params, state, grads)
    g2 = random_tree(16, {"w": (4, 8), "b": (8,)})  # not parallel to the momentum
    p2, s2 = step(p1, s1, g2)
    p3, _ = step(p1, s1._replace(hyperparams={**s1.hyperparams, "beta": jnp.float32(0.5)}), g2)
    assert len(traces) == 1
    assert not np.allclose(np.asarray(p2["w"]), np.asarray(p3["w"]))
    plain = muon(0.02, beta=0.9, weight_decay=0.1)
    u, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(np.asarray(p1["w"]), np.asarray(params["w"] + u["w"]), rtol=1e-6)


def test_learning_rate_schedule() -> None:
    params = {"w": jnp.zeros((4, 8))}
    grads = random_tree(14, {"w": (4, 8)})
    tx = muon(optax.linear_schedule(0.1, 0.0, 2), method="svd", scale=None)
    state = tx.init(params)
    norms = []
    for _ in range(3):
        u, state = tx.update(grads, state, params)
        norms.append(singular_values(u["w"]).max())
    np.testing.assert_allclose(norms, [0.1, 0.05, 0.0], atol=1e-6)


# -- optlab's one NaN/Inf policy -------------------------------------------------------------------
def assert_trees_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_all_zero(tree) -> None:
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(tree)), tree


MATRIX_PARAMS = {"w": jnp.full((4, 8), 0.1), "b": jnp.zeros(8)}
PUBLIC_TRANSFORMS = {
    "muon": lambda: muon(0.02),
    "scale_by_muon": lambda: scale_by_muon(),
    "orthogonalize_muon": lambda: orthogonalize_muon(),
}


def _params_for(name: str) -> dict[str, jax.Array]:
    # scale_by_muon / orthogonalize_muon take matrices only.
    return MATRIX_PARAMS if name == "muon" else {"w": MATRIX_PARAMS["w"]}


@pytest.mark.parametrize("name", list(PUBLIC_TRANSFORMS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_is_skipped_counted_and_never_enters_the_state(name, bad) -> None:
    tx = PUBLIC_TRANSFORMS[name]()
    params = _params_for(name)
    grads = {k: v for k, v in random_tree(15, {"w": (4, 8), "b": (8,)}).items() if k in params}
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    poisoned = {**grads, "w": grads["w"].at[0, 0].set(bad)}
    u, bad_state = update(poisoned, state, params, unknown_extra=1)
    assert_all_zero(u)
    assert isinstance(bad_state, SkipNonFiniteState)
    assert int(state.skipped_steps) == 0 and int(bad_state.skipped_steps) == 1
    assert_trees_equal(bad_state.inner, state.inner)
    # The next finite gradient is not counted and moves as if the bad step never happened.
    u_next, next_state = update(grads, bad_state, params)
    u_ref, _ = update(grads, state, params)
    assert int(next_state.skipped_steps) == 1
    assert_trees_equal(u_next, u_ref)


@pytest.mark.parametrize("name", list(PUBLIC_TRANSFORMS))
def test_float64_inf_gradient_is_skipped(name) -> None:
    # float64's bounds do not fit float32: the check must not compare in float32 (where the
    # limit rounds to Inf and lets an Inf through, poisoning the momentum).
    with jax.enable_x64(True):
        tx = PUBLIC_TRANSFORMS[name]()
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), _params_for(name))
        state = tx.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        grads["w"] = grads["w"].at[0, 0].set(np.inf)
        u, new_state = tx.update(grads, state, params)
        assert_all_zero(u)
        assert int(new_state.skipped_steps) == 1
        assert_trees_equal(new_state.inner, state.inner)


def test_finite_gradient_whose_adamw_moment_overflows_is_skipped_and_counted() -> None:
    # 1e20 is finite in float32, its square is not: AdamW's nu would become inf and freeze the
    # bias forever (optax.apply_if_finite, which checks only the gradient, let that through).
    tx = muon(0.02)
    params = MATRIX_PARAMS
    grads = random_tree(16, {"w": (4, 8), "b": (8,)})
    _, state = tx.update(grads, tx.init(params), params)
    u, new_state = jax.jit(tx.update)({**grads, "b": grads["b"] * 1e20}, state, params)
    assert_all_zero(u)
    assert int(new_state.skipped_steps) == 1
    assert_trees_equal(new_state.inner, state.inner)


def test_momentum_bound_keeps_the_momentum_finite_and_skips_above_it() -> None:
    # The guard admits |G| <= (1 - beta) M / 4 (M = float32 max), which keeps |M_t| <= M / 2
    # for ever (|M_t| <= beta M/2 + (1 - beta) M/4): gradients at 0.99 of the bound, repeated
    # until the momentum has converged to ~G / (1 - beta) = 0.99 M / 4 (0.95^300 ~ 2e-7), are all
    # applied, with finite momentum and output; 1.01 of the bound is skipped at once.
    beta, largest = 0.95, float(np.finfo(np.float32).max)
    bound = (1 - beta) * largest / 4
    r = np.asarray(random_tree(17, {"w": (4, 8)})["w"], np.float64)
    direction = r / np.abs(r).max()
    tx = scale_by_muon(beta=beta, scale=None)
    update = jax.jit(tx.update)
    g = {"w": jnp.asarray(0.99 * bound * direction, jnp.float32)}
    state = tx.init(g)
    for _ in range(300):
        u, state = update(g, state)
    assert int(state.skipped_steps) == 0
    mu = np.asarray(state.inner.mu["w"], np.float64)
    assert np.all(np.isfinite(mu)) and np.abs(mu).max() <= largest / 2
    np.testing.assert_allclose(np.abs(mu).max(), 0.99 * bound / (1 - beta), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(u["w"])))
    u, new_state = update({"w": jnp.asarray(1.01 * bound * direction, jnp.float32)}, state)
    assert_all_zero(u)
    assert int(new_state.skipped_steps) == 1
    assert_trees_equal(new_state.inner, state.inner)


# -- extreme but finite magnitudes -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "newton_schulz", "gram_newton_schulz"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1e20, 1e30])
def test_polar_factor_does_not_depend_on_the_gradient_scale(method, magnitude) -> None:
    # U V^T(c X) = U V^T(X) for c > 0: the same update at 1e-30 as at 1, to the iteration's
    # float32 round-off (1e-5 relative, x 10 for two runs of an iteration that amplifies it).
    g = random_tree(18, {"w": (8, 16)})
    tx = orthogonalize_muon(method=method)
    ref = np.asarray(apply(tx, g)["w"])
    out = np.asarray(apply(tx, {"w": g["w"] * magnitude})["w"])
    assert np.abs(ref).max() > 0.1  # a real orthogonal factor, not a vanishing one
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_a_gradient_spike_gives_the_right_direction_and_later_updates_stay_orthogonal() -> None:
    # A finite spike G = 1e20 R dominates the momentum for hundreds of steps (0.95^k 1e20 vs
    # O(1)): Muon's updates then follow polar(R), with unit singular values, never all-zero.
    rng = np.random.default_rng(19)
    params = {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
    spike = {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
    lr = 0.1
    tx = muon(lr, scale=None)
    update = jax.jit(tx.update)
    u, state = update({"w": spike["w"] * 1e20}, tx.init(params), params)
    direction = polar64(np.asarray(spike["w"]))
    # Polar Express leaves |sigma - 1| <~ 1e-2 (module docstring), so the update is within
    # that much of -lr polar(R) in the spectral norm, hence entrywise.
    np.testing.assert_allclose(np.asarray(u["w"]), -lr * direction, atol=2e-2 * lr)
    for _ in range(20):
        g = {"w": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)}
        u, state = update(g, state, params)
        s = singular_values(np.asarray(u["w"]) / lr)
        assert np.all(np.abs(s - 1) < 0.05), s
        np.testing.assert_allclose(np.asarray(u["w"]), -lr * direction, atol=5e-2 * lr)
    assert int(state.skipped_steps) == 0


# -- dtypes and shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PUBLIC_TRANSFORMS))
@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32, jnp.bool_])
def test_non_floating_parameters_are_rejected_at_init_naming_the_leaf(name, dtype) -> None:
    params = {"w": jnp.ones((4, 8), dtype)}
    with pytest.raises(ValueError, match=rf"optlab.{name} supports real floating.*\['w'\]"):
        PUBLIC_TRANSFORMS[name]().init(params)


def test_integer_leaf_in_muon_is_rejected_at_init_even_if_routed_to_adamw() -> None:
    params = {"w": jnp.ones((4, 8)), "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"\['step'\] has dtype int32"):
        muon(0.02).init(params)


def test_zero_size_leaves_get_zero_size_updates() -> None:
    params = {"w": jnp.ones((4, 8)), "empty": jnp.zeros((0, 5)), "conv": jnp.zeros((3, 3, 0, 4))}
    grads = random_tree(20, {"w": (4, 8)}) | {
        "empty": jnp.zeros((0, 5)),
        "conv": jnp.zeros((3, 3, 0, 4)),
    }
    for tx in (
        scale_by_muon(),
        orthogonalize_muon(),
        muon(0.02, labels=lambda p: {k: "muon" for k in p}),
    ):
        u, state = jax.jit(tx.update)(grads, tx.init(params), params)
        assert u["empty"].shape == (0, 5) and u["conv"].shape == (3, 3, 0, 4)
        assert float(jnp.abs(u["w"]).max()) > 0 and int(state.skipped_steps) == 0


def test_bfloat16_params_keep_their_dtype_and_momentum_follows_mu_dtype() -> None:
    params = {"w": jnp.ones((4, 8), jnp.bfloat16), "b": jnp.zeros(8, jnp.bfloat16)}
    grads = jax.tree.map(
        lambda x: x.astype(jnp.bfloat16), random_tree(21, {"w": (4, 8), "b": (8,)})
    )
    for mu_dtype, expected in ((None, jnp.bfloat16), (jnp.float32, jnp.float32)):
        tx = muon(0.02, mu_dtype=mu_dtype)
        u, state = jax.jit(tx.update)(grads, tx.init(params), params)
        assert u["w"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.bfloat16
        mus = [
            x
            for x in jax.tree.leaves(state.inner)
            if jnp.issubdtype(x.dtype, jnp.floating) and x.shape == (4, 8)
        ]
        assert mus and all(x.dtype == expected for x in mus)
        s = singular_values(np.asarray(u["w"], np.float32) / 0.02 / np.sqrt(2))  # spectral
        assert np.all(np.abs(s - 1) < 0.05), s  # bfloat16 output: 2^-8 rounding + PE's 1e-2


# -- signatures and construction-time validation ---------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "first"), [(muon, 1), (scale_by_muon, 1), (orthogonalize_muon, 1)]
)
def test_options_after_the_first_argument_are_keyword_only(factory, first) -> None:
    params = list(inspect.signature(factory).parameters.values())
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[first:]), params


@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (muon, {"learning_rate": None}, "learning_rate"),
        (muon, {"learning_rate": float("nan")}, "learning_rate"),
        (muon, {"learning_rate": "0.02"}, "learning_rate"),
        (muon, {"learning_rate": -0.1}, "learning_rate"),
        (muon, {"learning_rate": 0.1, "adam_learning_rate": float("inf")}, "adam_learning_rate"),
        (muon, {"learning_rate": 0.1, "beta": None}, "beta"),
        (muon, {"learning_rate": 0.1, "beta": "0.9"}, "beta"),
        (muon, {"learning_rate": 0.1, "beta": float("nan")}, "beta"),
        (muon, {"learning_rate": 0.1, "beta": True}, "beta"),
        (muon, {"learning_rate": 0.1, "weight_decay": None}, "weight_decay"),
        (muon, {"learning_rate": 0.1, "weight_decay": float("nan")}, "weight_decay"),
        (muon, {"learning_rate": 0.1, "adam_b1": None}, "adam_b1"),
        (muon, {"learning_rate": 0.1, "adam_b2": "0.95"}, "adam_b2"),
        (muon, {"learning_rate": 0.1, "adam_eps": float("nan")}, "adam_eps"),
        (muon, {"learning_rate": 0.1, "adam_eps": "1e-8"}, "adam_eps"),
        (muon, {"learning_rate": 0.1, "adam_weight_decay": -1.0}, "adam_weight_decay"),
        (muon, {"learning_rate": 0.1, "nesterov": None}, "nesterov"),
        (muon, {"learning_rate": 0.1, "method": None}, "method"),
        (muon, {"learning_rate": 0.1, "steps": True}, "steps"),
        (muon, {"learning_rate": 0.1, "scale": 2.0}, "scale"),
        (muon, {"learning_rate": 0.1, "mu_dtype": "int8"}, "mu_dtype"),
        (muon, {"learning_rate": 0.1, "compute_dtype": jnp.int32}, "compute_dtype"),
        (muon, {"learning_rate": 0.1, "coefficients": [(1.0, 2.0)]}, "coefficients"),
        (scale_by_muon, {"beta": None}, "beta"),
        (scale_by_muon, {"beta": float("nan")}, "beta"),
        (scale_by_muon, {"coefficients": [(1.0, float("nan"), 0.0)]}, "coefficients"),
        (orthogonalize_muon, {"method": 3}, "method"),
        (orthogonalize_muon, {"steps": 0}, "steps"),
        (orthogonalize_muon, {"compute_dtype": "complex64"}, "compute_dtype"),
    ],
)
def test_every_hyperparameter_is_validated_at_construction(factory, kwargs, name) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        factory(**kwargs)


@pytest.mark.parametrize("name", list(PUBLIC_TRANSFORMS))
def test_inject_hyperparams_with_defaults_and_unknown_extra_args(name) -> None:
    factory = {
        "muon": muon,
        "scale_by_muon": scale_by_muon,
        "orthogonalize_muon": orthogonalize_muon,
    }[name]
    kwargs = {"learning_rate": 0.02} if name == "muon" else {}
    params = _params_for(name)
    grads = {k: v for k, v in random_tree(22, {"w": (4, 8), "b": (8,)}).items() if k in params}
    injected = optax.inject_hyperparams(factory)(**kwargs)
    plain = factory(**kwargs)
    u, state = jax.jit(injected.update)(grads, injected.init(params), params)
    ref, _ = plain.update(grads, plain.init(params), params, unknown_extra=1)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    if name != "orthogonalize_muon":  # which has no numeric hyperparameter
        assert "beta" in state.hyperparams
