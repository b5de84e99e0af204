"""Tests of `keras_eigensam.hessian.sharpness` against a NumPy reference."""

import numpy as np
import pytest

from keras_eigensam import hessian
from tests import tiny
from tests.hessian.reference import numpy_sharpness


@pytest.mark.parametrize("case", ["one_batch", "two_batches", "sample_weight_and_l2"])
def test_sharpness_matches_numpy(case):
    x, y = tiny.data()
    x64, y64 = x.astype("float64"), y.astype("float64")
    rho, num_samples, steps = 0.1, 4, 3
    sample_weight, l2 = None, 0.0
    if case == "one_batch":
        data = (x, y)
    elif case == "two_batches":
        # The batch-size-weighted mean over the probe set is the full mean.
        data = [(x[:10], y[:10]), (x[10:], y[10:])]
    else:
        # The penalty is evaluated at the perturbed weights too.
        sample_weight, l2 = np.linspace(0.5, 2.0, len(x)).astype("float32"), 0.01
        data = (x, y, sample_weight)
    model = tiny.mlp(l2=l2)
    objective = hessian.ProbeLoss(model, "mse", data)
    values = hessian.sharpness(
        objective, rho=rho, num_samples=num_samples, ascent_steps=steps, seed=3
    )
    expected = numpy_sharpness(
        tiny.weights_of(model), x64, y64, rho, num_samples, 3, steps, 2.5 * rho / steps,
        sample_weight=sample_weight, l2=l2,
    )
    assert list(values) == list(hessian.SHARPNESS_MEASURES)
    for measure, value in values.items():
        np.testing.assert_allclose(
            value, expected[f"sharpness_{measure}"], rtol=1e-4, atol=1e-6, err_msg=measure
        )
    assert values["worst_case"] >= values["ascent"] > values["average"] > 0


def test_random_unit_directions_are_the_documented_draws():
    directions = list(hessian.random_unit_directions(7, num_samples=3, seed=5))
    rng = np.random.default_rng(5)
    for direction in directions:
        z = rng.standard_normal(7)
        np.testing.assert_array_equal(direction, z / np.linalg.norm(z))


def test_subset_of_measures_and_explicit_step_size():
    x, y = tiny.data()
    objective = hessian.ProbeLoss(tiny.mlp(), "mse", (x, y))
    values = hessian.sharpness(objective, measures=["worst_case", "average"], num_samples=2)
    assert list(values) == ["average", "worst_case"]  # in SHARPNESS_MEASURES order
    tiny_step = hessian.sharpness(objective, measures="worst_case", step_size=1e-9)
    ascent = hessian.sharpness(objective, measures="ascent")
    np.testing.assert_allclose(tiny_step["worst_case"], ascent["ascent"], rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rho=0.0), ValueError, r"`rho`.*Received: rho=0.0"),
        (dict(rho=-0.1), ValueError, r"`rho`.*Received: rho=-0.1"),
        (dict(measures=("ascent", "flatness")), ValueError, r"`measures`.*unknown 'flatness'"),
        (dict(measures=()), ValueError, r"`measures`.*Received: measures=\(\)"),
        (dict(num_samples=0), ValueError, r"`num_samples`.*Received: num_samples=0"),
        (dict(ascent_steps=0), ValueError, r"`ascent_steps`.*Received: ascent_steps=0"),
        (dict(step_size=-1.0), ValueError, r"`step_size`.*Received: step_size=-1.0"),
        (dict(seed=1.5), TypeError, r"`seed` must be an integer"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        hessian.sharpness(None, **kwargs)
