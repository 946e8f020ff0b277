"""optlab.lab.clarifying_shampoo and ``optlab lab clarifying-shampoo``: a tiny run's JSON, the
ablation's partition, the semi-orthogonality diagnostic against NumPy, tokens-to-target, and
the command's one-line errors (tiny configurations only)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optlab import models
from optlab.analysis import semi_orthogonality
from optlab.cli import main
from optlab.lab import clarifying_shampoo as cs
from tests.cli_run import run_cli

TINY = cs.QUICK.replace(
    d_model=16,
    num_heads=2,
    num_layers=1,
    seq_len=16,
    batch_size=4,
    steps=6,
    eval_every=3,
    eval_windows=4,
    lr_grid=(1e-3, 3e-3),
    seeds=2,
)
TINY_FLAGS = [
    "--d-model=16",
    "--num-heads=2",
    "--num-layers=1",
    "--seq-len=16",
    "--batch-size=4",
    "--steps=6",
    "--eval-every=3",
    "--eval-windows=4",
    "--lrs=1e-3,3e-3",
    "--seeds=2",
]


def _params(config=TINY):
    model = models.Transformer(
        256,
        d_model=config.d_model,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        max_len=config.seq_len,
        rngs=nnx.Rngs(0),
    )
    return nnx.split(model, nnx.Param)[1]


# -- the command: one tiny run, its JSON and plots ----------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cs")
    argv = ["lab", "clarifying-shampoo", *TINY_FLAGS, "--optimizers=adamw,shampoo"]
    argv += ["--quiet", "--out", str(out)]
    code = main(argv)
    return code, out


def test_cli_writes_the_json_schema_and_plots(cli_run):
    code, out = cli_run
    assert code == 0
    payload = json.loads((out / "clarifying_shampoo.json").read_text())
    for key in (
        "config",
        "data",
        "parameters",
        "target_loss",
        "target_rule",
        "sweep",
        "runs",
        "summary",
        "ordering_by_final_loss",
        "ablation",
        "orthogonality",
        "timing",
        "environment",
        "plots",
    ):
        assert key in payload, key
    assert sorted(payload["ordering_by_final_loss"]) == ["adamw", "shampoo"]
    budget = TINY.steps * TINY.batch_size * TINY.seq_len
    assert payload["data"]["token_budget"] == budget
    for name in ("adamw", "shampoo"):
        # The same number of sweep trials for each optimizer, then the seeds at the tuned rate.
        sweep = payload["sweep"][name]
        assert [r["learning_rate"] for r in sweep] == list(TINY.lr_grid)
        runs = payload["runs"][name]
        assert [r["seed"] for r in runs] == [0, 1]
        s = payload["summary"][name]
        assert s["learning_rate"] in TINY.lr_grid
        assert all(r["learning_rate"] == s["learning_rate"] for r in runs)
        assert runs[0] == next(r for r in sweep if r["learning_rate"] == s["learning_rate"])
        for r in runs:
            assert r["steps"] == [0, 3, 6]
            assert r["tokens"] == [0, budget // 2, budget]
            assert r["final_loss"] == r["val_loss"][-1]
        finals = [r["final_loss"] for r in runs]
        assert s["final_loss"]["mean"] == pytest.approx(np.mean(finals), rel=1e-12)
        assert s["final_loss"]["std"] == pytest.approx(np.std(finals, ddof=1), rel=1e-9)
        assert s["step_seconds"] > 0
    # The default target is AdamW's mean final loss.
    assert payload["target_loss"] == pytest.approx(
        payload["summary"]["adamw"]["final_loss"]["mean"]
    )
    assert set(payload["ablation"]["summary"]) == set(cs.ABLATIONS)
    assert payload["ablation"]["learning_rate"] == payload["summary"]["shampoo"]["learning_rate"]
    for rs in payload["ablation"]["runs"].values():
        assert [r["seed"] for r in rs] == [0, 1]
    orth = payload["orthogonality"]
    assert orth["matrices"] == list(cs.recorded_matrices(TINY))
    for name in ("adamw", "shampoo"):
        for m in orth["matrices"]:
            c = orth["runs"][name][m]
            assert len(c["per_step"]) == len(c["running_average"]) == TINY.steps
    for plot in payload["plots"]:
        assert (out / plot).stat().st_size > 1000


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--optimizers=adamw,lion"], "unknown name 'lion' in --optimizers"),
        (["--lrs=1e-3,x"], "--lrs must be comma-separated numbers"),
        (["--lrs=1e-3,-1"], "--lrs must be distinct numbers > 0"),
        (["--steps=0"], "--steps must be an integer >= 1"),
        (["--d-model=30", "--num-heads=4"], "--d-model 30 is not divisible by --num-heads 4"),
        (["--target-loss=-1"], "--target-loss must be a number in"),
        (["--text-file=/nonexistent/input.txt"], "--text-file /nonexistent/input.txt: "),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(flags, match, capsys, tmp_path):
    argv = ["lab", "clarifying-shampoo", *TINY_FLAGS, *flags, "--quiet", "--out", str(tmp_path)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optlab lab clarifying-shampoo: error:")
    assert match in lines[0]


def test_cli_too_small_text_file(capsys, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"hello world\n" * 10)
    argv = ["lab", "clarifying-shampoo", *TINY_FLAGS, "--text-file", str(path), "--quiet"]
    code, _, err = run_cli([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2 and "at least" in err and str(path) in err


# -- the ablation's labels ----------------------------------------------------------------------


def test_ablation_labels_partition_every_leaf_into_hidden_matrices_and_the_rest():
    params = _params(TINY.replace(num_layers=2))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    labels = jax.tree.leaves(cs.ablation_labels(params))
    assert len(labels) == len(flat)
    hidden = ("query", "key", "value", "out", "fc", "proj")
    for (path, leaf), label in zip(flat, labels, strict=True):
        name = cs._leaf_name(path)
        parts = name.split(".")
        is_hidden = parts[-1] == "kernel" and parts[-2] in hidden and parts[0] == "blocks"
        assert label == (cs.MATRIX if is_hidden else cs.OTHER), name
        if label == cs.MATRIX:
            assert leaf.ndim == 2
    # Both kinds occur: the partition is not trivial.
    assert set(labels) == {cs.MATRIX, cs.OTHER}


@pytest.mark.parametrize("which", cs.ABLATIONS)
def test_ablation_routes_each_leaf_to_its_optimizer(which):
    """AdamW's update of a leaf depends on that leaf alone, so on the leaves routed to AdamW
    the ablation's update equals a standalone AdamW's exactly; on Shampoo's leaves it differs
    (from the 10th step on, when Shampoo's roots start; before that it is Adam-grafted)."""
    params = _params()
    key = jax.random.key(0)
    tx, adamw = cs.make_optimizer(which), cs.make_optimizer("adamw")
    s_tx, s_adamw = tx.init(params), adamw.init(params)
    # Jitted: eager Shampoo (roots, grafting) runs op by op and takes minutes.
    tx_update, adamw_update = jax.jit(tx.update), jax.jit(adamw.update)
    labels = jax.tree.leaves(cs.ablation_labels(params))
    adam_label = cs.OTHER if which == cs.ABLATIONS[0] else cs.MATRIX
    for step in range(11):
        k = jax.random.fold_in(key, step)
        grads = jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), params)
        u_tx, s_tx = tx_update(grads, s_tx, params)
        u_ad, s_adamw = adamw_update(grads, s_adamw, params)
    differs = []
    for a, b, label in zip(jax.tree.leaves(u_tx), jax.tree.leaves(u_ad), labels, strict=True):
        if label == adam_label:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        elif a.ndim == 2:
            differs.append(not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-3))
    assert differs and all(differs)


