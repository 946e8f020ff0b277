"""The sweep's choice rule (choose) on constructed runs, and a small real sweep end to end."""

import json
import math

import numpy as np
import pytest

from optlab.bench import CompareConfig, registry
from optlab.bench.runner import RunResult
from optlab.bench.sweep import (
    EDGE_NOTE,
    NO_TARGET_NOTE,
    SWEEP_LOSS_TIE,
    SWEEP_TIE,
    SWEEP_UNSTABLE,
    choose,
    final_train_loss,
    grid,
    grid_edges,
    halton,
    sweep,
    sweep_criterion,
)

STEPS_PER_EPOCH = 2


def _run(accs, losses, *, target=0.9, diverged=False):
    """A run with one evaluation per epoch: test accuracies ``accs``, per-epoch train ``losses``.

    Each epoch has two steps with the epoch's loss, so the final training loss (the mean over
    the last epoch's steps) is ``losses[-1]`` exactly.
    """
    evals = [
        {"step": STEPS_PER_EPOCH * (i + 1), "epoch": float(i + 1), "test_acc": a, "train_time": 0.1}
        for i, a in enumerate(accs)
    ]
    step_loss = [float(v) for v in losses for _ in range(STEPS_PER_EPOCH)]
    return RunResult("x", {}, step_loss, evals, 0.0, [1e-3], target, diverged)


def test_criterion_and_final_loss_are_what_they_say():
    r = _run([0.5, 0.7, 0.9], [2.0, 1.0, 0.25])
    assert sweep_criterion(r) == pytest.approx(0.7, abs=1e-15)  # mean of the three
    assert final_train_loss(r) == 0.25
    bad = _run([0.5], [math.inf], diverged=True)
    assert sweep_criterion(bad) == -math.inf and final_train_loss(bad) == math.inf


def test_highest_criterion_wins_outside_the_tie_band():
    # Criteria 0.900 vs 0.890: 0.010 apart, more than SWEEP_TIE = 0.005; the lower
    # training loss of the second does not matter.
    a = _run([0.88, 0.92], [0.5, 0.4])
    c = _run([0.88, 0.90], [0.5, 0.1])
    assert sweep_criterion(a) - sweep_criterion(c) > SWEEP_TIE
    choice = choose([a, c])
    assert choice.index == 0 and choice.tied == (0,)


def test_ties_go_to_the_lowest_final_training_loss():
    # Criteria 0.900 and 0.897 are tied (within 0.005); 0.890 is not. Among the tied, the run
    # with the lower last-epoch training loss (0.2 < 0.4) wins although its accuracy is lower;
    # the untied run with the lowest loss of all (0.1) is not considered.
    a = _run([0.88, 0.92], [0.5, 0.4])
    b = _run([0.884, 0.91], [0.5, 0.2])
    c = _run([0.88, 0.90], [0.5, 0.1])
    choice = choose([a, b, c])
    assert choice.tied == (0, 1)
    assert choice.index == 1


def test_training_losses_near_zero_tie_and_go_to_the_higher_criterion():
    # Three tied runs (criteria 0.897, 0.900, 0.896) that all fit the training set: losses
    # 1e-6, 3e-5 and 0.004. The first two are within SWEEP_LOSS_TIE = 1e-4 of each other, so
    # the higher criterion (the second) wins, not the tinier loss; the third's loss is 0.004
    # above the lowest, which still counts.
    a = _run([0.884, 0.91], [0.5, 1e-6])
    b = _run([0.89, 0.91], [0.5, 3e-5])
    c = _run([0.882, 0.91], [0.5, 0.004])
    assert SWEEP_LOSS_TIE == 1e-4
    assert choose([a, b, c]).index == 1
    # Losses further apart than SWEEP_LOSS_TIE still decide: the logistic task's rule.
    d = _run([0.89, 0.91], [0.5, 2e-4])
    assert choose([a, d]).index == 0


def test_equal_losses_in_a_tie_go_to_the_higher_criterion():
    a = _run([0.88, 0.92], [0.5, 0.3])
    b = _run([0.884, 0.91], [0.5, 0.3])
    assert choose([b, a]).index == 1  # a: criterion 0.900 > 0.897


