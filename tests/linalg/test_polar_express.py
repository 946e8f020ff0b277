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
        x = np.concatenate(
            [
                np.geomspace(step.lower, step.upper, 50_001),
                np.linspace(step.lower, step.upper, 50_001),
            ]
        )
        y = evaluate(step, x)
        assert y.min() >= step.out_lower - 1e-9 and y.max() <= step.out_upper + 1e-9
        assert y.min() > 0  # odd quintic with positive slope: no sign flips of singular values


def test_error_shrinks_to_target():
    steps = polar_express_steps(8, 1e-3)
    errors = [s.error for s in steps]
    assert all(b < a for a, b in zip(errors[:6], errors[1:7], strict=False))
    assert errors[5] < 1e-2 and errors[6] < 1e-4


def test_first_step_is_the_published_one():
    # Amsel et al. publish (8.28721201814563, -23.595886519098837, 17.300387312530933) for
    # l = 1e-3 before their safety factor, from their cushion 0.02407327424182761. optlab
    # generates its own; with that cushion and no safety it must agree to the Remez solve's
    # accuracy (its exchange stops at relative changes of 1e-14; 1e-9 leaves room for LAPACK).
    a, b, c = polar_express_coefficients(1, 1e-3, 0.0, 0.02407327424182761)[0]
    assert a == pytest.approx(8.28721201814563, rel=1e-9)
    assert b == pytest.approx(-23.595886519098837, rel=1e-9)
    assert c == pytest.approx(17.300387312530933, rel=1e-9)


def interior_minimum(step):
    """``(x, p(x))`` at the polynomial's local minimum inside its interval, or None."""
    a, b, c = step.a, step.b, step.c
    disc = 9 * b * b - 20 * a * c
    if c <= 0 or disc < 0:
        return None
    x = np.sqrt((-3 * b + np.sqrt(disc)) / (10 * c))  # the larger root of p' = 0: a minimum
    return (x, evaluate(step, x)) if step.lower < x < step.upper else None


def bfloat16_roundoff(step, x):
    """Error of evaluating ``a x + (b x^3 + c x^5)`` in bfloat16: both terms rounded (2^-8)."""
    return 2.0**-8 * (abs(step.a * x) + abs(step.b * x**3 + step.c * x**5))


@pytest.mark.parametrize("lower_bound", [1e-3, 5e-4, 1e-4])
def test_cushioned_steps_keep_their_interior_minimum_above_bfloat16_roundoff(lower_bound):
    # Without the cushion the first step's minimax quintic dips to 1 - E (0.0085 for l = 1e-3)
    # at x ~ 0.82, below the round-off of evaluating it there in bfloat16 (0.05): singular values
    # near 0.82 changed sign. With it, every interior minimum is ~0.2, over 3x that round-off.
    for step in polar_express_steps(8, lower_bound):
        found = interior_minimum(step)
        if found is not None:
            x, m = found
            assert m >= 3 * bfloat16_roundoff(step, x), (step, m)
    x, m = interior_minimum(polar_express_steps(1, lower_bound, cushion=0.0)[0])
    assert m < bfloat16_roundoff(polar_express_steps(1, lower_bound, cushion=0.0)[0], x)
    # The price in exact arithmetic: the slope at l, which lifts the smallest singular values,
    # is 2% lower (8.29 instead of 8.47 for l = 1e-3 and no safety).
    assert (
        polar_express_steps(1, lower_bound, 0.0)[0].a
        >= 0.97 * polar_express_steps(1, lower_bound, 0.0, 0.0)[0].a
    )


def test_default_steps_depend_on_size_only_logarithmically():
    assert default_steps("newton_schulz") == 5
    small = default_steps("polar_express", (16, 16))
    large = default_steps("polar_express", (4096, 4096))
    assert 5 <= small <= large <= 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 3, "lower_bound": 0.0}, "lower_bound"),
        ({"steps": 3, "safety": -0.1}, "safety"),
        ({"steps": 3, "cushion": 1.0}, "cushion"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polar_express_steps(**kwargs)
