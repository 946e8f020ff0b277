"""The tagging tasks: entity-lstm (and its old name), conll-lstm's data, weights and defaults."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from optlab import models
from optlab.bench import CompareConfig, registry, runner, tasks
from optlab.bench.config import BenchError, build, load_data, run_settings
from tests.data.test_conll import write_pair


def test_zipf_lstm_is_an_alias_of_entity_lstm():
    assert tasks.get_task("zipf-lstm") is tasks.get_task("entity-lstm")
    assert CompareConfig(tasks="zipf-lstm,logistic").tasks == ("entity-lstm", "logistic")
    assert "zipf-lstm" not in tasks.TASKS  # listed once, under its new name


def test_conll_lstm_needs_data_dir(tmp_path):
    config = CompareConfig(tasks="conll-lstm", out=tmp_path)
    with pytest.raises(BenchError, match="pass --data-dir") as info:
        load_data(tasks.get_task("conll-lstm"), config)
    assert "\n" not in str(info.value)


def test_conll_lstm_thesis_hyperparameters():
    # Kuznetsova (2023) sec. 4.3's table: alpha, lambda (and SAM's rho).
    hp = {name: registry.default_hparams(name, "conll-lstm") for name in registry.OPTIMIZERS}
    assert (hp["sgd"]["learning_rate"], hp["sgd"]["weight_decay"]) == (0.1, 3e-4)
    assert (hp["sam"]["learning_rate"], hp["sam"]["weight_decay"], hp["sam"]["rho"]) == (
        0.03,
        1e-4,
        0.1,
    )
    assert (hp["lion"]["learning_rate"], hp["lion"]["weight_decay"]) == (1e-4, 1e-3)
    assert (hp["kfac"]["learning_rate"], hp["kfac"]["weight_decay"]) == (0.03, 1e-3)
    task = tasks.get_task("conll-lstm")
    assert (task.epochs, task.batch_size, task.target) == (20, 2, 0.91)


def _padded_batch():
    """Three sentences of lengths 4, 1 and 2, padded to 4 (tags -1 there)."""
    x = np.array([[5, 3, 2, 7], [4, 0, 0, 0], [6, 6, 0, 0]], np.int32)
    y = np.array([[0, 1, 2, 0], [1, -1, -1, -1], [2, 0, -1, -1]], np.int32)
    return x, y


def test_masked_metrics_are_per_token():
    # The training loss and the test accuracy are means over the 7 real tokens, computed
    # here in float64 from the model's own logits (float32 logits: agreement to ~1e-6).
    x, y = _padded_batch()
    model = models.LSTMTagger(8, 3, embed_dim=4, hidden_size=5, rngs=nnx.Rngs(0))
    logits = np.asarray(model(x), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = y >= 0
    token_loss = -np.take_along_axis(logp, np.maximum(y, 0)[..., None], -1)[..., 0]
    expected_loss = token_loss[real].mean()
    expected_acc = (logits.argmax(-1) == y)[real].mean()

    task = tasks.get_task("conll-lstm")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, _ = runner._loss_fn(task, graphdef)(params, rest, x, y)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    evaluate = runner.make_eval_step(task, graphdef)
    w = np.array([1.0, 1.0, 1.0], np.float32)
    loss_sum, acc_sum, weight = evaluate(params, rest, x, y, w)
    assert float(weight) == 7.0
    np.testing.assert_allclose(float(acc_sum) / 7, expected_acc, rtol=1e-6)
    np.testing.assert_allclose(float(loss_sum) / 7, expected_loss, rtol=1e-5)
    # A row the runner pads the test set with (weight 0) counts for nothing.
    _, acc0, weight0 = evaluate(params, rest, x, y, np.array([1.0, 0.0, 1.0], np.float32))
    assert float(weight0) == 6.0
    expected0 = (logits.argmax(-1) == y)[[0, 2]][real[[0, 2]]].mean()
    np.testing.assert_allclose(float(acc0) / 6, expected0, rtol=1e-6)


def test_conll_lstm_trains_from_files(tmp_path):
    write_pair(tmp_path)
    config = CompareConfig(
        tasks="conll-lstm",
        optimizers="sgd",
        data_dir=tmp_path,
        steps=3,
        batch_size=1,
        quiet=True,
        out=tmp_path / "out",
    )
    task = tasks.get_task("conll-lstm")
    ds = load_data(task, config)
    settings = run_settings(task, ds, config)
    result = runner.train_one(task, ds, build(task, ds, settings, "sgd", {}), settings)
    assert len(result.step_loss) == 3 and all(np.isfinite(result.step_loss))
    # One test sentence of 6 tokens: the accuracy is a multiple of 1/6.
    acc = result.final_acc * 6
    assert abs(acc - round(acc)) < 1e-5


def test_kfac_on_a_task_without_its_curvature_fails_before_training(tmp_path):
    # The logistic task adds a penalty, which optlab.kfac_value_and_grad cannot see: the
    # build step (before any optimizer trains) refuses K-FAC there, in one line.
    config = CompareConfig(tasks="logistic", optimizers="kfac", quiet=True, out=tmp_path)
    task = tasks.get_task("logistic")
    ds = load_data(task, config)
    settings = run_settings(task, ds, config)
    with pytest.raises(BenchError, match="optimizer 'kfac'.*K-FAC needs") as info:
        build(task, ds, settings, "kfac", {})
    assert "\n" not in str(info.value)


def test_entity_lstm_budget_and_shapes():
    task = tasks.get_task("entity-lstm")
    ds = tasks.load_task_data(task)
    assert ds.x_train.shape == (2000, 24) and ds.num_classes == 7
    model = task.make_model(ds, nnx.Rngs(0))
    logits = model(ds.x_test[:2])
    assert logits.shape == (2, 24, 7) and jax.numpy.isfinite(logits).all()
