"""Tests of the shared schedule and monitor behaviour, and real fits with all callbacks."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import callbacks
from keras_eigensam import hessian
from tests import numpy_reference as ref
from tests import tiny
from tests.callbacks.helpers import compiled_mlp
from tests.callbacks.helpers import data64
from tests.callbacks.helpers import event_scalars
from tests.callbacks.helpers import read_csv
from tests.callbacks.helpers import sam_model
from tests.hessian.reference import numpy_sharpness


def test_monitors_write_no_variable():
    x, y = tiny.data()
    model = tiny.bn_dropout_net(dropout=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # moving stats away from init
    before = [np.array(v) for v in model.variables + model.optimizer.variables]
    for monitor in (
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        callbacks.HessianEigenvalueMonitor((x, y), training=True, num_matvecs=5),
        callbacks.HessianEigenvalueMonitor((x, y), num_matvecs=5),
    ):
        monitor.set_model(model)
        monitor.on_epoch_end(0, {})
    after = [np.array(v) for v in model.variables + model.optimizer.variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def all_callbacks(tmp_path, x, y):
    return [
        callbacks.HessianEigenvalueMonitor(
            (x, y), top_k=2, num_matvecs=10, log_dir=str(tmp_path / "hessian")
        ),
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        callbacks.EigenAlignmentLogger(str(tmp_path / "alignment")),
        keras.callbacks.CSVLogger(str(tmp_path / "history.csv")),
    ]


def test_fit_with_all_callbacks(tmp_path, op_determinism):
    x, y = tiny.data()
    model = sam_model()
    cbs = all_callbacks(tmp_path, x, y)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=cbs)
    keys = ["hessian_top_eigenvalue", "hessian_eigenvalue_2", "sharpness_ascent",
            "sharpness_average", "sharpness_worst_case"]
    rows = read_csv(tmp_path / "history.csv")
    for key in keys:
        assert len(history.history[key]) == 2 and all(map(math.isfinite, history.history[key]))
        np.testing.assert_allclose([float(r[key]) for r in rows], history.history[key], rtol=1e-6)
    assert [s for s, _ in cbs[0].history] == [4, 8]
    events = event_scalars(str(tmp_path / "hessian"))
    assert [s for s, _ in events["hessian_top_eigenvalue"]] == [4, 8]
    assert len(read_csv(tmp_path / "alignment" / callbacks.ALIGNMENT_CSV)) == 8
    # The epoch mean of the recovered per-step values is Keras's epoch value.
    second_epoch = [v["eigen_alignment"] for s, v in cbs[2].history if s > 4]
    np.testing.assert_allclose(np.mean(second_epoch), history.history["eigen_alignment"][1], rtol=1e-5)

    # The callbacks do not change training.
    baseline = sam_model()
    baseline.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(tiny.weights_of(model), tiny.weights_of(baseline)):
        np.testing.assert_array_equal(a, b)

    # A second fit starts afresh; steps go on from the optimizer's count.
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=cbs)
    assert [s for s, _ in cbs[0].history] == [12]
    assert [s for s, _ in cbs[2].history] == [9, 10, 11, 12]
    # The CSV keeps the earlier fit's steps (up to where this fit starts).
    rows = read_csv(tmp_path / "alignment" / callbacks.ALIGNMENT_CSV)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))


def test_keras_tensorboard_sees_monitor_values(tmp_path):
    pytest.importorskip("tensorboard", reason="keras.callbacks.TensorBoard needs tensorboard")
    x, y = tiny.data()
    model = compiled_mlp()
    cbs = [
        callbacks.HessianEigenvalueMonitor((x, y), num_matvecs=10),
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        keras.callbacks.TensorBoard(str(tmp_path)),
    ]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=cbs)
    events = event_scalars(str(tmp_path / "train"))
    for key in ("hessian_top_eigenvalue", "sharpness_ascent", "sharpness_worst_case"):
        assert [s for s, _ in events[f"epoch_{key}"]] == [0, 1]
        np.testing.assert_allclose(
            [v for _, v in events[f"epoch_{key}"]], model.history.history[key], rtol=1e-6
        )


@pytest.mark.parametrize("monitor_first", [True, False])
def test_callbacks_after_the_monitor_see_its_values(tmp_path, monitor_first):
    # Keras hands one logs dict to the callbacks in list order.
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.SharpnessMonitor((x, y), measures="ascent")
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "h.csv"))
    order = [monitor, csv_logger] if monitor_first else [csv_logger, monitor]
    callback_list = keras.callbacks.CallbackList(order, add_history=True, model=model)
    callback_list.on_train_begin()
    callback_list.on_epoch_end(0, {"loss": 1.0})
    callback_list.on_train_end()
    assert ("sharpness_ascent" in read_csv(tmp_path / "h.csv")[0]) == monitor_first
    assert "sharpness_ascent" in model.history.history  # History is always last


def test_monitors_under_mirrored_strategy(mirrored_strategy):
    x, y, x64, y64 = data64()
    with mirrored_strategy.scope():
        model = compiled_mlp()
    history = model.fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
        callbacks=[
            callbacks.HessianEigenvalueMonitor((x, y), num_matvecs=30),
            callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        ],
    )
    w = tiny.weights_of(model)
    lam, _, _ = ref.top_eigenpair(ref.mlp_hessian(w, x64, y64))
    np.testing.assert_allclose(history.history["hessian_top_eigenvalue"][0], lam, rtol=1e-4)
    expected = numpy_sharpness(w, x64, y64, 0.05, 2, 0, 2, 2.5 * 0.05 / 2)
    for key, value in expected.items():
        np.testing.assert_allclose(history.history[key][0], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), ("epoch", 1)),
        (dict(every="epoch"), ("epoch", 1)),
        (dict(every=7), ("step", 7)),
        (dict(every_n_epochs=3), ("epoch", 3)),
        (dict(every_n_steps=5), ("step", 5)),
    ],
)
def test_schedule_of_every_and_the_deprecated_arguments(kwargs, expected):
    deprecated = {"every_n_epochs", "every_n_steps"} & set(kwargs)
    x, y = tiny.data()
    if deprecated:
        with pytest.warns(DeprecationWarning, match=deprecated.pop()):
            monitor = callbacks.HessianEigenvalueMonitor((x, y), **kwargs)
    else:
        monitor = callbacks.HessianEigenvalueMonitor((x, y), **kwargs)
    assert (monitor.schedule.unit, monitor.schedule.n) == expected
    every = {("epoch", 1): "epoch", ("epoch", 3): None}.get(expected, expected[1])
    assert monitor.every == every


@pytest.mark.parametrize("cls", [callbacks.HessianEigenvalueMonitor, callbacks.SharpnessMonitor])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every=0), r"`every` must be `\"epoch\"` or an integer >= 1.*every=0"),
        (dict(every="step"), r"`every`.*Received: every='step'"),
        (dict(every=True), r"`every`.*Received: every=True"),
        (dict(every=2, every_n_epochs=1), r"one schedule.*every=2, every_n_epochs=1"),
        (dict(every_n_epochs=0), r"`every_n_epochs`.*Received: every_n_epochs=0"),
    ],
)
def test_bad_schedules(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(tiny.data(), **kwargs)


def test_both_deprecated_schedules_are_refused():
    with pytest.raises(ValueError, match=r"one schedule.*every_n_epochs=2, every_n_steps=5"):
        callbacks.HessianEigenvalueMonitor(tiny.data(), every_n_epochs=2, every_n_steps=5)


def test_sharpness_names_are_the_librarys():
    assert callbacks.SHARPNESS_MEASURES == hessian.SHARPNESS_MEASURES
    assert callbacks.random_unit_directions is hessian.random_unit_directions


@pytest.mark.parametrize("cls", [callbacks.HessianEigenvalueMonitor, callbacks.SharpnessMonitor])
@pytest.mark.parametrize(
    "data, match",
    [
        ([], r"`data` must not be empty.*0 batches"),
        ((np.zeros((0, 5)), np.zeros((0, 3))), r"`data` must not be empty.*0 examples"),
        (tf.data.Dataset.from_tensor_slices((np.zeros((0, 5)), np.zeros((0, 3)))).batch(4),
         r"`data` must not be empty.*0 batches"),
    ],
)
def test_empty_probe_data(cls, data, match):
    with pytest.raises(ValueError, match=match):
        cls(data)


def test_probe_data_of_wrong_type():
    with pytest.raises(TypeError, match=r"`data`.*Received: data of type ndarray"):
        callbacks.SharpnessMonitor(np.zeros((4, 5)))
