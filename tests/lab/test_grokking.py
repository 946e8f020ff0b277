"""optlab.lab.grokking: the modular tables, the model's last-position shortcut, the optimizers,
and ``optlab lab grokking`` (tiny configurations only)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optlab
from optlab.lab import grokking as gk
from tests.cli_run import run_cli


@pytest.mark.parametrize("op", gk.OPERATIONS)
def test_modular_dataset_is_the_whole_table_split_in_two(op):
    p = 11
    d = gk.modular_dataset(p, op, train_fraction=0.3, seed=1)
    x = np.concatenate([d.x_train, d.x_test])
    z = np.concatenate([d.y_train, d.y_test])
    a, b = x[:, 0].astype(int), x[:, 1].astype(int)
    assert np.all(x[:, 2] == p)  # the "=" token
    expected_n = p * (p - 1) if op == "/" else p * p
    assert len(z) == expected_n and len({(i, j) for i, j in zip(a, b)}) == expected_n
    assert len(d.y_train) == round(0.3 * expected_n)
    # Exact integer checks of each operation (division: z * b == a, as Power et al. build it).
    check = {
        "/": lambda: (z * b) % p == a,
        "+": lambda: z == (a + b) % p,
        "-": lambda: z == (a - b) % p,
        "*": lambda: z == (a * b) % p,
    }[op]()
    assert np.all(check)
    if op == "/":
        assert np.all(b != 0)


def test_modular_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="prime"):
        gk.modular_dataset(12, "+", train_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="op"):
        gk.modular_dataset(7, "^", train_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="train_fraction"):
        gk.modular_dataset(7, "+", train_fraction=1.0, seed=0)


def test_last_position_shortcut_equals_full_causal_forward():
    # The last block computes its query (and MLP) at the last position only; running every
    # block on all positions with a causal mask and reading the last position is the reference.
    model = gk.GrokTransformer(
        13, d_model=16, num_heads=2, d_mlp=32, num_layers=2, rngs=nnx.Rngs(0)
    )
    tokens = jnp.asarray(gk.modular_dataset(13, "+", train_fraction=0.5, seed=0).x_train[:32])
    x = model.embed(tokens) + model.pos_embed(jnp.arange(3))
    for block in model.blocks:
        x = block(x, False)
    reference = model.head(x[:, -1])
    got = model(tokens)
    assert got.shape == (32, 13)
    # float32, logits O(1), a few dozen accumulations per entry: agreement to ~1e-6 relative.
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_muon_sees_hidden_matrices_and_adam_the_rest():
    model = gk.GrokTransformer(7, d_model=8, num_heads=2, d_mlp=16, rngs=nnx.Rngs(0))
    labels = optlab.muon_labels(nnx.state(model, nnx.Param))
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(labels)}
    flat = {k: v.get_value() if hasattr(v, "get_value") else v for k, v in flat.items()}
    assert flat["embed/embedding"] == "adam" and flat["pos_embed/embedding"] == "adam"
    assert flat["head/kernel"] == "adam" and flat["blocks/0/fc/bias"] == "adam"
    for m in ("query", "key", "value", "out"):
        assert flat[f"blocks/0/attn/{m}/kernel"] == "muon"
    assert flat["blocks/0/fc/kernel"] == "muon" and flat["blocks/0/proj/kernel"] == "muon"


def test_time_to_grok_is_the_first_step_at_threshold():
    assert gk.time_to_grok([0, 10, 20, 30], [0.1, 0.5, 0.95, 0.2]) == 20
    assert gk.time_to_grok([0, 10], [0.1, 0.94]) is None
    assert gk.time_to_grok([0, 10], [0.1, 0.99], threshold=0.99) == 10


def test_make_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="optimizer"):
        gk.make_optimizer("sgd")


@pytest.mark.parametrize("name", gk.OPTIMIZERS)
def test_each_optimizer_lowers_the_training_loss(name):
    data = gk.modular_dataset(7, "+", train_fraction=0.6, seed=0)
    run = gk.train(data, name, steps=30, eval_every=15, seed=0, d_model=16, num_heads=2, d_mlp=32)
    assert run.steps == [0, 15, 30]
    assert all(np.isfinite(run.train_loss))
    # Full batch on 29 equations: 30 steps at these rates must cut the loss well below the
    # log(7) ~ 1.95 of a uniform guess (it starts there and is a descent method's target).
    assert run.train_loss[-1] < 0.8 * run.train_loss[0]


def test_weight_decay_alone_shrinks_the_weights():
    # With zero gradients AdamW's step is -lr * wd * W: one step scales W by (1 - lr wd).
    tx = gk.make_optimizer("adamw", learning_rate=0.1, weight_decay=1.0, warmup_steps=1)
    w = {"w": jnp.ones((3, 3))}
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
    np.testing.assert_allclose(upd["w"], -0.1 * np.ones((3, 3)), rtol=1e-6)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--p", "12"], "--p must be a prime"),
        (["--optimizers", "adamw,sgd"], "unknown name 'sgd'"),
        (["--optimizers", "adamw,adamw"], "listed twice"),
        (["--train-fraction", "0"], "--train-fraction"),
        (["--steps", "0"], "--steps"),
        (["--d-model", "10", "--num-heads", "4"], "not divisible"),
        (["--lr", "-1"], "--lr"),
        (["--stop-at", "1.5"], "--stop-at"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    code, out, err = run_cli(["lab", "grokking", *argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and needle in err
    assert err.startswith("optlab lab grokking: error:") and err.count("\n") == 1
    assert out == ""


def test_tiny_grokking_run(capsys, tmp_path):
    argv = ["lab", "grokking", "--p", "5", "--steps", "4", "--eval-every", "2", "--seeds", "2"]
    argv += ["--d-model", "8", "--num-heads", "2", "--d-mlp", "8", "--out", str(tmp_path)]
    code, out, err = run_cli([*argv, "--quiet"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "grokking.json").read_text())
    runs = payload["runs"]["adamw"]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0]["steps"] == [0, 2, 4]
    assert payload["data"] == {"p": 5, "op": "/", "train": 10, "test": 10}
    assert (tmp_path / "grokking.png").stat().st_size > 0
    assert out.strip().splitlines()[-1].startswith("time to grok (test acc >= 0.95): adamw")
