"""optlab.lab.landscape against numpy transcriptions of Li et al.'s reference code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab.lab import landscape as ls


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


class SmallNet(nnx.Module):
    """conv (3x3, 4 filters) -> BatchNorm -> relu -> dense (5 outputs), plus an embedding."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * 4, 5, rngs=rngs)
        self.embed = nnx.Embed(6, 5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn(self.conv(x)))
        return self.dense(h.reshape(h.shape[0], -1)) + self.embed.embedding[...][0]


def _net(train_steps: int = 0) -> SmallNet:
    """The net with BatchNorm statistics moved off their (0, 1) initial values."""
    model = SmallNet(rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 6, 6, 2)), jnp.float32)
    model.train()
    for _ in range(train_steps):
        model(x)
    model.eval()
    return model


def _batch(n: int = 16, seed: int = 2):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 6, 6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, size=n), jnp.int32)
    return x, y


def _xent(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _reference_filter_normalize(d: np.ndarray, w: np.ndarray, out_axis: int) -> np.ndarray:
    """Li et al.'s loop (net_plotter.normalize_direction, norm='filter') in float64 on the
    PyTorch layout: move the output axis first, rescale each slice along dim 0."""
    d_t = np.moveaxis(np.asarray(d, np.float64), out_axis, 0).copy()
    w_t = np.moveaxis(np.asarray(w, np.float64), out_axis, 0)
    for i in range(d_t.shape[0]):
        d_t[i] *= np.linalg.norm(w_t[i]) / (np.linalg.norm(d_t[i]) + 1e-10)
    return np.moveaxis(d_t, 0, out_axis)


def _named_leaves(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_filter_normalization_matches_numpy_reference():
    model = _net(train_steps=2)
    params = nnx.state(model, nnx.Param)
    raw = jax.tree.map(
        lambda w: jnp.asarray(np.random.default_rng(w.size).normal(size=w.shape), w.dtype),
        params,
    )
    direction = _named_leaves(ls.normalize_direction(raw, params))
    weights, raw_np = _named_leaves(params), _named_leaves(raw)
    assert set(direction) == set(weights)  # BatchNorm statistics are not in the direction
    checked = set()
    for name, w in weights.items():
        d = direction[name]
        if w.ndim <= 1:  # biases, BatchNorm scale and shift: zero (ignore='biasbn')
            assert np.all(d == 0), name
            continue
        # Flax layouts: conv (kh, kw, in, out) and dense (in, out) filters on the last axis,
        # the embedding table's rows (one per token) on the first.
        axis = 0 if "embedding" in name else -1
        ref = _reference_filter_normalize(raw_np[name], w, axis)
        # float32 rounding of a product and two norms of <= 64 terms: a few ulps.
        np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-7, err_msg=name)
        w_norms = np.linalg.norm(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), axis=1)
        d_norms = np.linalg.norm(np.moveaxis(d, axis, 0).reshape(d.shape[axis], -1), axis=1)
        np.testing.assert_allclose(d_norms, w_norms, rtol=1e-5, err_msg=name)
        checked.add(name.split("]")[0])
    assert checked == {"['conv'", "['dense'", "['embed'"}


def test_ignore_none_copies_one_dimensional_weights():
    params = nnx.state(_net(), nnx.Param)
    d = ls.random_direction(params, jax.random.key(3), ignore=None)
    for name, w in _named_leaves(params).items():
        if w.ndim <= 1:
            np.testing.assert_array_equal(_named_leaves(d)[name], w)


def test_layer_and_weight_norms():
    w = {"k": jnp.asarray(np.arange(1.0, 7.0).reshape(2, 3), jnp.float32)}
    d = {"k": jnp.ones((2, 3), jnp.float32)}
    layer = np.asarray(ls.normalize_direction(d, w, norm="layer")["k"])
    np.testing.assert_allclose(np.linalg.norm(layer), np.linalg.norm(w["k"]), rtol=1e-6)
    weight = np.asarray(ls.normalize_direction(d, w, norm="weight")["k"])
    np.testing.assert_array_equal(weight, np.asarray(w["k"]))


