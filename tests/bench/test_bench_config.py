"""CompareConfig checks every field at construction; the registry shares its checks."""

import numpy as np
import pytest

from optlab.bench import OPTIMIZERS, BenchError, CompareConfig, build_optimizer
from optlab.bench.config import SCHEDULES, check_schedule


def test_defaults_and_normalization():
    c = CompareConfig()
    assert c.tasks == ("digits-lenet5",)
    assert c.optimizers == tuple(OPTIMIZERS)
    c = CompareConfig(tasks="logistic, digits-mlp", optimizers=["sgd", " adam"])
    assert c.tasks == ("logistic", "digits-mlp") and c.optimizers == ("sgd", "adam")
    # NumPy integers are integers.
    assert CompareConfig(epochs=np.int64(3), seed=np.int32(5)).epochs == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": ()}, "no task given"),
        ({"tasks": ("nope",)}, "unknown task 'nope'; known: digits-lenet5"),
        ({"tasks": ("logistic", "logistic")}, "a task is listed twice"),
        ({"optimizers": ()}, "no optimizer given"),
        ({"optimizers": ("sgd", "sgd")}, "an optimizer is listed twice"),
        ({"optimizers": ("adamx",)}, "unknown optimizer 'adamx'"),
        ({"optimizers": ("sgd",), "hparams": {"adam": {"learning_rate": 1}}}, "not being compared"),
        ({"optimizers": ("sam",), "hparams": {"sam": {"rhoo": 1}}}, "no hyperparameter 'rhoo'"),
        ({"epochs": 0}, "--epochs must be a positive integer, got 0"),
        ({"steps": -3}, "--steps must be a positive integer, got -3"),
        ({"batch_size": 2.5}, "--batch-size must be a positive integer, got 2.5"),
        ({"epochs": True}, "--epochs must be a positive integer, got True"),
        ({"target": 0.0}, "--target must be a test accuracy in (0, 1], got 0.0"),
        ({"target": 1.5}, "--target must be a test accuracy in (0, 1], got 1.5"),
        ({"target": float("nan")}, "--target must be a test accuracy in (0, 1]"),
        ({"schedule": "linear"}, "unknown schedule 'linear'; known: constant, cosine"),
        ({"seed": -1}, "--seed must be an integer in [0, 2**63), got -1"),
        ({"seed": 2**63}, "--seed must be an integer in [0, 2**63)"),
        ({"seed": 0.5}, "--seed must be an integer"),
    ],
)
def test_bad_fields_raise_at_construction(kwargs, message):
    with pytest.raises(BenchError) as info:
        CompareConfig(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # BenchError is a ValueError


def test_one_schedule_check_for_config_and_registry():
    # The registry's build_optimizer and CompareConfig reject a schedule with the same check.
    with pytest.raises(BenchError) as from_config:
        CompareConfig(schedule="linear")
    with pytest.raises(BenchError) as from_registry:
        build_optimizer("adam", None, {}, schedule="linear", total_steps=10)
    with pytest.raises(BenchError) as direct:
        check_schedule("linear")
    assert str(from_config.value) == str(from_registry.value) == str(direct.value)
    assert all(check_schedule(s) == s for s in SCHEDULES)