# -- the semi-orthogonality diagnostic ------------------------------------------------------------


def _numpy_distances(updates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 transcription: basis of 1-perp by Gram-Schmidt, small Gram, d(G) per step and of
    the running average (optlab.analysis.semi_orthogonality's definition)."""
    u = np.asarray(updates, np.float64)
    d = u.shape[-1]
    # Helmert basis of the complement of the ones vector (an independent construction).
    q = np.zeros((d, d - 1))
    for j in range(1, d):
        q[:j, j - 1] = 1.0 / math.sqrt(j * (j + 1))
        q[j, j - 1] = -j / math.sqrt(j * (j + 1))
    o = u @ q
    if o.shape[-2] > o.shape[-1]:
        o = np.swapaxes(o, -1, -2)
    gram = o @ np.swapaxes(o, -1, -2)
    k = gram.shape[-1]

    def dist(g):
        c = np.trace(g) / k
        return np.sqrt(np.sum((g / c - np.eye(k)) ** 2) / k)

    per = np.array([dist(g) for g in gram])
    avg = np.cumsum(gram, axis=0) / np.arange(1, len(gram) + 1)[:, None, None]
    return per, np.array([dist(g) for g in avg])


def test_residual_complement_distance_matches_numpy():
    rng = np.random.default_rng(0)
    o = rng.standard_normal((7, 12, 6))
    o -= o.mean(-1, keepdims=True)  # zero-sum rows, as the residual-stream gradients
    got = semi_orthogonality(cs.residual_complement(o.astype(np.float32)))
    per, avg = _numpy_distances(o)
    # float32 Gram entries of O(10) magnitude summed over 12 terms: relative error ~1e-6, and
    # d is Lipschitz in the normalized Gram with constant ~1, so 1e-5 absolute is generous.
    np.testing.assert_allclose(np.asarray(got.per_step), per, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.running_average), avg, atol=1e-5)


def test_a_zero_sum_partial_isometry_is_semi_orthogonal_in_the_complement():
    """``U V^T`` with ``V`` orthonormal in 1-perp (Muon's update of a residual-writing matrix):
    distance 1/sqrt(d - 1) on the full Gram (the structural zero singular value), 0 after
    :func:`residual_complement`."""
    d, m = 8, 20
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((m, d - 1)))
    a = rng.standard_normal((d, d - 1))
    # Columns centered, hence in 1-perp; QR keeps them there (Q = A R^-1) and orthonormal.
    v, _ = np.linalg.qr(a - a.mean(0, keepdims=True))
    o = (u @ v.T)[None].astype(np.float32)
    full = semi_orthogonality(o)
    assert float(full.per_step[0]) == pytest.approx(1 / math.sqrt(d - 1), abs=1e-5)
    proj = semi_orthogonality(cs.residual_complement(o))
    assert float(proj.per_step[0]) == pytest.approx(0.0, abs=1e-5)