def test_random_direction_is_gaussian_before_normalization():
    """Li et al. draw randn (zero mean, unit variance); the loss-landscapes package's uniform
    [0, 1] draws would have mean 1/2."""
    w = {"k": jnp.ones((200, 100), jnp.float32)}
    # dfilter: each column of the draw scaled to unit norm, entries ~ N(0, 1/200).
    d = np.asarray(ls.random_direction(w, jax.random.key(0), norm="dfilter")["k"])
    # The mean of 20000 such entries has sd 1/sqrt(200 * 20000); allow 5 sd. Uniform [0, 1]
    # draws would give a mean near 0.5 / sqrt(200 / 3) ~ 0.06.
    assert abs(d.mean()) < 5 / np.sqrt(200 * 20000)
    # The fraction of negative entries: sd sqrt(0.25 / 20000) ~ 0.0035; 0.02 is ~6 sd.
    assert (d < 0).mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_origin_of_the_grid_is_the_models_loss(chunk_size):
    model, batch = _net(train_steps=2), _batch()
    expected = float(_xent(model, batch))
    l1 = ls.landscape_1d(model, _xent, batch, key=jax.random.key(0), num=7, chunk_size=chunk_size)
    l2 = ls.landscape_2d(model, _xent, [batch, batch], key=jax.random.key(1), num=(5, 3))
    assert l1.coords[0][3] == 0.0 and l2.coords[0][2] == 0.0 and l2.coords[1][1] == 0.0
    # w + 0 * d is w exactly; a vmapped evaluation may sum in another order: float32
    # rounding of sums of <= 64 terms, well inside 1e-5 relative.
    assert l1.losses[3] == pytest.approx(expected, rel=1e-5)
    assert l2.losses[2, 1] == pytest.approx(expected, rel=1e-5)
    assert l2.losses.shape == (5, 3)
    # Away from the origin the loss changes (the directions are not zero).
    assert abs(l1.losses[0] - expected) > 1e-3


def test_grid_on_a_quadratic_matches_the_analytic_surface(x64):
    rng = np.random.default_rng(0)
    n = 7
    m = rng.normal(size=(n, n))
    a_mat = m @ m.T + np.eye(n)
    params = {"u": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=(2, 2)))}
    d1 = {"u": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=(2, 2)))}
    d2 = {"u": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=(2, 2)))}
    flat = lambda t: jnp.concatenate([t["u"], t["v"].ravel()])  # noqa: E731
    batches = [jnp.asarray(rng.normal(size=n)) for _ in range(2)]

    def loss(p, c):  # one quadratic per batch, centered at c
        x = flat(p) - c
        return 0.5 * x @ jnp.asarray(a_mat) @ x

    aa, bb = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-2, 1, 5), indexing="ij")
    coords = np.stack([aa.ravel(), bb.ravel()], 1)
    got = ls.loss_surface(loss, params, [d1, d2], coords, batches, weights=[1.0, 3.0], chunk_size=7)
    w, e1, e2 = (np.asarray(flat(t)) for t in (params, d1, d2))
    expected = np.zeros(len(coords))
    for c, wt in zip(batches, [0.25, 0.75], strict=True):
        x = w[None] + coords[:, :1] * e1 + coords[:, 1:] * e2 - np.asarray(c)[None]
        expected += wt * 0.5 * np.einsum("pi,ij,pj->p", x, a_mat, x)
    # float64 throughout: rounding ~ n^2 eps relative.
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def _checkpoints(seed=0, m=6):
    """A fake trajectory over a tree with a 1-D leaf, drifting mostly along one direction."""
    rng = np.random.default_rng(seed)
    final = {"k": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    drift = rng.normal(size=15)
    ckpts = []
    for i in range(m):
        v = (m - 1 - i) * drift + 0.3 * rng.normal(size=15)
        ckpts.append({"k": final["k"] + v[:12].reshape(4, 3), "b": final["b"] + v[12:]})
    return ckpts, final


def test_trajectory_pca_matches_numpy_svd(x64):
    ckpts, final = _checkpoints()
    pca = ls.trajectory_pca(ckpts, final)
    # Reference: rows w_i - w_final over the leaves in tree order ('b' before 'k'), with the
    # 1-D leaf zeroed (ignore='biasbn'), centered, SVD (scikit-learn's PCA).
    rows = np.stack([np.concatenate([np.zeros(3), np.ravel(c["k"] - final["k"])]) for c in ckpts])
    centered = rows - rows.mean(0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance, s[:2] ** 2 / (len(ckpts) - 1), rtol=1e-10)
    dirs = np.stack([np.concatenate([np.ravel(d["b"]), np.ravel(d["k"])]) for d in pca.directions])
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(2), atol=1e-12)  # orthonormal
    for k in range(2):  # the same subspace vectors, up to sign
        assert abs(abs(dirs[k] @ vt[k]) - 1.0) < 1e-10
        np.testing.assert_array_equal(np.asarray(pca.directions[k]["b"]), 0.0)
    np.testing.assert_allclose(pca.coords, rows @ dirs.T, rtol=1e-10, atol=1e-12)


