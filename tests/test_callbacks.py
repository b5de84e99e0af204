"""Tests of the curvature callbacks: hooks with fake logs, and real fits.

Values are checked against NumPy on the tiny MLP of `numpy_reference`
(`tanh(x W1 + b1) W2 + b2`, MSE): its exact Hessian for the eigenvalues, its
exact loss and gradient for the sharpness measures.
"""

import csv
import glob
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_eigensam as ks
from keras_eigensam import callbacks
from keras_eigensam import hessian
from tests import numpy_reference as ref
from tests import tiny

METRICS = ("top_eigenvalue", "eigen_alignment", "grad_eigen_cosine")


# ---------------------------------------------------------------- helpers


def _compiled_mlp():
    model = tiny.mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _sam_model(net=None, refresh_every=2):
    model = ks.SharpnessAwareModel(
        net or tiny.mlp(),
        method=ks.SAM(rho=0.1, track_eigen=True, refresh_every=refresh_every, seed=0),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data64():
    x, y = tiny.data()
    return x, y, x.astype("float64"), y.astype("float64")


def _event_scalars(log_dir):
    """`{tag: [(step, value), …]}` from every event file under `log_dir`."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.*"), recursive=True)):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.dtype.kind not in "fiu" or array.size != 1:
                        continue  # not a scalar (e.g. Keras's model config)
                    number = float(array)
                else:
                    number = float(value.simple_value)
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _numpy_sharpness(
    w, x, y, rho, num_samples, seed, ascent_steps, step_size, sample_weight=None, l2=0.0
):
    """The three sharpness notions in float64, written out independently."""
    base, g = ref.mlp_loss_and_grad(w, x, y, sample_weight, l2)

    def loss_at(e):
        w_e = ref.unflatten(ref.flatten(w) + e, w)
        return ref.mlp_loss_and_grad(w_e, x, y, sample_weight, l2)

    g = ref.flatten(g)
    e = rho * g / (np.linalg.norm(g) + 1e-12)
    ascent_loss, grad_e = loss_at(e)
    best = ascent_loss
    for _ in range(ascent_steps):
        grad_e = ref.flatten(grad_e)
        e = e + step_size * grad_e / (np.linalg.norm(grad_e) + 1e-12)
        norm = np.linalg.norm(e)
        if norm > rho:
            e = e * rho / norm
        loss, grad_e = loss_at(e)
        best = max(best, loss)
    rng = np.random.default_rng(seed)
    d = ref.flatten(w).size
    average = 0.0
    for _ in range(num_samples):
        z = rng.standard_normal(d)
        average += loss_at(rho * z / np.linalg.norm(z))[0] / num_samples
    return {
        "sharpness_ascent": ascent_loss - base,
        "sharpness_average": average - base,
        "sharpness_worst_case": best - base,
    }


# ------------------------------------------------- HessianEigenvalueMonitor


def test_hessian_monitor_logs_eigenvalues_and_trace():
    x, y, x64, y64 = _data64()
    model = _compiled_mlp()
    exact = np.sort(np.linalg.eigvalsh(ref.mlp_hessian(tiny.weights_of(model), x64, y64)))
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), top_k=2, trace=True, trace_samples=20
    )
    monitor.set_model(model)
    logs = {"loss": 1.0}
    monitor.on_epoch_end(0, logs)
    assert set(logs) == {"loss", "hessian_top_eigenvalue", "hessian_eigenvalue_2", "hessian_trace"}
    np.testing.assert_allclose(
        [logs["hessian_top_eigenvalue"], logs["hessian_eigenvalue_2"]],
        exact[::-1][:2], rtol=1e-4,
    )
    # The trace is Hutchinson's estimate with the monitor's seed: the same
    # number as a direct HessianOperator call.
    op = hessian.HessianOperator(model, "mse", (x, y), hvp_mode="reverse_over_reverse")
    direct = op.trace(num_samples=20, seed=0)
    np.testing.assert_allclose(logs["hessian_trace"], direct, rtol=1e-6)
    assert monitor.num_hvps == 30 + 20
    assert monitor.history == [(0, {k: logs[k] for k in monitor.keys})]


def test_hessian_monitor_power_method_and_explicit_loss():
    x, y, x64, y64 = _data64()
    model = tiny.mlp()  # not compiled: the loss is given
    lam, _, _ = ref.top_eigenpair(ref.mlp_hessian(tiny.weights_of(model), x64, y64))
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), method="power", loss="mse", max_iterations=200, tol=1e-6
    )
    monitor.set_model(model)
    np.testing.assert_allclose(monitor.measure()["hessian_top_eigenvalue"], lam, rtol=1e-4)


def test_hessian_monitor_every_n_epochs_writes_nan_in_between():
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor((x, y), every_n_epochs=2)
    monitor.set_model(model)
    monitor.on_train_begin()
    first, second = {}, {}
    monitor.on_epoch_end(0, first)
    monitor.on_epoch_end(1, second)
    assert math.isnan(first["hessian_top_eigenvalue"])
    assert math.isfinite(second["hessian_top_eigenvalue"])
    assert len(monitor.history) == 1


def test_hessian_monitor_every_n_steps_history_and_tensorboard(tmp_path):
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), every_n_steps=2, log_dir=str(tmp_path / "hessian")
    )
    monitor.set_model(model)
    monitor.on_train_begin()
    for step in range(1, 6):
        model.optimizer.iterations.assign(step)
        monitor.on_train_batch_end(step - 1, {"loss": 1.0})
    logs = {}
    monitor.on_epoch_end(0, logs)
    monitor.on_train_end()
    assert [step for step, _ in monitor.history] == [2, 4]
    value = monitor.history[-1][1]["hessian_top_eigenvalue"]
    assert logs["hessian_top_eigenvalue"] == value
    events = _event_scalars(str(tmp_path / "hessian"))
    assert [s for s, _ in events["hessian_top_eigenvalue"]] == [2, 4]
    np.testing.assert_allclose(events["hessian_top_eigenvalue"][-1][1], value, rtol=1e-6)


def test_hessian_monitor_every_n_steps_with_steps_per_execution():
    # With steps_per_execution=2 the step jumps by 2 between hooks; the
    # monitor measures whenever a multiple of every_n_steps was passed.
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor((x, y), every_n_steps=3, num_steps=5)
    monitor.set_model(model)
    monitor.on_train_begin()
    for step in (2, 4, 6, 8):
        model.optimizer.iterations.assign(step)
        monitor.on_train_batch_end(step - 1, {})
    assert [step for step, _ in monitor.history] == [4, 6]


def test_hessian_monitor_saves_density_snapshots(tmp_path):
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), density=True, density_steps=10, density_probes=2,
        density_dir=str(tmp_path), plot_density=True,
    )
    monitor.set_model(model)
    monitor.on_epoch_end(0, {})
    saved = np.load(tmp_path / "density_step_00000000.npz")
    op = hessian.HessianOperator(model, "mse", (x, y), hvp_mode="reverse_over_reverse")
    grid, density = op.density(num_steps=10, num_probes=2, seed=0)
    np.testing.assert_allclose(saved["grid"], grid, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(saved["density"], density, rtol=1e-5, atol=1e-9)
    assert os.path.getsize(tmp_path / "density_step_00000000.png") > 5000
    assert monitor.densities[0]["step"] == 0


# --------------------------------------------------------- SharpnessMonitor


@pytest.mark.parametrize("case", ["one_batch", "two_batches", "sample_weight_and_l2"])
def test_sharpness_matches_numpy(case):
    x, y, x64, y64 = _data64()
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
    model.compile(optimizer="sgd", loss="mse")
    monitor = callbacks.SharpnessMonitor(
        data, rho=rho, num_samples=num_samples, ascent_steps=steps, seed=3
    )
    monitor.set_model(model)
    logs = {}
    monitor.on_epoch_end(0, logs)
    expected = _numpy_sharpness(
        tiny.weights_of(model), x64, y64, rho, num_samples, 3, steps, 2.5 * rho / steps,
        sample_weight=sample_weight, l2=l2,
    )
    assert set(logs) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert logs["sharpness_worst_case"] >= logs["sharpness_ascent"]
    assert logs["sharpness_ascent"] > logs["sharpness_average"] > 0


def test_random_unit_directions_are_the_documented_draws():
    directions = list(callbacks.random_unit_directions(7, num_samples=3, seed=5))
    rng = np.random.default_rng(5)
    for direction in directions:
        z = rng.standard_normal(7)
        np.testing.assert_array_equal(direction, z / np.linalg.norm(z))


def test_sharpness_subset_of_measures():
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.SharpnessMonitor((x, y), measures=["worst_case"], ascent_steps=2)
    monitor.set_model(model)
    assert list(monitor.measure()) == ["sharpness_worst_case"]


def test_monitors_write_no_variable():
    x, y = tiny.data()
    model = tiny.bn_dropout_net(dropout=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # moving stats away from init
    before = [np.array(v) for v in model.variables + model.optimizer.variables]
    for monitor in (
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        callbacks.HessianEigenvalueMonitor((x, y), training=True, num_steps=5),
        callbacks.HessianEigenvalueMonitor((x, y), num_steps=5),
    ):
        monitor.set_model(model)
        monitor.on_epoch_end(0, {})
    after = [np.array(v) for v in model.variables + model.optimizer.variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _keras_sharpness_ascent(model, x, y, rho, training):
    """`L(w + ρĝ) − L(w)` written with Keras directly (weights assigned and
    restored), with the model in the given mode."""
    loss = keras.losses.MeanSquaredError()
    weights = [np.array(v) for v in model.trainable_variables]

    def value():
        return float(loss(y, model(x, training=training)))

    with tf.GradientTape() as tape:
        base = loss(y, model(x, training=training))
    grads = tape.gradient(base, model.trainable_variables)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
    for variable, w, g in zip(model.trainable_variables, weights, grads):
        variable.assign(w + rho * np.asarray(g) / (norm + 1e-12))
    perturbed = value()
    for variable, w in zip(model.trainable_variables, weights):
        variable.assign(w)
    return perturbed - float(base)


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
    inference = _keras_sharpness_ascent(model, x, y, 0.1, training=False)
    training = _keras_sharpness_ascent(model, x, y, 0.1, training=True)
    for variable, value in zip(model.variables, before):
        variable.assign(value)  # training mode moved the statistics
    assert abs(training - inference) > 0.2 * abs(inference)  # the modes differ
    np.testing.assert_allclose(measured, inference, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------- EigenAlignmentLogger


def _running_means(values):
    return list(np.cumsum(values) / np.arange(1, len(values) + 1))


def test_alignment_logger_recovers_per_step_values(tmp_path):
    model = _sam_model()
    model.method.eigenvector.eigenvalue.assign(2.5)
    logger = callbacks.EigenAlignmentLogger(str(tmp_path))
    logger.set_model(model)
    logger.on_train_begin()
    alignment = [0.1, 0.5, 0.3, 0.9]
    cosine = [0.2, 0.05, 0.7, 0.4]
    step = 0
    for epoch in range(2):
        logger.on_epoch_begin(epoch)
        # The logs hold Keras's running means (reset every epoch).
        for batch, (m_a, m_c) in enumerate(zip(_running_means(alignment), _running_means(cosine))):
            step += 1
            model.optimizer.iterations.assign(step)
            logger.on_train_batch_end(
                batch, {"loss": 1.0, "top_eigenvalue": 9.0, "eigen_alignment": m_a,
                        "grad_eigen_cosine": m_c},
            )
        logger.on_epoch_end(epoch, {})
    logger.on_train_end()
    assert [s for s, _ in logger.history] == list(range(1, 9))
    np.testing.assert_allclose(
        [v["eigen_alignment"] for _, v in logger.history], alignment * 2, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        [v["grad_eigen_cosine"] for _, v in logger.history], cosine * 2, rtol=1e-12, atol=1e-15
    )
    # The eigenvalue is the tracker's variable, not the running mean.
    assert all(v["top_eigenvalue"] == 2.5 for _, v in logger.history)
    rows = _read_csv(tmp_path / callbacks.ALIGNMENT_CSV)
    assert list(rows[0]) == ["step", *METRICS]
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    np.testing.assert_allclose([float(r["eigen_alignment"]) for r in rows], alignment * 2)
    events = _event_scalars(str(tmp_path))
    assert set(events) == set(METRICS)
    np.testing.assert_allclose([v for _, v in events["eigen_alignment"]], alignment * 2, rtol=1e-6)


def test_alignment_logger_every_n_steps_keeps_that_steps_value():
    model = _sam_model()
    logger = callbacks.EigenAlignmentLogger(every_n_steps=2)
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    values = [0.1, 0.5, 0.3, 0.9, 0.6]
    for batch, mean in enumerate(_running_means(values)):
        model.optimizer.iterations.assign(batch + 1)
        logger.on_train_batch_end(
            batch, {"top_eigenvalue": 1.0, "eigen_alignment": mean, "grad_eigen_cosine": mean}
        )
    assert [s for s, _ in logger.history] == [2, 4]
    np.testing.assert_allclose([v["eigen_alignment"] for _, v in logger.history], [0.5, 0.9])


def test_alignment_logger_with_steps_per_execution_logs_execution_means():
    model = _sam_model()
    logger = callbacks.EigenAlignmentLogger()
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    values = [0.1, 0.5, 0.3, 0.9]
    means = _running_means(values)
    for batch in (1, 3):  # Keras reports the last step of each execution
        model.optimizer.iterations.assign(batch + 1)
        logger.on_train_batch_end(
            batch, {"top_eigenvalue": 1.0, "eigen_alignment": means[batch],
                    "grad_eigen_cosine": means[batch]},
        )
    assert [s for s, _ in logger.history] == [2, 4]
    np.testing.assert_allclose(
        [v["eigen_alignment"] for _, v in logger.history], [0.3, 0.6], rtol=1e-12
    )


@pytest.mark.parametrize("kind", ["plain", "sam"])
def test_alignment_logger_rejects_models_without_the_metrics(kind):
    model = _compiled_mlp() if kind == "plain" else ks.SharpnessAwareModel(tiny.mlp())
    model.compile(optimizer="sgd", loss="mse")
    logger = callbacks.EigenAlignmentLogger()
    logger.set_model(model)
    with pytest.raises(ValueError, match=r"SAM\(track_eigen=True\).*Received: a model of type"):
        logger.on_train_begin()


def test_alignment_logger_matches_instantaneous_values(op_determinism):
    x, y = tiny.data()
    logger = callbacks.EigenAlignmentLogger()
    fitted = _sam_model(refresh_every=1)
    fitted.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    # train_on_batch resets the metrics, so it returns each step's own value.
    stepped = _sam_model(refresh_every=1)
    expected = [
        stepped.train_on_batch(x[i : i + 4], y[i : i + 4], return_dict=True)
        for i in range(0, 16, 4)
    ]
    assert [s for s, _ in logger.history] == [1, 2, 3, 4]
    for (_, got), want in zip(logger.history, expected):
        for name in METRICS:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------ real fits


def _all_callbacks(tmp_path, x, y):
    return [
        callbacks.HessianEigenvalueMonitor(
            (x, y), top_k=2, num_steps=10, log_dir=str(tmp_path / "hessian")
        ),
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        callbacks.EigenAlignmentLogger(str(tmp_path / "alignment")),
        keras.callbacks.CSVLogger(str(tmp_path / "history.csv")),
    ]


def test_fit_with_all_callbacks(tmp_path, op_determinism):
    x, y = tiny.data()
    model = _sam_model()
    cbs = _all_callbacks(tmp_path, x, y)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=cbs)
    keys = ["hessian_top_eigenvalue", "hessian_eigenvalue_2", "sharpness_ascent",
            "sharpness_average", "sharpness_worst_case"]
    rows = _read_csv(tmp_path / "history.csv")
    for key in keys:
        assert len(history.history[key]) == 2 and all(map(math.isfinite, history.history[key]))
        np.testing.assert_allclose([float(r[key]) for r in rows], history.history[key], rtol=1e-6)
    assert [s for s, _ in cbs[0].history] == [4, 8]
    events = _event_scalars(str(tmp_path / "hessian"))
    assert [s for s, _ in events["hessian_top_eigenvalue"]] == [4, 8]
    assert len(_read_csv(tmp_path / "alignment" / callbacks.ALIGNMENT_CSV)) == 8
    # The epoch mean of the recovered per-step values is Keras's epoch value.
    second_epoch = [v["eigen_alignment"] for s, v in cbs[2].history if s > 4]
    np.testing.assert_allclose(np.mean(second_epoch), history.history["eigen_alignment"][1], rtol=1e-5)

    # The callbacks do not change training.
    baseline = _sam_model()
    baseline.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(tiny.weights_of(model), tiny.weights_of(baseline)):
        np.testing.assert_array_equal(a, b)

    # A second fit starts afresh; steps go on from the optimizer's count.
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=cbs)
    assert [s for s, _ in cbs[0].history] == [12]
    assert [s for s, _ in cbs[2].history] == [9, 10, 11, 12]
    rows = _read_csv(tmp_path / "alignment" / callbacks.ALIGNMENT_CSV)
    assert [int(r["step"]) for r in rows] == [9, 10, 11, 12]


def test_keras_tensorboard_sees_monitor_values(tmp_path):
    pytest.importorskip("tensorboard", reason="keras.callbacks.TensorBoard needs tensorboard")
    x, y = tiny.data()
    model = _compiled_mlp()
    cbs = [
        callbacks.HessianEigenvalueMonitor((x, y), num_steps=10),
        callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        keras.callbacks.TensorBoard(str(tmp_path)),
    ]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=cbs)
    events = _event_scalars(str(tmp_path / "train"))
    for key in ("hessian_top_eigenvalue", "sharpness_ascent", "sharpness_worst_case"):
        assert [s for s, _ in events[f"epoch_{key}"]] == [0, 1]
        np.testing.assert_allclose(
            [v for _, v in events[f"epoch_{key}"]], model.history.history[key], rtol=1e-6
        )


@pytest.mark.parametrize("monitor_first", [True, False])
def test_callbacks_after_the_monitor_see_its_values(tmp_path, monitor_first):
    # Keras hands one logs dict to the callbacks in list order.
    x, y = tiny.data()
    model = _compiled_mlp()
    monitor = callbacks.SharpnessMonitor((x, y), measures="ascent")
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "h.csv"))
    order = [monitor, csv_logger] if monitor_first else [csv_logger, monitor]
    callback_list = keras.callbacks.CallbackList(order, add_history=True, model=model)
    callback_list.on_train_begin()
    callback_list.on_epoch_end(0, {"loss": 1.0})
    callback_list.on_train_end()
    assert ("sharpness_ascent" in _read_csv(tmp_path / "h.csv")[0]) == monitor_first
    assert "sharpness_ascent" in model.history.history  # History is always last


def test_monitors_under_mirrored_strategy(mirrored_strategy):
    x, y, x64, y64 = _data64()
    with mirrored_strategy.scope():
        model = _compiled_mlp()
    history = model.fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
        callbacks=[
            callbacks.HessianEigenvalueMonitor((x, y), num_steps=30),
            callbacks.SharpnessMonitor((x, y), num_samples=2, ascent_steps=2),
        ],
    )
    w = tiny.weights_of(model)
    lam, _, _ = ref.top_eigenpair(ref.mlp_hessian(w, x64, y64))
    np.testing.assert_allclose(history.history["hessian_top_eigenvalue"][0], lam, rtol=1e-4)
    expected = _numpy_sharpness(w, x64, y64, 0.05, 2, 0, 2, 2.5 * 0.05 / 2)
    for key, value in expected.items():
        np.testing.assert_allclose(history.history[key][0], value, rtol=1e-4, atol=1e-6)


def test_alignment_logger_under_mirrored_strategy(mirrored_strategy):
    x, y = tiny.data()
    with mirrored_strategy.scope():
        model = _sam_model()
    logger = callbacks.EigenAlignmentLogger()
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    assert [s for s, _ in logger.history] == [1, 2]
    for name in ("eigen_alignment", "grad_eigen_cosine"):
        np.testing.assert_allclose(
            np.mean([v[name] for _, v in logger.history]), history.history[name][0], rtol=1e-5
        )
    tracked = keras.ops.convert_to_numpy(model.method.eigenvector.eigenvalue)
    assert logger.history[-1][1]["top_eigenvalue"] == float(tracked)


# ---------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: callbacks.HessianEigenvalueMonitor(d, every_n_epochs=2, every_n_steps=5),
         ValueError, r"exactly one.*every_n_epochs=2, every_n_steps=5"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, every_n_epochs=1, every_n_steps=5),
         ValueError, r"exactly one.*every_n_epochs=1, every_n_steps=5"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, every_n_epochs=None),
         ValueError, r"exactly one.*every_n_epochs=None, every_n_steps=None"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, every_n_steps=0),
         ValueError, r"`every_n_steps`.*Received: every_n_steps=0"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, top_k=0),
         ValueError, r"`top_k`.*Received: top_k=0"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, method="arnoldi"),
         ValueError, r"`method`.*Received: method='arnoldi'"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, top_k=3, num_steps=2),
         ValueError, r"`num_steps`.*num_steps=2, top_k=3"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, plot_density=True),
         ValueError, r"`plot_density=True`.*density=False"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, trace=1),
         TypeError, r"`trace`.*Received: trace=1"),
        (lambda d: callbacks.SharpnessMonitor(d, rho=0.0),
         ValueError, r"`rho`.*Received: rho=0.0"),
        (lambda d: callbacks.SharpnessMonitor(d, rho=-0.1),
         ValueError, r"`rho`.*Received: rho=-0.1"),
        (lambda d: callbacks.SharpnessMonitor(d, measures=("ascent", "flatness")),
         ValueError, r"`measures`.*unknown 'flatness'"),
        (lambda d: callbacks.SharpnessMonitor(d, measures=()),
         ValueError, r"`measures`.*Received: measures=\(\)"),
        (lambda d: callbacks.SharpnessMonitor(d, num_samples=0),
         ValueError, r"`num_samples`.*Received: num_samples=0"),
        (lambda d: callbacks.SharpnessMonitor(d, every_n_epochs=0),
         ValueError, r"`every_n_epochs`.*Received: every_n_epochs=0"),
        (lambda d: callbacks.EigenAlignmentLogger(every_n_steps=0),
         ValueError, r"`every_n_steps`.*Received: every_n_steps=0"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make(tiny.data())


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


def test_missing_loss_is_reported():
    x, y = tiny.data()
    monitor = callbacks.SharpnessMonitor((x, y))
    monitor.set_model(tiny.mlp())
    with pytest.raises(ValueError, match=r"`loss` is None.*pass `loss=`"):
        monitor.measure()
