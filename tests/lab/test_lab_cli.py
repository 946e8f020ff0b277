"""``optlab lab landscape`` / ``optlab lab connect``: one-line exit-2 errors and tiny runs."""

from __future__ import annotations

import json

import pytest

from tests.cli_run import run_cli


def test_help_lists_lab_commands(capsys):
    code, out, _ = run_cli(["lab", "--help"], capsys)
    assert code == 0 and "landscape" in out and "connect" in out
    code, out, _ = run_cli(["lab", "landscape", "--help"], capsys)
    assert code == 0 and "--rho" in out and "--grid" in out
    code, out, _ = run_cli(["lab", "connect", "--help"], capsys)
    assert code == 0 and "--curves" in out and "--weight-decay" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["lab"], "required"),
        (["lab", "plot"], "invalid choice"),
        (["lab", "landscape", "--task", "nope"], "unknown task 'nope'"),
        (["lab", "landscape", "--epochs", "0"], "--epochs"),
        (["lab", "landscape", "--epochs", "two"], "--epochs"),
        (["lab", "landscape", "--lr", "-1"], "--lr"),
        (["lab", "landscape", "--rho", "-0.1"], "--rho"),
        (["lab", "landscape", "--rho", "nan"], "--rho"),
        (["lab", "landscape", "--points", "10"], "--points must be odd"),
        (["lab", "landscape", "--grid", "2"], "--grid"),
        (["lab", "landscape", "--span", "0"], "--span"),
        (["lab", "landscape", "--rise", "0"], "--rise"),
        (["lab", "landscape", "--seed", "-1"], "--seed"),
        (["lab", "landscape", "--batch-size", "100000"], "exceeds"),
        (["lab", "landscape", "--task", "mnist-lenet5"], "--data-dir"),
        (["lab", "connect", "--curves", "bezier,spline"], "unknown curve 'spline'"),
        (["lab", "connect", "--curves", "bezier,bezier"], "listed twice"),
        (["lab", "connect", "--points", "2"], "--points"),
        (["lab", "connect", "--weight-decay", "-1"], "--weight-decay"),
        (["lab", "connect", "--momentum", "1.5"], "--momentum"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    if len(argv) > 1 and argv[1] in ("landscape", "connect"):
        argv = [*argv, "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert needle in err
    assert "Traceback" not in err and out == ""


def test_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(["lab", "connect", "--out", str(blocker / "sub"), "--quiet"], capsys)
    assert code == 2 and "cannot write to output directory" in err
    assert err.startswith("optlab lab connect: error:") and err.count("\n") == 1


def test_tiny_landscape_run(capsys, tmp_path):
    argv = ["lab", "landscape", "--epochs", "1", "--points", "5", "--directions", "1"]
    argv += ["--grid", "3", "--traj-grid", "3", "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "landscape.json").read_text())
    for name in ("SGD", "SAM"):
        m = payload["models"][name]
        assert len(m["1d"]["losses"][0]) == 5 and m["1d"]["widths"][0] > 0
        assert len(m["2d"]["losses"]) == 3 and len(m["trajectory"]["path"]) >= 2
    assert payload["timing"]["wall_s"] > 0 and payload["timing"]["cpu_s"] > 0
    for png in payload["plots"]:
        assert (tmp_path / png).stat().st_size > 0
    assert set(payload["plots"]) == {
        "landscape_1d.png",
        "landscape_2d.png",
        "landscape_trajectory.png",
    }
    assert "SGD" in out and "SAM" in out


def test_tiny_connect_run(capsys, tmp_path):
    argv = ["lab", "connect", "--epochs", "1", "--curve-epochs", "1", "--points", "3"]
    argv += ["--curves", "bezier", "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "connect.json").read_text())
    assert set(payload["paths"]) == {"line", "bezier"}
    for path in payload["paths"].values():
        assert path["ts"] == [0.0, 0.5, 1.0]
        assert path["train_barrier"] == pytest.approx(
            max(path["train_loss"]) - (path["train_loss"][0] + path["train_loss"][-1]) / 2
        )
    # Both paths start and end at the same two trained models.
    line, bez = payload["paths"]["line"], payload["paths"]["bezier"]
    assert line["train_loss"][0] == pytest.approx(bez["train_loss"][0], rel=1e-6)
    assert line["train_loss"][-1] == pytest.approx(bez["train_loss"][-1], rel=1e-6)
    assert (tmp_path / "connect.png").stat().st_size > 0
    assert "bezier" in out