def test_trajectory_pca_agrees_with_scikit_learn(x64):
    decomposition = pytest.importorskip("sklearn.decomposition")
    ckpts, final = _checkpoints(seed=1, m=8)
    pca = ls.trajectory_pca(ckpts, final, ignore=None)
    rows = np.stack(
        [
            np.concatenate([np.ravel(c["b"] - final["b"]), np.ravel(c["k"] - final["k"])])
            for c in ckpts
        ]
    )
    sk = decomposition.PCA(n_components=2).fit(rows)
    np.testing.assert_allclose(
        pca.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-8
    )


def test_projection_recovers_coefficients_of_non_orthogonal_directions(x64):
    rng = np.random.default_rng(0)
    d1, d2 = ({"a": jnp.asarray(rng.normal(size=5))} for _ in range(2))
    d2 = {"a": d2["a"] + 0.9 * d1["a"]}  # far from orthogonal
    diffs = [{"a": 2.0 * d1["a"] - 0.5 * d2["a"]}, {"a": 0.0 * d1["a"]}]
    np.testing.assert_allclose(ls.project(diffs, [d1, d2]), [[2.0, -0.5], [0.0, 0.0]], atol=1e-12)


def test_sublevel_width_and_area():
    a = np.linspace(-1, 1, 21)
    # Linear interpolation is exact on |a|: {|a| <= 0.25} has width 0.5.
    assert ls.sublevel_width(a, np.abs(a), rise=0.25) == pytest.approx(0.5, abs=1e-12)
    assert ls.sublevel_width(a, 3 * np.abs(a), rise=0.25) == pytest.approx(0.5 / 3, abs=1e-12)
    # A set reaching the grid's end is cut there.
    assert ls.sublevel_width(a, np.zeros_like(a), rise=0.1) == pytest.approx(2.0)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    area = ls.sublevel_area((a, a), np.maximum(np.abs(aa), np.abs(bb)), rise=0.35)
    assert area == pytest.approx(7 * 7 * 0.1 * 0.1)  # |a|, |b| <= 0.35: 7 x 7 grid points


def _zero(params, batch):
    return jnp.zeros(())


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda p: ls.normalize_direction(p, p, norm="unit"), "norm"),
        (lambda p: ls.normalize_direction(p, p, ignore="bias"), "ignore"),
        (lambda p: ls.trajectory_pca([p], p), "at least 2"),
        (lambda p: ls.trajectory_pca([p, p], p, n_components=3), "n_components"),
        (lambda p: ls.loss_surface(_zero, p, [p], np.zeros((3, 2)), None), "coords"),
        (lambda p: ls.loss_surface(_zero, p, [p], [0.0], [None], weights=[-1]), "weights"),
    ],
)
def test_bad_input_raises(call, needle):
    p = {"k": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match=needle):
        call(p)
