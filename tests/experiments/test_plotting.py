"""Tests of `keras_eigensam.experiments.plotting` on saved histories."""

import sys

import keras
import numpy as np
import pytest

from keras_eigensam import callbacks
from keras_eigensam.experiments import plotting
from tests import tiny

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(epochs, **columns):
    history = keras.callbacks.History()
    history.epoch = list(range(epochs))
    history.history = {k: list(v) for k, v in columns.items()}
    return history


def _csv_logger_file(path, rows):
    """Writes `rows` (dicts of epoch logs) with Keras's own CSVLogger."""
    logger = keras.callbacks.CSVLogger(str(path))
    logger.set_model(tiny.mlp())
    logger.on_train_begin()
    for epoch, logs in enumerate(rows):
        logger.on_epoch_end(epoch, dict(logs))
    logger.on_train_end()
    return str(path)


def _alignment_file(log_dir, alignment):
    """Writes an `alignment.csv` with EigenAlignmentLogger's own hooks."""
    import keras_eigensam as ks

    model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.SAM(track_eigen=True))
    model.compile(optimizer="sgd", loss="mse")
    logger = callbacks.EigenAlignmentLogger(str(log_dir))
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    means = np.cumsum(alignment) / np.arange(1, len(alignment) + 1)
    for batch, mean in enumerate(means):
        model.optimizer.iterations.assign(batch + 1)
        logger.on_train_batch_end(
            batch, {"top_eigenvalue": 1.0, "eigen_alignment": mean, "grad_eigen_cosine": mean}
        )
    logger.on_train_end()
    return logger.csv_path


def _assert_png(path, min_bytes=10_000):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with open(path, "rb") as f:
        assert len(f.read()) > min_bytes
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > height > 200
    # Not a blank canvas: some pixels are far from white.
    assert (image[..., :3] < 0.5).any()


def test_plot_curvature_from_histories_and_csv_files(tmp_path):
    epochs = 4
    sgd = _history(epochs, loss=[1.0, 0.8, 0.7, 0.6], hessian_top_eigenvalue=[5.0, 7.0, 9.0, 10.0])
    sam_csv = _csv_logger_file(
        tmp_path / "sam.csv",
        [{"loss": 1.0 - 0.1 * e, "hessian_top_eigenvalue": 5.0 + e,
          "eigen_alignment": 0.2, "top_eigenvalue": 4.0} for e in range(epochs)],
    )
    rng = np.random.default_rng(0)
    eigen_sam = [
        _alignment_file(tmp_path / "eigensam", rng.uniform(0.3, 0.6, size=40)),
        _history(epochs, hessian_top_eigenvalue=[5.0, float("nan"), 5.5, 5.2]),
    ]
    out = plotting.plot_curvature(
        {"SGD": sgd,
         "SAM": [sam_csv, _alignment_file(tmp_path / "sam", rng.uniform(0.0, 0.2, size=40))],
         "Eigen-SAM": eigen_sam},
        str(tmp_path / "figures" / "curvature.png"),
        steps_per_epoch=10,
        title="tiny",
    )
    assert out == str(tmp_path / "figures" / "curvature.png")
    _assert_png(out)


def test_plot_curvature_accepts_callback_history_lists(tmp_path):
    records = [(s, {"eigen_alignment": 0.1 * s, "top_eigenvalue": 2.0 + s}) for s in range(1, 8)]
    out = plotting.plot_curvature({"SAM": records}, tmp_path / "c.png")
    _assert_png(out)


def test_plot_curvature_mixing_steps_and_epochs_needs_steps_per_epoch(tmp_path):
    epochs = _history(3, hessian_top_eigenvalue=[1.0, 2.0, 3.0])
    steps = [(s, {"top_eigenvalue": 1.0}) for s in range(1, 5)]
    with pytest.raises(ValueError, match=r"pass `steps_per_epoch`.*'A' per epoch.*'B' per step"):
        plotting.plot_curvature({"A": epochs, "B": steps}, tmp_path / "c.png")


@pytest.mark.parametrize(
    "histories, error, match",
    [
        ({}, ValueError, r"`histories` must be a non-empty dict"),
        ({"run": 3}, TypeError, r"histories\['run'\]=3"),
        ({"run": {"loss": [1.0, 0.5]}}, ValueError, r"none of the plotted quantities.*'run': \['loss'\]"),
    ],
)
def test_plot_curvature_bad_inputs(tmp_path, histories, error, match):
    with pytest.raises(error, match=match):
        plotting.plot_curvature(histories, tmp_path / "c.png")


def test_plot_curvature_rejects_csv_without_index_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"`step` column.*`epoch` column.*\['a', 'b'\]"):
        plotting.plot_curvature({"run": str(path)}, tmp_path / "c.png")


def test_plot_density(tmp_path):
    grid = np.linspace(-1, 5, 200)
    density = np.exp(-((grid - 1) ** 2))
    out = plotting.plot_density(grid, density, str(tmp_path / "d.png"), title="density")
    _assert_png(out, min_bytes=5_000)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"keras-eigensam\[scripts\]"):
        plotting.plot_curvature(
            {"run": {"eigen_alignment": [0.1, 0.2]}}, tmp_path / "c.png"
        )