def test_unstable_and_diverged_runs_are_set_aside():
    # The first run has the highest mean accuracy but ends 0.10 below its best
    # (> SWEEP_UNSTABLE = 0.02): a default must not collapse at the end of the budget.
    collapsing = _run([0.95, 0.97, 0.87], [0.3, 0.2, 0.9])
    diverged = _run([0.1], [math.inf], diverged=True)
    steady = _run([0.85, 0.90, 0.91], [0.5, 0.4, 0.3])
    assert collapsing.best_acc - collapsing.final_acc > SWEEP_UNSTABLE
    assert sweep_criterion(collapsing) > sweep_criterion(steady)
    choice = choose([collapsing, diverged, steady])
    assert choice.index == 2 and choice.unstable == (0, 1)
    # If every run is unstable, the best of them is still chosen (and none is flagged).
    everyone = choose([collapsing, diverged])
    assert everyone.index == 0 and everyone.unstable == ()


def test_edge_of_grid_detection():
    points = [{"learning_rate": lr} for lr in (0.3, 0.1, 0.03)]
    runs_mid = [_run([0.5], [1.0]), _run([0.95], [0.2]), _run([0.6], [0.9])]
    assert choose(runs_mid, points).at_edge == ()
    runs_top = [_run([0.95], [0.2]), _run([0.6], [0.5]), _run([0.5], [1.0])]
    choice = choose(runs_top, points)
    assert choice.at_edge == ("learning_rate",)
    assert f"{EDGE_NOTE} (learning_rate)" in choice.notes
    runs_bottom = list(reversed(runs_top))
    assert choose(runs_bottom, points).at_edge == ("learning_rate",)
    # Without points there is nothing to detect.
    assert choose(runs_top).at_edge == ()


def test_edge_detection_per_key_of_a_product_grid():
    points = [
        {"learning_rate": lr, "rho": rho, "grafting": g, "nesterov": n, "b1": 0.9}
        for lr in (0.1, 0.03)
        for rho in (0.2, 0.1, 0.05)
        for g, n in (("adam", True), ("none", False))
    ]
    # lr at its edge (both of a 2-value grid are), rho in the middle; strings, booleans and
    # a key with a single value have no edge to widen.
    index = next(i for i, p in enumerate(points) if p["rho"] == 0.1 and p["learning_rate"] == 0.03)
    assert grid_edges(points, index) == ("learning_rate",)
    index = next(i for i, p in enumerate(points) if p["rho"] == 0.05)
    assert grid_edges(points, index) == ("learning_rate", "rho")


def test_no_value_reaches_the_target():
    runs = [_run([0.5, 0.8], [1.0, 0.5]), _run([0.6, 0.85], [1.0, 0.4])]
    choice = choose(runs, [{"learning_rate": 0.1}, {"learning_rate": 0.01}])
    assert not choice.reached_target
    assert NO_TARGET_NOTE in choice.notes
    runs.append(_run([0.6, 0.91], [1.0, 0.6]))  # reaches 0.9 at its second evaluation
    assert choose(runs).reached_target
    assert NO_TARGET_NOTE not in choose(runs).notes


def test_notes_are_the_words_of_the_registry_sources():
    # The registry's per-task sources record the sweep's flags in the sweep's own words.
    assert NO_TARGET_NOTE in registry.hparam_source("sgd", "modular-transformer")


def test_choose_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one run"):
        choose([])
    with pytest.raises(ValueError, match="2 grid points for 1 runs"):
        choose([_run([0.5], [1.0])], [{"learning_rate": 1.0}, {"learning_rate": 0.1}])


def test_grid_from_overrides_and_registry():
    fixed, points = grid("sgd", {"learning_rate": [0.1, 0.01], "weight_decay": 1e-4})
    assert fixed == {"weight_decay": 1e-4}
    assert points == [{"learning_rate": 0.1}, {"learning_rate": 0.01}]
    assert grid("mypkg:make", {"lr": 0.1}) == ({"lr": 0.1}, [{}])
    # No list: SWEEP_TRIALS quasi-random points of the registry's range, the same count for
    # every optimizer.
    counts = {name: len(grid(name, {})[1]) for name in registry.SEARCH_SPACES}
    assert set(counts.values()) == {registry.SWEEP_TRIALS}
    _, points = grid("adam", {})
    lrs = np.array([p["learning_rate"] for p in points])
    r = registry.SEARCH_SPACES["adam"]["learning_rate"]
    # Log-uniform over [low, high] with 8 points in 8 equal strata of log(lr): one per stratum.
    # Rounding to 2 significant digits moves a value by at most 0.5% (5e-3 relative), far less
    # than the width of a stratum (a factor (high / low)^(1/8) = 2.37).
    u = np.log(lrs / r.low) / np.log(r.high / r.low)
    assert sorted(np.floor(u * 8).astype(int)) == list(range(8))
    # A LOW:HIGH string replaces the range; a scalar fixes the key (no space left: one point).
    _, points = grid("adam", {"learning_rate": "1e-3:1e-2"}, trials=4)
    assert len(points) == 4 and all(1e-3 <= p["learning_rate"] <= 1e-2 for p in points)
    assert grid("adam", {"learning_rate": 3e-3}) == ({"learning_rate": 3e-3}, [{}])
    with pytest.raises(ValueError, match="LOW:HIGH with 0 < LOW < HIGH"):
        grid("adam", {"learning_rate": "1e-2:1e-3"})
    with pytest.raises(ValueError, match="not both"):
        grid("sam", {"learning_rate": "1e-3:1e-2", "rho": [0.05, 0.1]})


