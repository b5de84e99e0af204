"""Tests of `HessianEigenvalueMonitor`: hooks with fake logs, against NumPy."""

import math
import os

import numpy as np
import pytest

from keras_eigensam import callbacks
from keras_eigensam import hessian
from tests import numpy_reference as ref
from tests import tiny
from tests.callbacks.helpers import compiled_mlp
from tests.callbacks.helpers import data64
from tests.callbacks.helpers import event_scalars


def test_hessian_monitor_logs_eigenvalues_and_trace():
    x, y, x64, y64 = data64()
    model = compiled_mlp()
    exact = np.sort(np.linalg.eigvalsh(ref.mlp_hessian(tiny.weights_of(model), x64, y64)))
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), top_k=2, trace=True, trace_matvecs=20
    )
    monitor.set_model(model)
    logs = {"loss": 1.0}
    monitor.on_epoch_end(0, logs)
    assert set(logs) == {
        "loss", "hessian_top_eigenvalue", "hessian_eigenvalue_2", "hessian_trace",
        "hessian_trace_std_error",
    }
    np.testing.assert_allclose(
        [logs["hessian_top_eigenvalue"], logs["hessian_eigenvalue_2"]],
        exact[::-1][:2], rtol=1e-4,
    )
    # The trace is Hutchinson's estimate with the monitor's seed: the same
    # number as a direct HessianOperator call.
    op = hessian.HessianOperator(model, "mse", (x, y), hvp_mode="reverse_over_reverse")
    direct = op.trace(num_matvecs=20, seed=0)
    np.testing.assert_allclose(logs["hessian_trace"], direct.value, rtol=1e-6)
    np.testing.assert_allclose(logs["hessian_trace_std_error"], direct.std_error, rtol=1e-6)
    eigen_cost = op.top_eigenpairs(k=2, seed=0).num_matvecs
    assert 2 <= eigen_cost <= 30
    assert monitor.num_matvecs_used == eigen_cost + 20
    assert monitor.history == [(0, {k: logs[k] for k in monitor.keys})]


def test_hessian_monitor_power_method_and_explicit_loss():
    x, y, x64, y64 = data64()
    model = tiny.mlp()  # not compiled: the loss is given
    lam, _, _ = ref.top_eigenpair(ref.mlp_hessian(tiny.weights_of(model), x64, y64))
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), method="power", loss="mse", num_matvecs=400, tol=1e-6
    )
    monitor.set_model(model)
    np.testing.assert_allclose(monitor.measure()["hessian_top_eigenvalue"], lam, rtol=1e-4)


def test_hessian_monitor_deprecated_every_n_epochs_writes_nan_in_between():
    x, y = tiny.data()
    model = compiled_mlp()
    with pytest.warns(DeprecationWarning, match="every_n_epochs"):
        monitor = callbacks.HessianEigenvalueMonitor((x, y), every_n_epochs=2)
    monitor.set_model(model)
    monitor.on_train_begin()
    first, second = {}, {}
    monitor.on_epoch_end(0, first)
    monitor.on_epoch_end(1, second)
    assert math.isnan(first["hessian_top_eigenvalue"])
    assert math.isfinite(second["hessian_top_eigenvalue"])
    assert len(monitor.history) == 1


def test_hessian_monitor_every_epoch_is_the_default():
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor((x, y), num_matvecs=5)
    assert monitor.every == "epoch"
    monitor.set_model(model)
    monitor.on_train_begin()
    for epoch in range(2):
        model.optimizer.iterations.assign(3 * (epoch + 1))
        monitor.on_train_batch_end(0, {})  # no measurement after a batch
        logs = {}
        monitor.on_epoch_end(epoch, logs)
        assert math.isfinite(logs["hessian_top_eigenvalue"])
    assert [step for step, _ in monitor.history] == [3, 6]


def test_hessian_monitor_every_int_steps_history_and_tensorboard(tmp_path):
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), every=2, log_dir=str(tmp_path / "hessian")
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
    events = event_scalars(str(tmp_path / "hessian"))
    assert [s for s, _ in events["hessian_top_eigenvalue"]] == [2, 4]
    np.testing.assert_allclose(events["hessian_top_eigenvalue"][-1][1], value, rtol=1e-6)


def test_hessian_monitor_every_int_steps_with_steps_per_execution():
    # With steps_per_execution=2 the step jumps by 2 between hooks; the
    # monitor measures whenever a multiple of `every` was passed.
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor((x, y), every=3, num_matvecs=5)
    monitor.set_model(model)
    monitor.on_train_begin()
    for step in (2, 4, 6, 8):
        model.optimizer.iterations.assign(step)
        monitor.on_train_batch_end(step - 1, {})
    assert [step for step, _ in monitor.history] == [4, 6]


