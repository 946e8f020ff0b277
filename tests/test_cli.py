"""The optlab command line: help, listing, a tiny run, and one-line exit-2 errors."""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.cli_run import run_cli


def test_help_lists_subcommands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "compare" in out
    code, out, _ = run_cli(["compare", "--help"], capsys)
    assert code == 0 and "--hp" in out and "--sweep" in out


def test_list(capsys):
    code, out, _ = run_cli(["compare", "--list"], capsys)
    assert code == 0
    assert "digits-lenet5" in out and "muon" in out and "Kuznetsova (2023) sec. 4.1" in out
    # Works are cited by author and title, never by internal file names.
    assert "seed 00" not in out.lower()
    assert "An experimental study of modern curvature-aware optimization methods" in out
    assert "[profiled by steps]" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compare", "--task", "nope"], "unknown task 'nope'"),
        (["compare", "--task", "logistic,nope"], "unknown task 'nope'"),
        (["compare", "--optimizers", "sgd,adamx"], "unknown optimizer 'adamx'"),
        (["compare", "--optimizers", "no_such_mod_xyz:make"], "cannot import"),
        (["compare", "--epochs", "-1"], "--epochs"),
        (["compare", "--epochs", "0"], "--epochs"),
        (["compare", "--epochs", "two"], "--epochs"),
        (["compare", "--batch-size", "0"], "--batch-size"),
        (["compare", "--target", "1.5"], "--target"),
        (["compare", "--target", "high"], "--target"),
        (["compare", "--steps", "0"], "--steps"),
        (["compare", "--seed", "-1"], "--seed"),
        (["compare", "--schedule", "linear"], "unknown schedule 'linear'"),
        (["compare", "--hp", "sam.rho"], "malformed --hp"),
        (["compare", "--hp", "rho=0.1"], "malformed --hp"),
        (["compare", "--hp", "sam.rhoo=0.1"], "no hyperparameter 'rhoo'"),
        (["compare", "--optimizers", "sgd", "--hp", "adam.learning_rate=1"], "not being compared"),
        (["compare", "--task", "mnist-lenet5"], "--data-dir"),
        (["compare", "--task", "logistic", "--batch-size", "100000"], "exceeds"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    code, out, err = run_cli(
        [*argv, "--out", str(tmp_path)] if argv[:1] == ["compare"] else argv, capsys
    )
    assert code == 2
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert needle in err
    assert "Traceback" not in err and out == ""


def test_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # A path below a regular file cannot be created (even by root, unlike chmod tricks).
    code, out, err = run_cli(
        ["compare", "--task", "logistic", "--out", str(blocker / "sub")], capsys
    )
    assert code == 2 and "cannot write to output directory" in err
    assert err.count("\n") == 1


def test_missing_data_dir_files(capsys, tmp_path):
    code, _, err = run_cli(
        [
            "compare",
            "--task",
            "mnist-lenet5",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and err.startswith("optlab compare: error: task 'mnist-lenet5'")
    assert err.count("\n") == 1


def test_tiny_run_with_a_user_factory(capsys, tmp_path, monkeypatch):
    (tmp_path / "cli_user_opts.py").write_text(
        textwrap.dedent(
            """
            import optax

            def make(lr=0.1):
                return optax.sgd(lr)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "compare",
            "--task",
            "logistic",
            "--optimizers",
            "sgd,cli_user_opts:make",
            "--hp",
            "cli_user_opts:make.lr=0.05",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, err
    assert "cli_user_opts:make" in out and "final acc" in out
    saved = json.loads((out_dir / "results.json").read_text())
    runs = saved["tasks"]["logistic"]["runs"]
    assert runs[1]["hparams"] == {"lr": 0.05}
    assert sorted(p.name for p in out_dir.glob("*.png")) == [
        "logistic_test_acc_vs_epoch.png",
        "logistic_test_acc_vs_time.png",
        "logistic_train_loss.png",
    ]


def test_module_entry_point_has_no_traceback(tmp_path):
    # The real process: `python -m optlab.cli` with bad input.
    proc = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "compare", "--task", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        and "unknown task 'nope'" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
