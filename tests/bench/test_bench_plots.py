"""The plots stay readable when curves coincide, and their titles say what the task is."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from optlab.bench import plots  # noqa: E402
from optlab.bench.profiles import performance_profiles  # noqa: E402
from optlab.bench.tasks import TASKS  # noqa: E402


def test_profile_offsets_are_centred_and_small():
    off = plots.profile_offsets(4)
    np.testing.assert_allclose(off, plots.PROFILE_OFFSET * np.array([-1.5, -0.5, 0.5, 1.5]))
    # Ten optimizers: the outermost curves move 4.5 * 0.008 = 0.036, under half of one task's
    # step (1 / number of tasks) even when every registered task is profiled.
    assert np.max(np.abs(plots.profile_offsets(10))) == pytest.approx(0.036)
    assert 0.036 < 0.5 / len(TASKS)


def test_tied_profiles_are_drawn_apart(tmp_path, monkeypatch):
    # sgd and adam have identical profiles; each must still get its own, distinguishable line.
    times = {"sgd": {"a": 10.0, "b": 20.0}, "adam": {"a": 10.0, "b": 20.0}, "sam": {"a": 30.0}}
    profiles = performance_profiles(times, ["a", "b"])
    drawn = {}
    plt = plots._pyplot()
    real_subplots = plt.subplots

    def spy_subplots(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        drawn["ax"] = ax
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy_subplots)
    monkeypatch.setattr(plt, "close", lambda fig: None)
    plots.plot_profiles(profiles, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    ax = drawn["ax"]
    lines = {ln.get_label().split(" ")[0]: ln for ln in ax.get_lines()}
    ys = {s: np.asarray(lines[s].get_ydata()) for s in ("sgd", "adam")}
    assert not np.allclose(ys["sgd"], ys["adam"])
    np.testing.assert_allclose(np.abs(ys["sgd"] - ys["adam"]), plots.PROFILE_OFFSET)
    assert lines["sgd"].get_marker() != lines["adam"].get_marker()
    assert "a, b" in ax.get_title()


def test_task_title_names_and_describes():
    title = plots.task_title("entity-lstm", "LSTM tagger on synthetic named-entity tagging " * 3)
    assert title.startswith("entity-lstm: LSTM tagger")
    assert all(len(line) <= 80 for line in title.split("\n"))
    assert plots.task_title("logistic") == "logistic"
