"""optlab.lab.connect: curve formulas, fixed endpoints, BatchNorm recomputation per t."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab.lab import connect as cn

T_VALUES = (0.0, 0.25, 0.5, 1.0)


def _bezier_reference(t, w1, theta, w2):
    return (1 - t) ** 2 * w1 + 2 * t * (1 - t) * theta + t**2 * w2


def _polychain_reference(t, w1, theta, w2):
    return w1 + 2 * t * (theta - w1) if t <= 0.5 else theta + (2 * t - 1) * (w2 - theta)


@pytest.mark.parametrize("t", T_VALUES)
def test_one_bend_curves_match_their_formulas(t):
    rng = np.random.default_rng(0)
    w1, theta, w2 = (rng.normal(size=(3, 2)).astype(np.float32) for _ in range(3))
    points = {"w": jnp.stack([w1, theta, w2])}
    for kind, ref in (("bezier", _bezier_reference), ("polychain", _polychain_reference)):
        got = np.asarray(cn.curve_point(kind, points, t)["w"])
        # A sum of three float32 products: a few ulps of the largest term.
        np.testing.assert_allclose(got, ref(t, w1, theta, w2), rtol=1e-6, atol=1e-6)
    if t in (0.0, 1.0):  # the ends are exact: all other weights are exactly 0
        end = w1 if t == 0.0 else w2
        np.testing.assert_array_equal(np.asarray(cn.curve_point("bezier", points, t)["w"]), end)
        np.testing.assert_array_equal(np.asarray(cn.curve_point("polychain", points, t)["w"]), end)


@pytest.mark.parametrize("t", T_VALUES)
def test_general_coefficients(t):
    n = 4  # two bends
    bern = [math.comb(3, k) * t**k * (1 - t) ** (3 - k) for k in range(n)]
    hat = [max(0.0, 1 - abs(t * 3 - k)) for k in range(n)]
    np.testing.assert_allclose(cn.curve_coefficients("bezier", t, n), bern, atol=1e-7)
    np.testing.assert_allclose(cn.curve_coefficients("polychain", t, n), hat, atol=1e-7)
    assert float(jnp.sum(cn.curve_coefficients("bezier", t, n))) == pytest.approx(1.0, abs=1e-6)


class MLP(nnx.Module):
    def __init__(self, bn: bool, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs) if bn else None
        self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        if self.bn is not None:
            h = self.bn(h)
        return self.l2(jax.nn.relu(h))


def _metrics(model, batch):
    x, y = batch
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return loss, (jnp.argmax(logits, -1) == y).astype(jnp.float32)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32) + 1.5  # nonzero mean: BN stats matter
    y = rng.integers(0, 3, size=n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _models(bn: bool):
    a, b = MLP(bn, rngs=nnx.Rngs(0)), MLP(bn, rngs=nnx.Rngs(1))
    for m in (a, b):
        m.eval()
    return a, b


def test_bend_starts_on_the_segment_and_bezier_is_then_the_line():
    a, b = _models(bn=False)
    curve = cn.init_curve(a, b, kind="bezier")
    w1, w2 = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    mid = jax.tree.map(lambda p: p[1], curve.points)
    jax.tree.map(lambda m, x, y: np.testing.assert_allclose(m, (x + y) / 2, atol=1e-6), mid, w1, w2)
    for t in (0.3, 0.7):
        got = curve.params_at(t)
        jax.tree.map(
            lambda g, x, y, t=t: np.testing.assert_allclose(g, (1 - t) * x + t * y, atol=1e-6),
            got,
            w1,
            w2,
        )


def test_endpoints_stay_fixed_through_training():
    a, b = _models(bn=True)
    x, y = _data()
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)] * 2
    for kind in cn.KINDS:
        curve = cn.init_curve(a, b, kind=kind)
        res = cn.train_curve(curve, _metrics, batches, optax.sgd(0.1, momentum=0.9))
        for before, after in ((nnx.state(a, nnx.Param), 0), (nnx.state(b, nnx.Param), -1)):
            jax.tree.map(
                lambda w, p, i=after: np.testing.assert_array_equal(np.asarray(p[i]), w),
                before,
                res.curve.points,
            )
        moved = jax.tree.map(
            lambda p, q: float(jnp.max(jnp.abs(p[1] - q[1]))), res.curve.points, curve.points
        )
        assert max(jax.tree.leaves(moved)) > 0  # the bend did train
        assert res.losses.shape == (6,) and np.all((res.ts >= 0) & (res.ts < 1))
        assert len(set(res.ts.tolist())) == 6  # one fresh t per batch


def test_weight_decay_is_on_the_curve_point():
    """One SGD step's bend update equals -lr * d/dtheta [loss(phi(t)) + wd/2 ||phi(t)||^2]."""
    a, b = _models(bn=False)
    x, y = _data()
    curve = cn.init_curve(a, b, kind="bezier")
    wd, lr = 0.3, 0.1
    res = cn.train_curve(curve, _metrics, [(x, y)], optax.sgd(lr), weight_decay=wd)
    t = float(res.ts[0])
    graphdef = nnx.split(a, nnx.Param, nnx.BatchStat, ...)[0]

    def objective(bend):
        pts = jax.tree.map(lambda p, m: p.at[1].set(m), curve.points, bend)
        w = cn.curve_point("bezier", pts, t)
        model = nnx.merge(graphdef, w, curve.batch_stats, curve.rest, copy=True)
        l2 = sum(jnp.sum(v**2) for v in jax.tree.leaves(w))
        return jnp.mean(_metrics(model, (x, y))[0]) + 0.5 * wd * l2

    bend0 = jax.tree.map(lambda p: p[1], curve.points)
    expected = jax.tree.map(lambda m, g: m - lr * g, bend0, jax.grad(objective)(bend0))
    got = jax.tree.map(lambda p: p[1], res.curve.points)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6), got, expected)