def test_halton_plain_and_scrambled():
    # The plain sequence is the radical inverse of 0, 1, 2, ...: base 2 gives 0, 1/2, 1/4,
    # 3/4, 1/8, 5/8; base 3 gives 0, 1/3, 2/3, 1/9, 4/9, 7/9 (exact binary fractions, and
    # thirds and ninths to rounding).
    plain = halton(6, 2, seed=None)
    np.testing.assert_array_equal(plain[:, 0], [0, 1 / 2, 1 / 4, 3 / 4, 1 / 8, 5 / 8])
    np.testing.assert_allclose(plain[:, 1], [0, 1 / 3, 2 / 3, 1 / 9, 4 / 9, 7 / 9], rtol=1e-15)
    # Scrambled: the first base^k points of each coordinate still fall one in each of the
    # base^k equal intervals (digit permutations are bijections), but not at the plain values.
    u = halton(27, 3, seed=0)
    assert sorted(np.floor(u[:16, 0] * 16).astype(int)) == list(range(16))
    assert sorted(np.floor(u[:9, 1] * 9).astype(int)) == list(range(9))
    assert sorted(np.floor(u[:25, 2] * 25).astype(int)) == list(range(25))
    assert np.all((u >= 0) & (u < 1)) and not np.allclose(u[:6, :2], plain)
    np.testing.assert_array_equal(u, halton(27, 3, seed=0))  # reproducible
    assert not np.array_equal(u, halton(27, 3, seed=1))
    with pytest.raises(ValueError, match="num must be a positive integer"):
        halton(0, 1)
    with pytest.raises(ValueError, match="dims must be in"):
        halton(3, 13)


def test_small_sweep_end_to_end(tmp_path):
    # digits-mlp, 6 steps, SGD at learning rates 1e6 (diverges within the first steps, as in
    # test_bench_runner) and 0.1, weight decay fixed by a scalar override. The diverged point
    # is never chosen; the choice is at the edge of a 2-value grid; a perfect test score
    # (target 1.0) is out of reach after 6 steps.
    lines = []

    class Sink:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    config = CompareConfig(
        tasks=("digits-mlp",),
        optimizers=("sgd",),
        steps=6,
        target=1.0,
        hparams={"sgd": {"learning_rate": [1e6, 0.1], "weight_decay": 1e-4}},
        quiet=True,
        out=tmp_path,
    )
    payload = sweep(config, stream=Sink())
    text = "".join(lines)
    entry = payload["tasks"]["digits-mlp"]["sgd"]
    assert entry["chosen"] == {"learning_rate": 0.1}
    assert entry["unstable"] == [{"learning_rate": 1e6}]
    assert entry["at_edge"] == ["learning_rate"] and entry["reached_target"] is False
    runs = entry["runs"]
    assert [r["point"] for r in runs] == [{"learning_rate": 1e6}, {"learning_rate": 0.1}]
    assert all(r["hparams"]["weight_decay"] == 1e-4 for r in runs)
    assert runs[0]["criterion"] == -math.inf and np.isfinite(runs[1]["criterion"])
    assert len(runs[1]["test_acc"]) == 1  # 6 steps < one epoch: evaluated once, at the end
    # The printed grid marks the choice and the flags.
    assert text.count(" * ") == 1 and " * learning_rate=0.1 " in text
    assert f"note: {EDGE_NOTE} (learning_rate)" in text and f"note: {NO_TARGET_NOTE}" in text
    assert "chosen (* above): sgd: learning_rate=0.1" in text
    # The trials per optimizer are reported, with what was searched.
    assert "trials per optimizer: sgd 2" in text
    assert entry["trials"] == 2 and entry["search"].startswith("grid: learning_rate in {")
    assert payload["trials_per_optimizer"] == registry.SWEEP_TRIALS
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["tasks"]["digits-mlp"]["sgd"]["chosen"] == {"learning_rate": 0.1}
    assert saved["tasks"]["digits-mlp"]["sgd"]["runs"][0]["criterion"] is None  # -inf
