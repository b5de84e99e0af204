"""`EigenAlignmentLogger`: the train step's eigenvector metrics, step by step."""

import csv
import os
import warnings

import keras
from keras import ops

from keras_eigensam import validation
from keras_eigensam.backend.summary import ScalarWriter
from keras_eigensam.callbacks.base import Schedule
from keras_eigensam.callbacks.base import StepTracker
from keras_eigensam.callbacks.base import crosses_multiple
from keras_eigensam.methods.eigenvector_tracker import METRIC_NAMES

#: Name of the per-step CSV file `EigenAlignmentLogger` writes in `log_dir`.
ALIGNMENT_CSV = "alignment.csv"


class EigenAlignmentLogger(keras.callbacks.Callback):
    """Logs the train step's eigenvector metrics step by step.

    `SharpnessAwareModel` with `EigenSAM`, `XSAM` or `SAM(track_eigen=True)`
    logs `top_eigenvalue`, `eigen_alignment` (|cos(e, v)|, e the
    perturbation, v the tracked top eigenvector) and `grad_eigen_cosine`
    (|cos(g, v)|) every step. Keras reports them as `Mean` metrics, averaged
    since the start of the epoch, and `History` keeps only the epoch mean,
    which hides the dynamics the Eigen-SAM paper plots. This callback
    recovers the per-step values and writes them as TensorBoard scalars (in
    `log_dir`, step = `model.optimizer.iterations` after the step, so the
    first step is 1), to `log_dir/alignment.csv` (columns `step`,
    `top_eigenvalue`, `eigen_alignment`, `grad_eigen_cosine`) and to
    `history`, a list of `(step, values)` of this `fit`. The CSV keeps the
    rows an earlier `fit` wrote there up to the step this one starts from
    (a run resumed by `BackupAndRestore` keeps the steps before its
    interruption, and drops those it trains again).

    What is logged, exactly:

    ```
    eigen_alignment, grad_eigen_cosine:  v_n = (n·m_n − n'·m_n') / (n − n')
    top_eigenvalue:                      model.method.tracker.eigenvalue
    ```

    where `m_n` is the running mean after the `n`-th step of the epoch and
    `n'` the step of the previous `on_train_batch_end`. With
    `steps_per_execution=1` (`n' = n − 1`) this is the value of step `n`
    exactly, up to float32 round-off (about `n · 1e-7` relative); with
    `steps_per_execution=k` it is the mean over the last `k` steps. Under a
    `tf.distribute` strategy it is the mean over replicas, as Keras's metric
    is. `top_eigenvalue` is read from the tracker's variable, the Rayleigh
    quotient of the last refresh (constant between refreshes, which happen
    every `refresh_every` steps); for a model without that variable it is
    recovered from the running mean like the others.

    Cost: no extra computation, one read of the optimizer's step counter
    (and of the tracker's eigenvalue) per step. Like any callback with an
    `on_train_batch_end`, it makes Keras call the batch hooks synchronously
    (measured step times in `benchmarks/hessian.md`).

    Args:
        log_dir: Directory for the TensorBoard event files and
            `alignment.csv`; `None` keeps the values in memory (`history`)
            only. Give it a directory of its own. Defaults to `None`.
        every: Record after every `every`-th optimizer step, an integer
            >= 1. Every step is still read, so the recorded value is that
            step's. Defaults to `1`.
        every_n_steps: Deprecated spelling of `every`. Defaults to `None`.

    Raises:
        ValueError: if `every` is not an integer >= 1; at
            `on_train_begin`, if the model does not log the three metrics.

    Example:

    ```python
    model = SharpnessAwareModel(net, method=SAM(rho=0.05, track_eigen=True,
                                                refresh_every=10))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    logger = EigenAlignmentLogger("runs/sam/alignment", every=1)
    model.fit(x, y, epochs=5, callbacks=[logger])
    steps = [step for step, _ in logger.history]
    ```

    Reference:
        - [Luo et al., 2024 (Eigen-SAM)](https://arxiv.org/abs/2501.12666)
    """

    def __init__(self, log_dir=None, every=1, *, every_n_steps=None):
        super().__init__()
        self.log_dir = log_dir
        if every_n_steps is not None:
            if every != 1:
                raise ValueError(
                    "Pass one schedule, `every`. Received: "
                    f"every={every!r}, every_n_steps={every_n_steps!r}"
                )
            warnings.warn(
                "`every_n_steps=n` is deprecated; pass `every=n`.",
                DeprecationWarning,
                stacklevel=2,
            )
            every = validation.check_int("every_n_steps", every_n_steps, minimum=1)
        self.every = Schedule.parse(every, allow_epoch=False).n
        self._writer = ScalarWriter(log_dir) if log_dir is not None else None
        self._steps = StepTracker()
        #: Every recorded step of this `fit`: a list of `(step, values)`.
        self.history = []
        self._earlier, self._start_step = [], None
        self._previous_n = 0
        self._previous_means = {}

    @property
    def csv_path(self):
        """Path of the CSV file, or None without `log_dir`."""
        return None if self.log_dir is None else os.path.join(self.log_dir, ALIGNMENT_CSV)

    def on_train_begin(self, logs=None):
        self._check_model()
        self.history = []
        # Rows of an earlier fit in the same `log_dir` (a resumed run): kept
        # up to the step this fit starts from (known at its first batch,
        # after `BackupAndRestore` has restored the optimizer).
        self._earlier = self._read_csv()
        self._start_step = None
        self._steps.reset(self.model)
        self._previous_n = 0
        self._previous_means = {}

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets the metrics at the start of every epoch.
        self._previous_n = 0
        self._previous_means = {}

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        missing = [name for name in METRIC_NAMES if name not in logs]
        if missing:
            raise ValueError(self._missing_message(f"batch logs with keys {sorted(logs)}"))
        n = batch + 1
        if n <= self._previous_n:
            # A new epoch whose `on_epoch_begin` this callback did not see.
            self._previous_n, self._previous_means = 0, {}
        values = {}
        for name in METRIC_NAMES:
            mean = float(logs[name])
            previous = self._previous_means.get(name, 0.0)
            values[name] = (n * mean - self._previous_n * previous) / (n - self._previous_n)
            self._previous_means[name] = mean
        self._previous_n = n
        eigenvalue = _tracked_eigenvalue(self.model)
        if eigenvalue is not None:
            values["top_eigenvalue"] = eigenvalue
        previous_step, step = self._steps.advance(self.model)
        if self._start_step is None:
            self._start_step = previous_step
        if crosses_multiple(previous_step, step, self.every):
            self.history.append((step, values))
            if self._writer is not None:
                self._writer.write(step, values)

    def on_epoch_end(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()
        if self._writer is not None:
            self._writer.close()

    def _flush(self):
        if self.log_dir is None:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        # Rewritten whole: a few floats per step, and a crash never leaves a
        # half-written row.
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("step",) + METRIC_NAMES)
            start = self._start_step
            earlier = [row for row in self._earlier if start is not None and row[0] <= start]
            for step, values in earlier + self.history:
                writer.writerow([step] + [repr(values[name]) for name in METRIC_NAMES])
        self._writer.flush()

    def _read_csv(self):
        """`[(step, values)]` of an existing `alignment.csv`, else `[]`."""
        if self.csv_path is None or not os.path.exists(self.csv_path):
            return []
        with open(self.csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [
            (int(row["step"]), {name: float(row[name]) for name in METRIC_NAMES})
            for row in rows
        ]

    def _check_model(self):
        names = {m.name for m in getattr(self.model, "metrics", [])}
        method = getattr(self.model, "method", None)
        names.update(getattr(method, "metric_names", ()))
        if not set(METRIC_NAMES) <= names:
            raise ValueError(self._missing_message(f"metrics {sorted(names)}"))

    def _missing_message(self, received):
        return (
            "EigenAlignmentLogger needs the per-step metrics "
            f"{list(METRIC_NAMES)}, which `SharpnessAwareModel` logs with "
            "`EigenSAM`, `XSAM` or `SAM(track_eigen=True)`. Received: a model "
            f"of type {type(self.model).__name__} with {received}"
        )


def _tracked_eigenvalue(model):
    tracker = getattr(getattr(model, "method", None), "tracker", None)
    variable = getattr(tracker, "eigenvalue", None)
    if variable is None:
        return None
    return float(ops.convert_to_numpy(variable))