def test_hessian_monitor_saves_density_snapshots(tmp_path):
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), density=True, density_matvecs=20, density_probes=2,
        density_dir=str(tmp_path), plot_density=True,
    )
    monitor.set_model(model)
    monitor.on_epoch_end(0, {})
    saved = np.load(tmp_path / "density_step_00000000.npz")
    op = hessian.HessianOperator(model, "mse", (x, y), hvp_mode="reverse_over_reverse")
    grid, density = op.density(num_matvecs=20, num_probes=2, seed=0)
    np.testing.assert_allclose(saved["grid"], grid, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(saved["density"], density, rtol=1e-5, atol=1e-9)
    assert os.path.getsize(tmp_path / "density_step_00000000.png") > 5000
    assert monitor.densities[0]["step"] == 0


def test_hessian_monitor_trace_is_within_the_estimators_standard_error():
    x, y, x64, y64 = data64()
    model = compiled_mlp()
    h = ref.mlp_hessian(tiny.weights_of(model), x64, y64)
    monitor = callbacks.HessianEigenvalueMonitor((x, y), trace=True, trace_matvecs=200, num_matvecs=5)
    monitor.set_model(model)
    std_err = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 200)
    assert abs(monitor.measure()["hessian_trace"] - np.trace(h)) <= 5 * std_err


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda d: callbacks.HessianEigenvalueMonitor(d, top_k=0),
         ValueError, r"`top_k`.*Received: top_k=0"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, method="arnoldi"),
         ValueError, r"`method`.*Received: method='arnoldi'"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, hvp_mode="exact"),
         ValueError, r"`hvp_mode`.*Received: hvp_mode='exact'"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, top_k=3, num_matvecs=2),
         ValueError, r"`num_matvecs`.*num_matvecs=2, top_k=3"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, top_k=2, num_matvecs=2, method="power"),
         ValueError, r"`num_matvecs` must be at least 3.*num_matvecs=2, top_k=2"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, plot_density=True),
         ValueError, r"`plot_density=True`.*density=False"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, trace=1),
         TypeError, r"`trace`.*Received: trace=1"),
        (lambda d: callbacks.HessianEigenvalueMonitor(d, 2),
         TypeError, r"positional"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make(tiny.data())


@pytest.mark.parametrize(
    "curvature, operator",
    [("ggn", hessian.GGNOperator), ("fisher", hessian.EmpiricalFisherOperator)],
)
def test_monitor_of_ggn_and_fisher_logs_the_operators_eigenvalue(curvature, operator):
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), curvature=curvature, top_k=2, num_matvecs=10, trace=True, trace_matvecs=6
    )
    monitor.set_model(model)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert set(logs) == {
        f"{curvature}_top_eigenvalue", f"{curvature}_eigenvalue_2",
        f"{curvature}_trace", f"{curvature}_trace_std_error",
    }
    op = operator(model, "mse", (x, y))
    direct = op.top_eigenpairs(k=2, num_matvecs=10, seed=0)
    np.testing.assert_allclose(
        [logs[f"{curvature}_top_eigenvalue"], logs[f"{curvature}_eigenvalue_2"]],
        direct.eigenvalues, rtol=1e-6, atol=0,
    )
    trace = op.trace(num_matvecs=6, seed=0)
    np.testing.assert_allclose(logs[f"{curvature}_trace"], trace.value, rtol=1e-6, atol=0)
    assert monitor.num_matvecs_used == direct.num_matvecs + 6


def test_monitor_ggn_differs_from_the_hessian():
    # Not the Hessian under another name: the tanh network's Hessian has a
    # residual term the GGN drops.
    x, y = tiny.data()
    model = compiled_mlp()
    values = {}
    for curvature in ("hessian", "ggn"):
        monitor = callbacks.HessianEigenvalueMonitor((x, y), curvature=curvature, num_matvecs=10)
        monitor.set_model(model)
        values[curvature] = monitor.measure()[f"{curvature}_top_eigenvalue"]
    assert not np.isclose(values["hessian"], values["ggn"], rtol=1e-3)


def test_monitor_which_smallest_logs_the_direct_call():
    x, y, x64, y64 = data64()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor((x, y), which="smallest", top_k=2)
    monitor.set_model(model)
    logs = monitor.measure()
    op = hessian.HessianOperator(model, "mse", (x, y))
    direct = op.top_eigenpairs(k=2, which="smallest", seed=0)
    np.testing.assert_allclose(
        [logs["hessian_top_eigenvalue"], logs["hessian_eigenvalue_2"]],
        direct.eigenvalues, rtol=1e-6, atol=0,
    )
    # And they are the two most negative eigenvalues of the NumPy Hessian.
    exact = np.linalg.eigvalsh(ref.mlp_hessian(tiny.weights_of(model), x64, y64))
    assert exact[0] < 0
    np.testing.assert_allclose(direct.eigenvalues, exact[:2], rtol=1e-3, atol=1e-5)


def test_monitor_hutchpp_trace_is_the_direct_call():
    x, y = tiny.data()
    model = compiled_mlp()
    monitor = callbacks.HessianEigenvalueMonitor(
        (x, y), num_matvecs=5, trace=True, trace_matvecs=9, trace_method="hutch++"
    )
    monitor.set_model(model)
    logs = monitor.measure()
    op = hessian.HessianOperator(model, "mse", (x, y))
    direct = op.trace(num_matvecs=9, method="hutch++", seed=0)
    np.testing.assert_allclose(logs["hessian_trace"], direct.value, rtol=1e-6, atol=0)
    np.testing.assert_allclose(logs["hessian_trace_std_error"], direct.std_error, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(curvature="kfac"), r"`curvature` must be one of .*Received: curvature='kfac'"),
        (dict(curvature="GGN"), r"`curvature`.*Received: curvature='GGN'"),
        (dict(which="middle"), r"`which` must be one of .*Received: which='middle'"),
        (dict(trace_method="hutch+"), r"`trace_method`.*Received: trace_method='hutch\+'"),
        (
            dict(trace=True, trace_method="hutch++", trace_matvecs=2),
            r"`trace_matvecs` must be an integer >= 3. Received: trace_matvecs=2",
        ),
    ],
)
def test_bad_curvature_which_and_trace_method(kwargs, match):
    with pytest.raises(ValueError, match=match):
        callbacks.HessianEigenvalueMonitor(tiny.data(), **kwargs)