def test_batch_stats_are_recomputed_over_the_training_set():
    a, b = _models(bn=True)
    x, y = _data()
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]  # unequal sizes: weights 16 and 8
    curve = cn.init_curve(a, b, kind="bezier")
    t = 0.5
    stats = cn.batch_stats_at(curve, _metrics, t, batches)
    # Reference: the BatchNorm input at phi(t) is l1(x); per-batch mean and biased variance,
    # averaged with the batch sizes as weights (the reference's cumulative average).
    w = curve.params_at(t)
    kernel, bias = np.asarray(w["l1"]["kernel"], np.float64), np.asarray(w["l1"]["bias"])
    means, vars_, sizes = [], [], []
    for xb, _ in batches:
        h = np.asarray(xb, np.float64) @ kernel + bias
        means.append(h.mean(0))
        vars_.append(h.var(0))
        sizes.append(len(xb))
    sz = np.asarray(sizes, np.float64)[:, None]
    # float32 forward pass of 4-term dot products, and E[h^2] - E[h]^2 (Flax's fast variance):
    # absolute error ~ eps * E[h^2] ~ 1e-6 for |h| ~ 3.
    np.testing.assert_allclose(stats["bn"]["mean"], (sz * means).sum(0) / 24, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["bn"]["var"], (sz * vars_).sum(0) / 24, rtol=1e-4, atol=1e-5)


def test_skipping_the_batchnorm_recompute_changes_the_loss():
    a, b = _models(bn=True)
    x, y = _data()
    train = [(x, y)]
    curve = cn.init_curve(a, b, kind="polychain")
    ts = [0.0, 0.5]
    with_bn = cn.evaluate_curve(curve, _metrics, train, train, ts=ts)
    without = cn.evaluate_curve(curve, _metrics, train, train, ts=ts, recompute_bn=False)
    # Without the recompute the stored statistics (model a's untouched (0, 1) ones) are used;
    # the data's mean is far from 0, so the losses differ by far more than rounding.
    assert np.all(np.abs(with_bn.train_loss - without.train_loss) > 1e-2)
    # With it, t = 0 is model a with its statistics computed on the data in train mode.
    ref = MLP(True, rngs=nnx.Rngs(0))
    ref.train()
    ref.bn.momentum = 0.0
    ref(x)
    ref.eval()
    assert with_bn.train_loss[0] == pytest.approx(float(jnp.mean(_metrics(ref, (x, y))[0])), 1e-5)


def test_evaluation_on_the_line_matches_the_end_models():
    a, b = _models(bn=False)
    x, y = _data()
    ev = cn.evaluate_curve(cn.line(a, b), _metrics, [(x, y)], [(x[:8], y[:8])], num_points=5)
    assert ev.ts.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    for i, m in ((0, a), (-1, b)):
        loss, correct = _metrics(m, (x, y))
        # w(0) = w1 exactly; float32 sums of 24 losses.
        assert ev.train_loss[i] == pytest.approx(float(jnp.mean(loss)), rel=1e-6)
        # Exact count / 24 against a float32 mean: one float32 rounding.
        assert ev.train_acc[i] == pytest.approx(float(jnp.mean(correct)), abs=1e-7)
    assert cn.barrier([1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert ev.to_dict()["train_barrier"] == pytest.approx(cn.barrier(ev.train_loss))


def test_bad_input_raises():
    a, b = _models(bn=False)
    with pytest.raises(ValueError, match="kind"):
        cn.init_curve(a, b, kind="spline")
    with pytest.raises(ValueError, match="num_bends"):
        cn.init_curve(a, b, num_bends=-1)
    with pytest.raises(ValueError, match="no bend"):
        cn.train_curve(cn.line(a, b), _metrics, [], optax.sgd(0.1))
    with pytest.raises(ValueError, match="weight_decay"):
        cn.train_curve(cn.init_curve(a, b), _metrics, [], optax.sgd(0.1), weight_decay=-1.0)
    with pytest.raises(ValueError, match="same parameters"):
        cn.init_curve(a, nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
