"""Tests of optlab.muon against independent float64 NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab.linalg import orthogonalize
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


def polar64(x: np.ndarray) -> np.ndarray:
    """U V^T of x in float64 (NumPy's SVD)."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return u @ vt


def random_tree(seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def singular_values(x: jax.Array) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


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
            np.testing.assert_allclose(np.asarray(state.mu[k]), mu[k], rtol=1e-5, atol=1e-6)
    assert int(state.count) == 3


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
        np.testing.assert_allclose(np.asarray(state.mu["w"]), m, rtol=1e-5)
    tx = scale_by_muon(mu_dtype=jnp.bfloat16)
    state = tx.init(grads[0])
    assert isinstance(state, ScaleByMuonState) and state.mu["w"].dtype == jnp.bfloat16
    updates, state2 = jax.jit(tx.update)(grads[0], state)
    assert state2.mu["w"].dtype == jnp.bfloat16 and updates["w"].dtype == jnp.float32


# -- layouts ---------------------------------------------------------------------------------------
def test_conv_kernel_is_orthogonalized_as_reshaped_matrix() -> None:
    kernel = random_tree(3, {"k": (3, 3, 4, 8)})  # Flax [h, w, in, out]
    out = orthogonalize_muon(method="svd").update(kernel, optax.EmptyState())[0]["k"]
    expected = polar64(np.asarray(kernel["k"]).reshape(36, 8)).reshape(3, 3, 4, 8)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)


def test_nnx_attention_projection_kernels_use_in_by_heads_times_head_dim() -> None:
    g = random_tree(4, {"q": (16, 2, 8), "o": (2, 8, 16)})
    tree = {"attn": {"query": {"kernel": g["q"]}, "out": {"kernel": g["o"]}}}
    out = orthogonalize_muon(method="svd").update(tree, optax.EmptyState())[0]["attn"]
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
    out = orthogonalize_muon(method="svd", dimension_numbers=dims).update(g, None)[0]
    x = np.asarray(g["stacked"])
    for i in range(3):
        np.testing.assert_allclose(np.asarray(out["stacked"][i]), polar64(x[i]), atol=2e-5)
    x = np.asarray(g["middle"])
    for j in range(2):
        ref = polar64(x[:, j].reshape(6, 15)).reshape(6, 5, 3)
        np.testing.assert_allclose(np.asarray(out["middle"][:, j]), ref, atol=2e-5)

    # The same through a root callable (optax's convention) and per-leaf callables.
    by_fn = orthogonalize_muon(method="svd", dimension_numbers=lambda u: dims).update(g, None)[0]
    per_leaf = {"stacked": lambda leaf: dims["stacked"], "middle": dims["middle"]}
    by_leaf = orthogonalize_muon(method="svd", dimension_numbers=per_leaf).update(g, None)[0]
    for k in g:
        np.testing.assert_allclose(np.asarray(by_fn[k]), np.asarray(out[k]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(by_leaf[k]), np.asarray(out[k]), atol=1e-6)


def test_grouped_leaves_equal_individual_orthogonalization() -> None:
    g = random_tree(6, {"a": (8, 16), "b": (16, 8), "c": (8, 16), "d": (8, 8)})
    for method in ("newton_schulz", "gram_newton_schulz"):  # ("auto" is checked below)
        out = jax.jit(orthogonalize_muon(method=method).update)(g, None)[0]
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
        scale_by_muon().update(grads, scale_by_muon().init(params))
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
    np.testing.assert_allclose(np.asarray(updates["embed"]["embedding"][...]),
                               np.asarray(ref["embed"]["embedding"][...]), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(updates["head"]["kernel"][...]),
                               np.asarray(ref["head"]["kernel"][...]), rtol=1e-5, atol=1e-9)
    hidden = np.asarray(updates["hidden"]["kernel"][...])  # 8 x 16, Muon: sigma ~ lr*sqrt(2)
    assert np.all(np.abs(singular_values(hidden) / (0.02 * np.sqrt(2)) - 1) < 0.35)


def test_labels_exclude_names_linen_suffix_and_custom_list() -> None:
    params = {"Embed_0": {"embedding": jnp.zeros((10, 4))},
              "Dense_0": {"kernel": jnp.zeros((4, 4))},
              "lm_head": {"kernel": jnp.zeros((4, 10))},
              "stem": {"kernel": jnp.zeros((3, 3, 1, 4))}}
    assert muon_labels(params) == {"Embed_0": {"embedding": "adam"},
                                   "Dense_0": {"kernel": "muon"},
                                   "lm_head": {"kernel": "adam"}, "stem": {"kernel": "muon"}}
    custom = muon_labels(params, exclude=(*MUON_EXCLUDED_NAMES, "stem"))
    assert custom["stem"]["kernel"] == "adam"


# -- scales and method choice ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scale", "expected"),
    [("spectral", lambda fi, fo: np.sqrt(max(1.0, fo / fi))),
     ("rms", lambda fi, fo: 0.2 * np.sqrt(max(fi, fo))),
     (None, lambda fi, fo: 1.0),
     (lambda fi, fo: fi / 100.0, lambda fi, fo: fi / 100.0)],
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
    out = jax.jit(orthogonalize_muon().update)(g, None)[0]
    ortho = jax.jit(orthogonalize, static_argnames=("method", "coefficients"))
    wide_ref = ortho(g["wide"], method="gram_newton_schulz", coefficients="polar_express")
    np.testing.assert_allclose(np.asarray(out["wide"]), np.asarray(wide_ref), atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["square"]),
                               np.asarray(ortho(g["square"], method="polar_express")), atol=2e-5)
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
        assert updates[k].dtype == jnp.float32 and state.mu[k].dtype == jnp.bfloat16
        s = singular_values(updates[k])
        # Polar Express in bfloat16: the top of the spectrum to ~1e-2; bfloat16's rounding of the
        # Gram matrix leaves sigma_min ~0.87 here (cond 5), still inside NS's [0.68, 1.13] band.
        assert np.all(np.abs(s - 1) < 0.2) and np.median(np.abs(s - 1)) < 0.02, s


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [(scale_by_muon, {"method": "qr"}, "method must be one of"),
     (orthogonalize_muon, {"method": "newton"}, "method must be one of"),
     (scale_by_muon, {"scale": "width"}, "scale must be one of"),
     (scale_by_muon, {"beta": 1.0}, r"beta must be in \[0, 1\)"),
     (scale_by_muon, {"beta": -0.1}, r"beta must be in \[0, 1\)"),
     (scale_by_muon, {"steps": 0}, "steps must be an integer >= 1"),
     (scale_by_muon, {"steps": 2.5}, "steps must be an integer >= 1"),
     (scale_by_muon, {"nesterov": "yes"}, "nesterov must be a bool"),
     (scale_by_muon, {"mu_dtype": jnp.int32}, "mu_dtype must be"),
     (scale_by_muon, {"coefficients": "chebyshev"}, "coefficients must be"),
     (muon, {"learning_rate": 0.1, "beta": 1.5}, "beta must be in"),
     (muon, {"learning_rate": 0.1, "method": "polar"}, "method must be one of"),
     (muon, {"learning_rate": 0.1, "adam_b2": 1.0}, r"adam_b2 must be in \[0, 1\)"),
     (muon, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay must be >= 0")],
)
def test_bad_input_raises_value_error_naming_the_argument(factory, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_bad_dimension_numbers_raise() -> None:
    g = random_tree(12, {"w": (3, 4, 5)})
    with pytest.raises(ValueError, match="overlap"):
        orthogonalize_muon(dimension_numbers=MuonDimensionNumbers(0, (0, 1))).update(g, None)
    with pytest.raises(ValueError, match="out of range"):
        orthogonalize_muon(dimension_numbers=MuonDimensionNumbers(0, 3)).update(g, None)


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


def test_nonfinite_gradient_is_skipped_and_never_enters_momentum() -> None:
    params = {"w": jnp.ones((4, 8)) * 0.1, "b": jnp.zeros(8)}
    grads = random_tree(15, {"w": (4, 8), "b": (8,)})
    tx = muon(0.02)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    bad = {**grads, "w": grads["w"].at[0, 0].set(jnp.nan)}
    u, bad_state = jax.jit(tx.update)(bad, state, params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    assert int(bad_state.total_notfinite) == 1
    for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(bad_state.inner_state),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not hasattr(muon(0.02, skip_nonfinite=False).init(params), "total_notfinite")
