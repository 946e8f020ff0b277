"""AlgoPerf performance profiles: the hand-computed example of optlab.bench.profiles."""

import math

import numpy as np
import pytest

from optlab.bench.profiles import NUM_POINTS, TAU_MAX, performance_profiles, performance_ratios

# Two tasks; c is 5x slower than the best on task 1 (> tau_max = 4) and misses task 2.
TIMES = {
    "a": {"t1": 10.0, "t2": 15.0},
    "b": {"t1": 25.0, "t2": 10.0},
    "c": {"t1": 50.0, "t2": None},
}


def test_ratios_hand_computed():
    r = performance_ratios(TIMES, ["t1", "t2"])
    np.testing.assert_allclose(r["a"], [1.0, 1.5])
    np.testing.assert_allclose(r["b"], [2.5, 1.0])
    assert np.all(np.isinf(r["c"]))  # 50 / 10 = 5 > 4 -> inf; missed -> inf


def test_scores_hand_computed():
    # rho_a = 1/2 on [1, 1.5), 1 after: area 0.5 * 0.5 + 1 * 2.5 = 2.75 -> 2.75 / 3.
    # rho_b = 1/2 on [1, 2.5), 1 after: area 0.5 * 1.5 + 1 * 1.5 = 2.25 -> 0.75.
    # Both jumps sit at midpoints of the 100-point grid, where the trapezoid rule is exact.
    p = performance_profiles(TIMES, ["t1", "t2"])
    assert p.scores["a"] == pytest.approx(2.75 / 3, abs=1e-12)
    assert p.scores["b"] == pytest.approx(0.75, abs=1e-12)
    assert p.scores["c"] == 0.0
    assert p.taus.shape == (NUM_POINTS,)
    assert p.taus[0] == 1.0 and p.taus[-1] == TAU_MAX
    # The profile itself at a few points.
    i15, i25 = np.searchsorted(p.taus, 1.5), np.searchsorted(p.taus, 2.5)
    assert p.rho["a"][i15 - 1] == 0.5 and p.rho["a"][i15] == 1.0
    assert p.rho["b"][i25 - 1] == 0.5 and p.rho["b"][i25] == 1.0
    assert np.all(p.rho["c"] == 0.0)


def test_fastest_everywhere_scores_one_and_exactly_four_counts():
    p = performance_profiles({"x": {"w": 1.0}, "y": {"w": 4.0}, "z": {"w": 4.0001}})
    assert p.scores["x"] == 1.0
    assert p.ratios["y"][0] == 4.0  # r = tau_max is still a success (r <= tau)...
    assert p.rho["y"][-1] == 1.0 and p.rho["y"][-2] == 0.0
    # ...counting only at the last grid point: half of the last trapezoid.
    assert p.scores["y"] == pytest.approx(0.5 * (3 / 99) / 3)
    assert math.isinf(p.ratios["z"][0]) and p.scores["z"] == 0.0


def test_unsolved_task_counts_for_everyone():
    p = performance_profiles({"a": {"t1": 1.0, "t2": math.inf}, "b": {"t1": 2.0}}, ["t1", "t2"])
    assert p.rho["a"].max() == 0.5  # t2 solved by nobody: nobody's profile reaches 1
    assert p.scores["a"] == pytest.approx(0.5)
    assert np.all(np.isinf(p.ratios["b"][1:]))


def test_to_dict_is_json_ready():
    import json

    d = performance_profiles(TIMES).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["ratios"]["c"] == [None, None]
    assert d["times"]["c"]["t2"] is None


def test_empty_input_raises():
    with pytest.raises(ValueError):
        performance_profiles({})
