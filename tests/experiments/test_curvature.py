"""Tests of `keras_eigensam.experiments.curvature`."""

import csv

import numpy as np

from keras_eigensam import callbacks
from keras_eigensam.experiments import curvature
from keras_eigensam.experiments import runner
from keras_eigensam.experiments.config import TrainConfig
from keras_eigensam.experiments.config import run_name
from keras_eigensam.methods import registry


def _kinds(callback_list):
    return [type(c) for c in callback_list]


def test_alignment_is_logged_only_for_methods_that_track_the_eigenvector(tmp_path):
    probe = (np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"))
    monitors, loggers = curvature.curvature_callbacks(probe, str(tmp_path))
    assert _kinds(monitors) == [
        callbacks.HessianEigenvalueMonitor,
        callbacks.SharpnessMonitor,
    ]
    assert monitors[1].rho == curvature.SHARPNESS_RHO
    assert loggers == []
    for method, logged in [
        (registry.create("sam"), False),
        (registry.create("asam"), False),
        (registry.create("sam", track_eigen=True), True),
        (registry.create("eigensam"), True),
        (registry.create("xsam"), True),
    ]:
        _, loggers = curvature.curvature_callbacks(probe, str(tmp_path), method=method)
        assert _kinds(loggers) == ([callbacks.EigenAlignmentLogger] if logged else [])


def test_curvature_monitors_and_plot(tmp_path):
    config = TrainConfig(
        method="eigensam",
        method_args={"refresh_every": 2},
        curvature=True,
        output_dir=str(tmp_path),
        epochs=1,
        max_steps_per_epoch=3,
        augment="none",
        verbose=0,
    )
    results = runner.run(config)
    run_dir = tmp_path / run_name(config)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for key in (
        "hessian_top_eigenvalue",
        "sharpness_ascent",
        "sharpness_average",
        "sharpness_worst_case",
        "top_eigenvalue",
        "eigen_alignment",
    ):
        assert all(np.isfinite(float(row[key])) for row in rows), key
    assert float(rows[-1]["hessian_top_eigenvalue"]) > 0
    with open(run_dir / "alignment" / "alignment.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [1, 2, 3]
    assert results["files"]["curvature_plot"] == "curvature.png"
    assert (run_dir / "curvature.png").stat().st_size > 0
