"""What `curvature=True` adds to a run: monitors, the alignment log, a plot."""

import os

import tensorflow as tf

from keras_eigensam import callbacks
from keras_eigensam.experiments import data
from keras_eigensam.experiments import plotting
from keras_eigensam.experiments.results import HISTORY_FILE
from keras_eigensam.methods.eigenvector_tracker import METRIC_NAMES

#: Examples in the fixed probe set of the curvature monitors.
PROBE_SIZE = 256
#: Radius of `SharpnessMonitor`, the same for every method (SGD included),
#: so that a comparison's sharpness columns measure the same thing.
SHARPNESS_RHO = 0.05
#: Where `EigenAlignmentLogger` writes, inside the run directory.
ALIGNMENT_DIR = "alignment"
PLOT_FILE = "curvature.png"


def curvature_callbacks(probe, run_dir, *, method=None, seed=0):
    """The callbacks of `curvature=True`, as `(monitors, loggers)`.

    Monitors (they write into the epoch logs, so they go before
    `CSVLogger` and `TensorBoard`), measured at the end of every epoch on
    `probe`, a fixed batch of training examples, with the model in
    inference mode:

    - `HessianEigenvalueMonitor`: `hessian_top_eigenvalue` (Lanczos, 30
      Hessian-vector products);
    - `SharpnessMonitor(SHARPNESS_RHO)`: `sharpness_ascent`,
      `sharpness_average` and `sharpness_worst_case`.

    Loggers, when `method` (the run's `SharpnessMethod`, `None` for SGD)
    tracks the top eigenvector in the train step: `EigenAlignmentLogger`,
    the per-step `eigen_alignment`, `grad_eigen_cosine` and
    `top_eigenvalue`, into `<run_dir>/alignment/` (CSV and TensorBoard).
    After a restart the CSV holds the steps since the restart only.
    """
    monitors = [
        callbacks.HessianEigenvalueMonitor(probe, every="epoch", seed=seed),
        callbacks.SharpnessMonitor(probe, rho=SHARPNESS_RHO, seed=seed),
    ]
    loggers = []
    if method is not None and set(METRIC_NAMES) <= set(method.metric_names):
        loggers.append(callbacks.EigenAlignmentLogger(os.path.join(run_dir, ALIGNMENT_DIR)))
    return monitors, loggers


def probe_batch(config, num_replicas):
    """The first training examples, unaugmented, with one-hot labels."""
    size = max(num_replicas, PROBE_SIZE - PROBE_SIZE % num_replicas)
    ds, info = data.load(
        config.dataset, "train", size, training=False, data_dir=config.data_dir
    )
    x, y = next(iter(ds))
    # Every replica needs the same share of the batch.
    keep = int(x.shape[0]) - int(x.shape[0]) % num_replicas
    return x[:keep], tf.one_hot(y[:keep], info.num_classes)


def plot_runs(run_dirs, out_png, steps_per_epoch, title=None):
    """`plotting.plot_curvature` of several run directories (label → dir).

    Returns the file name of the plot relative to its directory.
    """
    histories = {}
    for label, run_dir in run_dirs.items():
        sources = [os.path.join(run_dir, HISTORY_FILE)]
        alignment = os.path.join(run_dir, ALIGNMENT_DIR, "alignment.csv")
        if os.path.exists(alignment):
            sources.append(alignment)
        histories[label] = sources
    plotting.plot_curvature(
        histories, out_png, steps_per_epoch=steps_per_epoch, title=title
    )
    return os.path.basename(out_png)
