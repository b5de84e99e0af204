"""Tests of `SharpnessMonitor`: hooks with fake logs, against NumPy."""

import math

import numpy as np
import pytest

from keras_eigensam import callbacks
from tests import tiny
from tests.callbacks.helpers import compiled_mlp
from tests.callbacks.helpers import data64
from tests.callbacks.helpers import keras_sharpness_ascent
from tests.hessian.reference import numpy_sharpness


@pytest.mark.parametrize("case", ["one_batch", "sample_weight_and_l2"])
def test_sharpness_matches_numpy(case):
    x, y, x64, y64 = data64()
    rho, num_samples, steps = 0.1, 4, 3
    sample_weight, l2 = None, 0.0
    if case == "one_batch":
        data = (x, y)
    else:
        # The penalty is evaluated at the perturbed weights too.
        sample_weight, l2 = np.linspace(0.5, 2.0, len(x)).astype("float32"), 0.01
        data = (x, y, sample_weight)
    model = tiny.mlp(l2=l2)
    model.compile(optimizer="sgd", loss="mse")
    monitor = callbacks.SharpnessMonitor(
        data, rho=rho, num_samples=num_samples, ascent_steps=steps, seed=3
    )
    monitor.set_model(model)
    logs = {}
    monitor.on_epoch_end(0, logs)
    expected = numpy_sharpness(
        tiny.weights_of(model), x64, y64, rho, num_samples, 3, steps, 2.5 * rho / steps,
        sample_weight=sample_weight, l2=l2,
    )
    assert set(logs) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert logs["sharpness_worst_case"] >= logs["sharpness_ascent"]
    assert logs["sharpness_ascent"] > logs["sharpness_average"] > 0


def test_sharpness_subset_of_measures():
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.SharpnessMonitor((x, y), measures=["worst_case"], ascent_steps=2)
    monitor.set_model(model)
    assert list(monitor.measure()) == ["sharpness_worst_case"]


def test_sharpness_uses_inference_mode():
    # BatchNormalization with moving statistics far from the probe batch's
    # statistics: inference and training mode give different sharpness.
    x, y = tiny.data()
    model = tiny.bn_dropout_net()
    bn = model.layers[1]
    bn.moving_mean.assign(np.full(8, 0.7, "float32"))
    bn.moving_variance.assign(np.full(8, 3.0, "float32"))
    model.compile(optimizer="sgd", loss="mse")
    monitor = callbacks.SharpnessMonitor((x, y), rho=0.1, measures="ascent")
    monitor.set_model(model)
    before = [np.array(v) for v in model.variables]
    measured = monitor.measure()["sharpness_ascent"]
    inference = keras_sharpness_ascent(model, x, y, 0.1, training=False)
    training = keras_sharpness_ascent(model, x, y, 0.1, training=True)
    for variable, value in zip(model.variables, before):
        variable.assign(value)  # training mode moved the statistics
    assert abs(training - inference) > 0.2 * abs(inference)  # the modes differ
    np.testing.assert_allclose(measured, inference, rtol=1e-4, atol=1e-7)


def test_missing_loss_is_reported():
    x, y = tiny.data()
    monitor = callbacks.SharpnessMonitor((x, y))
    monitor.set_model(tiny.mlp())
    with pytest.raises(ValueError, match=r"`loss` is None.*pass `loss=`"):
        monitor.measure()


def test_sharpness_every_int_steps_logs_the_latest_measurement():
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.SharpnessMonitor((x, y), every=2, measures="ascent", log_dir=None)
    monitor.set_model(model)
    monitor.on_train_begin()
    first = {}
    model.optimizer.iterations.assign(1)
    monitor.on_train_batch_end(0, {})
    monitor.on_epoch_end(0, first)
    assert math.isnan(first["sharpness_ascent"])  # nothing measured yet
    model.optimizer.iterations.assign(2)
    monitor.on_train_batch_end(1, {})
    second = {}
    monitor.on_epoch_end(1, second)
    assert [step for step, _ in monitor.history] == [2]
    assert second["sharpness_ascent"] == monitor.history[0][1]["sharpness_ascent"]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: callbacks.SharpnessMonitor(d, rho=0.0), ValueError, r"`rho`.*Received: rho=0.0"),
        (lambda d: callbacks.SharpnessMonitor(d, measures=("ascent", "flatness")),
         ValueError, r"`measures`.*unknown 'flatness'"),
        (lambda d: callbacks.SharpnessMonitor(d, num_samples=0),
         ValueError, r"`num_samples`.*Received: num_samples=0"),
        (lambda d: callbacks.SharpnessMonitor(d, every=0),
         ValueError, r"`every`.*Received: every=0"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make(tiny.data())
