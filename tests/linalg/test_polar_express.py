"""The generated Polar Express polynomials keep the bounds they state."""

import numpy as np
import pytest

from optlab.linalg import default_steps, polar_express_coefficients, polar_express_steps


def evaluate(step, x):
    return step.a * x + step.b * x**3 + step.c * x**5


@pytest.mark.parametrize("lower_bound", [1e-3, 1e-4])
def test_each_step_maps_its_interval_into_the_stated_one(lower_bound):
    steps = polar_express_steps(10, lower_bound)
    assert steps[0].lower == lower_bound and steps[0].upper == 1.0
    for prev, step in zip(steps, steps[1:], strict=False):
        assert (step.lower, step.upper) == (prev.out_lower, prev.out_upper)
    for step in steps:
        # An independent grid (not the one the generator used), dense at both ends.
        x = np.concatenate([np.geomspace(step.lower, step.upper, 50_001),
                            np.linspace(step.lower, step.upper, 50_001)])
        y = evaluate(step, x)
        assert y.min() >= step.out_lower - 1e-9 and y.max() <= step.out_upper + 1e-9
        assert y.min() > 0  # odd quintic with positive slope: no sign flips of singular values


def test_error_shrinks_to_target():
    steps = polar_express_steps(8, 1e-3)
    errors = [s.error for s in steps]
    assert all(b < a for a, b in zip(errors[:6], errors[1:7], strict=False))
    assert errors[5] < 1e-2 and errors[6] < 1e-4


def test_first_step_is_close_to_the_published_one():
    # Amsel et al. report (8.2872, -23.5959, 17.3004) for l = 1e-3 with their own safety factor;
    # optlab's differs only by its safety scaling.
    a, b, c = polar_express_coefficients(1, 1e-3, 0.0)[0]
    assert a == pytest.approx(8.47, rel=0.03)
    assert b == pytest.approx(-25.1, rel=0.05)
    assert c == pytest.approx(18.6, rel=0.08)


def test_default_steps_depend_on_size_only_logarithmically():
    assert default_steps("newton_schulz") == 5
    small = default_steps("polar_express", (16, 16))
    large = default_steps("polar_express", (4096, 4096))
    assert 5 <= small <= large <= 8


@pytest.mark.parametrize(
    "kwargs, match",
    [({"steps": 0}, "steps"), ({"steps": 3, "lower_bound": 0.0}, "lower_bound"),
     ({"steps": 3, "safety": -0.1}, "safety")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polar_express_steps(**kwargs)
