"""The training loop and the compare harness: determinism, outputs, profiles."""

import json
import math

import pytest

from optlab.bench import CompareConfig, compare, runner, tasks
from optlab.bench.config import parse_hparams, parse_value
from optlab.bench.registry import build_optimizer
from optlab.bench.report import STEPS_NOTE, format_table


def _run(name, seed, epochs=2, task_name="logistic"):
    task = tasks.get_task(task_name)
    ds = tasks.load_task_data(task)
    settings = runner.RunSettings(
        epochs=epochs, steps=None, batch_size=task.batch_size, seed=seed, target=task.target
    )
    return runner.train_one(task, ds, build_optimizer(name, task.name), settings)


def test_same_seed_same_curves_other_seed_differs():
    a, b = _run("momentum", seed=3), _run("momentum", seed=3)
    assert a.step_loss == b.step_loss
    assert [e["test_acc"] for e in a.evals] == [e["test_acc"] for e in b.evals]
    assert [e["test_loss"] for e in a.evals] == [e["test_loss"] for e in b.evals]
    c = _run("momentum", seed=4)
    assert c.step_loss != a.step_loss  # another batch order


def test_run_result_bookkeeping():
    r = _run("sgd", seed=0, epochs=3)
    spe = 200 // 20  # logistic: 200 examples, batch 20
    assert len(r.step_loss) == 3 * spe
    assert len(r.step_times) == 3 * spe - 1  # the first call is compile_s
    assert [e["step"] for e in r.evals] == [spe, 2 * spe, 3 * spe]
    assert [e["epoch"] for e in r.evals] == [1.0, 2.0, 3.0]
    clocks = [e["train_time"] for e in r.evals]
    assert all(0 < x < y for x, y in zip(clocks, clocks[1:]))
    assert r.compile_s > 0 and r.mean_step_ms > 0
    assert r.best_acc >= r.final_acc
    if r.steps_to_target is not None:
        hit = next(e for e in r.evals if e["test_acc"] >= r.target)
        assert r.steps_to_target == hit["step"]
    d = r.to_dict()
    json.dumps(d)


def test_steps_budget_evaluates_at_the_end():
    task = tasks.get_task("logistic")
    ds = tasks.load_task_data(task)
    settings = runner.RunSettings(epochs=99, steps=15, batch_size=20, seed=0, target=0.5)
    r = runner.train_one(task, ds, build_optimizer("adam", task.name), settings)
    assert len(r.step_loss) == 15
    assert [e["step"] for e in r.evals] == [10, 15]


def test_table_marks_missed_targets():
    r = _run("sgd", seed=0, epochs=1)
    r.target = 1.01  # unreachable
    table = format_table([r])
    assert "NOT REACHED" in table.splitlines()[2]
    assert "stayed below the target" in table


def test_compare_two_tasks_writes_results_plots_and_scores(tmp_path):
    out = tmp_path / "cmp"
    lines = []

    class Sink:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    payload = compare(
        CompareConfig(
            tasks=("logistic", "digits-lenet5"),
            optimizers=("sgd", "adam"),
            epochs=1,
            quiet=True,
            out=out,
            hparams={"adam": {"learning_rate": 3e-3}},
        ),
        stream=Sink(),
    )
    text = "".join(lines)
    assert "optimizer" in text and "AlgoPerf-style score" in text
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["tasks"]) == {"logistic", "digits-lenet5"}
    runs = saved["tasks"]["logistic"]["runs"]
    assert [r["optimizer"] for r in runs] == ["sgd", "adam"]
    assert runs[1]["hparams"]["learning_rate"] == 3e-3
    assert len(runs[0]["step_loss"]) == 10
    assert len(runs[0]["evals"]) == 10  # the logistic task evaluates every step
    scores = saved["profiles"]["scores"]
    assert set(scores) == {"sgd", "adam"} and all(0.0 <= s <= 1.0 for s in scores.values())
    # The logistic task is profiled by steps: its profile times are steps to target, and
    # its table and the score header say so; digits-lenet5 keeps the training clock.
    assert saved["tasks"]["logistic"]["task"]["profile_by"] == "steps"
    assert saved["profiles"]["measures"] == {"logistic": "steps", "digits-lenet5": "seconds"}
    for run in runs:
        assert saved["profiles"]["times"][run["optimizer"]]["logistic"] == run["steps_to_target"]
    for run in saved["tasks"]["digits-lenet5"]["runs"]:
        seconds = saved["profiles"]["times"][run["optimizer"]]["digits-lenet5"]
        assert seconds == run["seconds_to_target"]  # None (JSON for inf) if missed
    assert text.count(STEPS_NOTE) == 1  # under the logistic table only
    logistic_text, lenet_text = text.split("digits-lenet5:")
    assert "profiled by steps" in logistic_text and "profiled by steps" not in lenet_text
    assert "steps instead of seconds for logistic" in text
    for name in (
        "logistic_test_acc_vs_epoch.png",
        "logistic_test_acc_vs_time.png",
        "logistic_train_loss.png",
        "digits-lenet5_train_loss.png",
        "performance_profiles.png",
    ):
        assert (out / name).stat().st_size > 1000, name
    assert payload["config"]["tasks"] == ["logistic", "digits-lenet5"]