def test_exact_muon_updates_recorded_in_training_are_semi_orthogonal(monkeypatch):
    """The recording pipeline end to end: Muon with an exact SVD polar factor makes every
    update ``U V^T`` with unit singular values, except the residual stream's structural zero
    (the gradient of ``out`` / ``proj`` is zero-sum over the features), which
    :func:`residual_complement` removes; so the recorded per-step and running-average
    distances must be 0 up to float32 round-off (Gram entries O(1), ~1e-6 relative error,
    1e-4 leaves room). The study's own Muon uses Polar Express (``method="auto"``), whose
    small singular values fall somewhat short of 1, so its distances are small, not 0."""
    import optlab

    real = cs.make_optimizer

    def exact(name):
        if name == "muon":
            return optlab.muon(1.0, scale="rms", method="svd", adam_b2=0.95)
        return real(name)

    monkeypatch.setattr(cs, "make_optimizer", exact)
    data = cs.study_data(TINY)
    run = cs.train_lm(data, "muon", TINY, learning_rate=3e-3, seed=0, record=True)
    for m in cs.recorded_matrices(TINY):
        per = np.asarray(run.orthogonality[m]["per_step"])
        avg = np.asarray(run.orthogonality[m]["running_average"])
        assert per.shape == avg.shape == (TINY.steps,)
        np.testing.assert_allclose(per, 0.0, atol=1e-4)
        np.testing.assert_allclose(avg, 0.0, atol=1e-4)


# -- small pieces --------------------------------------------------------------------------------


def test_tokens_to_target_interpolates_between_evaluations():
    tokens, losses = [0, 100, 200, 300], [5.0, 4.0, 3.0, 2.0]
    assert cs.tokens_to_target(tokens, losses, 3.5) == pytest.approx(150.0)
    assert cs.tokens_to_target(tokens, losses, 4.0) == pytest.approx(100.0)
    assert cs.tokens_to_target(tokens, losses, 6.0) == 0.0
    assert cs.tokens_to_target(tokens, losses, 1.0) is None
    assert cs.tokens_to_target([0, 10], [5.0, math.nan], 1.0) is None


def _run_at(lr, final):
    return cs.LMRun("x", lr, 0, [0, 1], [0, 1], [5.0, final], [math.nan, 1.0], 0.1, False)


def test_choose_learning_rate_and_edge_flag():
    runs = [_run_at(1e-3, 3.0), _run_at(3e-3, 2.0), _run_at(1e-2, 2.5)]
    assert cs.choose_learning_rate(runs) == (3e-3, False)
    runs[2] = _run_at(1e-2, 1.0)
    assert cs.choose_learning_rate(runs) == (1e-2, True)
    diverged = _run_at(1e-2, 0.5)
    diverged.diverged = True
    assert cs.choose_learning_rate([runs[0], runs[1], diverged]) == (3e-3, False)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"d_model": 10, "num_heads": 4}, "divisible"),
        ({"lr_grid": ()}, "lr_grid"),
        ({"lr_grid": (1e-3, 1e-3)}, "twice"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"target_loss": 0.0}, "target_loss"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(ValueError, match=match):
        TINY.replace(**changes).validate()


def test_unit_rate_times_schedule_is_the_optimizer_at_that_rate():
    """The loop multiplies the unit-rate update by the scheduled rate; for AdamW without weight
    decay that is optax.adamw at that rate (to float32 round-off of one multiplication)."""
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    grads = {"w": jnp.ones((2, 3))}
    unit = cs.make_optimizer("adamw")
    u1, _ = unit.update(grads, unit.init(params), params)
    ref = optax.adamw(0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    u2, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(0.01 * np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-6)
