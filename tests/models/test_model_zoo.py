"""Tests for optlab.models: shapes, parameter counts, naming, modes, a few training steps each.

On CPU, building a model compiles one small XLA program per parameter shape and every eager
op compiles too, so the tests count and trace abstract models (``nnx.eval_shape``), build each
concrete model once per module and run it under ``nnx.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab.models import (
    EMBEDDING_NAMES,
    HEAD_NAMES,
    MLP,
    STEM_NAMES,
    LeNet5,
    LogisticRegression,
    LSTMTagger,
    ResNet18,
    Transformer,
    count_params,
)

# Tiny configurations, shared by the tests below.
MAKERS = {
    "logistic_regression": lambda: LogisticRegression(64, 10, rngs=nnx.Rngs(0)),
    "mlp": lambda: MLP(64, 10, hidden=(32, 32), rngs=nnx.Rngs(0)),
    "lenet5": lambda: LeNet5(rngs=nnx.Rngs(0)),
    # Two stages keep both shortcut kinds (identity, 1x1 projection) at half the compile cost;
    # the default four-stage network is checked abstractly below.
    "resnet18": lambda: ResNet18(num_classes=10, width=2, stage_sizes=(2, 2), rngs=nnx.Rngs(0)),
    "lstm_tagger": lambda: LSTMTagger(30, 5, embed_dim=8, hidden_size=16, rngs=nnx.Rngs(0)),
    "bilstm_tagger": lambda: LSTMTagger(
        30, 5, embed_dim=8, hidden_size=16, bidirectional=True, rngs=nnx.Rngs(0)
    ),
    "transformer": lambda: Transformer(
        30, d_model=16, num_heads=2, num_layers=1, max_len=8, rngs=nnx.Rngs(0)
    ),
}

# (input batch, labels) per model; ResNet is size-agnostic (global pooling), so 8x8 images.
_kx, _ky = jax.random.split(jax.random.key(0))
TOKENS = jax.random.randint(_kx, (8, 6), 0, 30)
BATCHES = {
    "logistic_regression": (jax.random.normal(_kx, (16, 8, 8, 1)), jnp.arange(16) % 10),
    "mlp": (jax.random.normal(_kx, (16, 64)), jnp.arange(16) % 10),
    "lenet5": (jax.random.normal(_kx, (8, 32, 32, 1)), jnp.arange(8) % 10),
    "resnet18": (jax.random.normal(_kx, (8, 8, 8, 3)), jnp.arange(8) % 10),
    "lstm_tagger": (TOKENS, jax.random.randint(_ky, (8, 6), 0, 5)),
    "bilstm_tagger": (TOKENS, jax.random.randint(_ky, (8, 6), 0, 5)),
    # Grokking-style: the answer is read at the last position.
    "transformer": (TOKENS, jax.random.randint(_ky, (8,), 0, 30)),
}
OUT_SHAPES = {
    "logistic_regression": (16, 10),
    "mlp": (16, 10),
    "lenet5": (8, 10),
    "resnet18": (8, 10),
    "lstm_tagger": (8, 6, 5),
    "bilstm_tagger": (8, 6, 5),
    "transformer": (8, 6, 30),
}

_forward = nnx.jit(lambda model, x: model(x))


@pytest.fixture(scope="module")
def models() -> dict[str, nnx.Module]:
    return {name: make() for name, make in MAKERS.items()}


def _abstract(make):
    return nnx.eval_shape(make)


def _param_paths(model: nnx.Module) -> list[tuple]:
    return [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


# --------------------------------------------------------------------------------------------
# Parameter counts.
# --------------------------------------------------------------------------------------------


def test_lenet5_parameter_count_matches_the_thesis_layers():
    model = _abstract(lambda: LeNet5(num_classes=10, rngs=nnx.Rngs(0)))
    c1 = 6 * (5 * 5 * 1 + 1)
    c3 = 16 * (5 * 5 * 6 + 1)
    c5 = 120 * (5 * 5 * 16 + 1)
    f6 = 84 * (120 + 1)
    out = 10 * (84 + 1)
    assert (c1, c3, c5, f6, out) == (156, 2416, 48120, 10164, 850)
    assert count_params(model) == c1 + c3 + c5 + f6 + out == 61_706


def test_resnet18_default_shape_and_parameter_count_is_the_pytorch_cifar_one():
    model = _abstract(lambda: ResNet18(rngs=nnx.Rngs(0)))
    assert count_params(model) == 11_173_962
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, 10)
    assert len(model.blocks) == 8
    # 20 BatchNorm layers (stem, 16 in blocks, 3 shortcuts), running mean and variance each.
    bn_channels = 64 + 4 * 64 + 4 * 128 + 4 * 256 + 4 * 512 + 128 + 256 + 512
    assert count_params(model, nnx.BatchStat) == 2 * bn_channels


def test_transformer_parameter_count():
    d, vocab, max_len, layers = 128, 101, 64, 2
    model = _abstract(lambda: Transformer(vocab, max_len=max_len, rngs=nnx.Rngs(0)))
    per_block = 12 * d * d + 13 * d
    assert layers * per_block == 396_544  # seed 001's "about 4e5 non-embedding parameters"
    assert count_params(model) == vocab * d + max_len * d + layers * per_block + 2 * d + d * vocab


def test_small_model_parameter_counts():
    assert count_params(_abstract(MAKERS["logistic_regression"])) == 64 * 10 + 10
    binary = _abstract(lambda: LogisticRegression(10, 1, use_bias=False, rngs=nnx.Rngs(0)))
    assert count_params(binary) == 10
    assert count_params(_abstract(MAKERS["mlp"])) == (64 * 32 + 32) + (32 * 32 + 32) + (
        32 * 10 + 10
    )
    # Embedding, LSTM (input and recurrent kernels for 4 gates, one bias), head.
    lstm = 30 * 8 + (8 * 64 + 16 * 64 + 64) + (16 * 5 + 5)
    assert count_params(_abstract(MAKERS["lstm_tagger"])) == lstm
    bilstm = 30 * 8 + 2 * (8 * 64 + 16 * 64 + 64) + (32 * 5 + 5)
    assert count_params(_abstract(MAKERS["bilstm_tagger"])) == bilstm


# --------------------------------------------------------------------------------------------
# Shapes, naming and behaviour.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_output_shapes(name):
    model = _abstract(MAKERS[name])
    out = nnx.eval_shape(lambda m, x: m(x), model, BATCHES[name][0])
    assert out.shape == OUT_SHAPES[name]


def test_lenet5_feature_map_sizes_and_channel_free_input():
    model = _abstract(MAKERS["lenet5"])
    x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    shape = lambda f, *a: nnx.eval_shape(f, model, *a).shape  # noqa: E731
    assert shape(lambda m, x: m.stem(x), x) == (1, 28, 28, 6)  # C1
    pool = lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))  # noqa: E731
    assert shape(lambda m, x: pool(m.stem(x)), x) == (1, 14, 14, 6)  # S2
    assert shape(lambda m, x: m.c3(pool(m.stem(x))), x) == (1, 10, 10, 16)  # C3
    assert shape(lambda m, x: m.c5(pool(m.c3(pool(m.stem(x))))), x) == (1, 1, 1, 120)  # C5
    assert shape(lambda m, x: m(x), jax.ShapeDtypeStruct((2, 32, 32), jnp.float32)) == (2, 10)


def test_layer_naming_contract():
    """Embeddings, output layers and conv stems carry the names label helpers route on."""
    for name, make in MAKERS.items():
        paths = _param_paths(_abstract(make))
        tops = {path[0] for path in paths}
        assert tops & set(HEAD_NAMES), name
        if name in ("lenet5", "resnet18"):
            assert tops & set(STEM_NAMES), name
        if "lstm" in name or name == "transformer":
            assert tops & set(EMBEDDING_NAMES), name
            assert all(p[-1] == "embedding" for p in paths if p[0] in EMBEDDING_NAMES)
    tf = _abstract(MAKERS["transformer"])
    assert {("embed", "embedding"), ("pos_embed", "embedding"), ("lm_head", "kernel")} <= set(
        _param_paths(tf)
    )
    # Hidden weights of the Transformer are 2D matrices (no fused or 3D attention kernels).
    for path, v in nnx.to_flat_state(nnx.state(tf, nnx.Param)):
        if path[-1] == "kernel":
            assert len(v.shape) == 2, path


def test_transformer_is_causal(models):
    model = models["transformer"]
    a = TOKENS
    b = a.at[:, 4].set((a[:, 4] + 1) % 30)
    la, lb = _forward(model, a), _forward(model, b)
    np.testing.assert_allclose(la[:, :4], lb[:, :4], atol=1e-5)
    assert not np.allclose(la[:, 4:], lb[:, 4:])


def test_transformer_rejects_bad_configs():
    with pytest.raises(ValueError, match="max_len"):
        nnx.eval_shape(lambda m, x: m(x), _abstract(MAKERS["transformer"]), jnp.zeros((1, 9), int))
    with pytest.raises(ValueError, match="divisible"):
        _abstract(lambda: Transformer(5, d_model=10, num_heads=3, rngs=nnx.Rngs(0)))


def test_lstm_tagger_reads_left_to_right_unless_bidirectional(models):
    a = TOKENS
    b = a.at[:, 4].set((a[:, 4] + 1) % 30)
    uni, bi = models["lstm_tagger"], models["bilstm_tagger"]
    np.testing.assert_allclose(_forward(uni, a)[:, :4], _forward(uni, b)[:, :4], atol=1e-6)
    assert not np.allclose(_forward(bi, a)[:, :4], _forward(bi, b)[:, :4])


def test_resnet_batchnorm_train_and_eval_modes(models):
    model = models["resnet18"]
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 2.0 + 1.0
    x_other = x.at[1:].set(-x[1:])  # same first example, different rest of the batch

    # Train mode: batch statistics; running averages move by 1 - momentum = 0.1.
    model.train()
    mean_before = jnp.array(model.stem_bn.mean[...])
    batch_mean = jnp.mean(nnx.jit(lambda m, x: m.stem(x))(model, x), axis=(0, 1, 2))
    y_train = _forward(model, x)
    np.testing.assert_allclose(
        model.stem_bn.mean[...], 0.9 * mean_before + 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    # An example's output depends on the rest of the batch.
    assert not np.allclose(_forward(model, x_other)[0], y_train[0], atol=1e-4)

    # Eval mode: running averages, left unchanged; each example independent of its batch.
    model.eval()
    assert model.stem_bn.use_running_average is True
    stats = jax.tree.map(jnp.array, nnx.state(model, nnx.BatchStat))
    np.testing.assert_allclose(_forward(model, x)[0], _forward(model, x_other)[0], atol=1e-5)
    after = nnx.state(model, nnx.BatchStat)
    for (_, u), (_, v) in zip(nnx.to_flat_state(stats), nnx.to_flat_state(after), strict=True):
        np.testing.assert_array_equal(u[...], v[...])
    model.train()
    assert model.stem_bn.use_running_average is False


# --------------------------------------------------------------------------------------------
# A few optimizer steps reduce the loss, for every model.
# --------------------------------------------------------------------------------------------


def _loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model(x)
    if logits.ndim == y.ndim + 2:  # sequence model, label for the last position only
        logits = logits[:, -1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def _adam_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_few_adam_steps_reduce_the_loss(models, name):
    model = models[name]
    model.train()
    x, y = BATCHES[name]
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    # The loss returned by step k is measured before update k: the last is after 5 updates.
    losses = [float(_adam_step(model, optimizer, x, y)) for _ in range(6)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], (name, losses)


def test_split_merge_sgd_step_reduces_the_loss(models):
    """The functional route (nnx.split / merge + jax.grad) works as well as nnx.Optimizer."""
    graphdef, params, rest = nnx.split(models["lenet5"], nnx.Param, ...)
    x, y = BATCHES["lenet5"]

    @jax.jit
    def value_and_grad(p):
        return jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p, rest), x, y))(p)

    tx = optax.sgd(0.05)
    state = tx.init(params)
    before, grads = value_and_grad(params)
    updates, state = tx.update(grads, state, params)
    after, _ = value_and_grad(optax.apply_updates(params, updates))
    assert after < before


def test_binary_logistic_regression_is_seed_001_model():
    """``LogisticRegression(n, 1, use_bias=False)`` computes ``<a, w>``; zero init: f = log 2."""
    from optlab.data import logistic_regression_objective, make_logistic_regression

    ds = make_logistic_regression()
    model = LogisticRegression(10, 1, use_bias=False, rngs=nnx.Rngs(0))
    a, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    @nnx.jit
    def losses(m):
        margins = (2.0 * y - 1.0) * m(a)[:, 0]
        w = m.head.kernel[...]
        via_model = jnp.mean(jnp.logaddexp(0.0, -margins)) + 0.5 * jnp.sum(w**2)
        return via_model, logistic_regression_objective(w, a, y, ds.info["mu"])

    via_model, direct = losses(model)
    np.testing.assert_allclose(direct, np.log(2.0), rtol=1e-6)
    model.head.kernel[...] = jnp.linspace(-1.0, 1.0, 10)[:, None]
    via_model, direct = losses(model)
    np.testing.assert_allclose(via_model, direct, rtol=1e-5)