def test_time_to_target_by_seconds_or_steps():
    evals = [
        {"step": 5, "test_acc": 0.5, "train_time": 0.25},
        {"step": 10, "test_acc": 0.8, "train_time": 0.5},
        {"step": 15, "test_acc": 0.9, "train_time": 0.75},
    ]
    r = runner.RunResult("sgd", {}, [1.0] * 15, evals, 0.1, [0.05] * 14, target=0.8)
    assert r.time_to_target("steps") == 10.0  # the first evaluation at or above 0.8
    assert r.time_to_target("seconds") == 0.5
    r.target = 0.95
    assert r.time_to_target("steps") == math.inf == r.time_to_target("seconds")
    with pytest.raises(ValueError, match="'seconds' or 'steps'"):
        r.time_to_target("wall")


def test_parse_hparams():
    assert parse_hparams(["sam.rho=0.05", "adam.learning_rate=3e-3", "muon.nesterov=false"]) == {
        "sam": {"rho": 0.05},
        "adam": {"learning_rate": 3e-3},
        "muon": {"nesterov": False},
    }
    assert parse_hparams(["pkg.mod:make.lr=1"]) == {"pkg.mod:make": {"lr": 1}}
    assert parse_hparams(["sgd.learning_rate=0.1,0.3"], allow_grids=True) == {
        "sgd": {"learning_rate": [0.1, 0.3]}
    }
    assert parse_value("svd") == "svd" and parse_value("None") is None
    assert parse_value("none") == "none"  # Shampoo's grafting="none", not None
    for bad in ("sam.rho", "rho=0.1", "sam.=1", ".rho=1", "sam.rho=", "sgd.learning_rate=0.1,0.3"):
        with pytest.raises(ValueError):
            parse_hparams([bad])


def test_nonfinite_loss_stops_and_is_reported():
    r = _run_lr("sgd", 1e6)
    assert r.diverged and len(r.step_loss) < 20
    assert "diverged" in format_table([r])
    assert not math.isfinite(r.step_loss[-1])


def _run_lr(name, lr):
    task = tasks.get_task("digits-mlp")
    ds = tasks.load_task_data(task)
    settings = runner.RunSettings(epochs=1, steps=None, batch_size=64, seed=0, target=0.9)
    built = build_optimizer(name, task.name, {"learning_rate": lr})
    return runner.train_one(task, ds, built, settings)


def _write_idx(path, array, magic_type=0x08):
    import struct

    import numpy as np

    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_mnist_task_reads_data_dir(tmp_path):
    # Tiny IDX files in MNIST's format: the file-based task runs end to end from --data-dir.
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        labels = rng.integers(0, 10, n)
        images = (rng.random((n, 28, 28)) * 50 + labels[:, None, None] * 20).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    payload = compare(
        CompareConfig(
            tasks=("mnist-lenet5",),
            optimizers=("sgd",),
            epochs=1,
            quiet=True,
            plots=False,
            out=tmp_path / "out",
            data_dir=tmp_path,
        ),
        stream=open(tmp_path / "log.txt", "w"),
    )
    run = payload["tasks"]["mnist-lenet5"]["runs"][0]
    assert len(run["step_loss"]) == 2  # 200 examples, batch 100
    assert math.isfinite(run["evals"][0]["test_loss"])
    assert payload["tasks"]["mnist-lenet5"]["hparam_sources"]["sgd"] == (
        "Kuznetsova (2023) sec. 4.1 table"
    )
    # The short form in the text comes with the full reference.
    assert (
        "An experimental study of modern curvature-aware"
        in (payload["references"]["Kuznetsova (2023)"])
    )


def test_batchnorm_model_trains_and_evaluates_with_running_stats():
    # A BatchNorm model (like ResNet-18) through the whole loop, SAM included: the step
    # carries the statistics, evaluation runs in inference mode (running averages).
    import jax
    import numpy as np
    from flax import nnx

    from optlab import data as data_lib

    class Net(nnx.Module):
        def __init__(self, *, rngs):
            self.stem = nnx.Linear(8, 16, rngs=rngs)
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.head = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.bn(self.stem(x))))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    ds = data_lib.Dataset(x[:96], y[:96], x[96:], y[96:], 3, "toy")
    task = tasks.Task(
        "toy",
        "toy",
        lambda d: ds,
        lambda ds, rngs: Net(rngs=rngs),
        tasks.classification_metrics,
        epochs=3,
        batch_size=32,
        target=0.5,
    )
    settings = runner.RunSettings(epochs=3, steps=None, batch_size=32, seed=0, target=0.5)
    for name in ("momentum", "sam"):
        r = runner.train_one(
            task, ds, build_optimizer(name, None, {"learning_rate": 0.05}), settings
        )
        assert len(r.evals) == 3 and all(math.isfinite(e["test_loss"]) for e in r.evals)
        assert r.final_acc > 0.5
