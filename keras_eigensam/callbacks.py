"""Keras callbacks that measure the loss landscape while a model trains.

Three callbacks, for any Keras model (a plain `keras.Model` trained with SGD
as well as a `SharpnessAwareModel`):

- `HessianEigenvalueMonitor`: top Hessian eigenvalues (and optionally the
  trace and the spectral density) of the loss on a fixed probe set.
- `SharpnessMonitor`: the three sharpness notions of Wen, Ma & Li (2023) on a
  fixed probe set: ascent-direction, average and worst-case sharpness.
- `EigenAlignmentLogger`: the per-step `top_eigenvalue`, `eigen_alignment`
  and `grad_eigen_cosine` that `SharpnessAwareModel` logs with `EigenSAM`,
  `XSAM` or `SAM(track_eigen=True)`, step by step rather than as epoch means.

The two monitors write their values into the epoch `logs` in `on_epoch_end`.
Keras hands one `logs` dict to every callback in list order, so callbacks
*after* a monitor (`keras.callbacks.CSVLogger`, `keras.callbacks.TensorBoard`,
and `History`, which `fit` always appends last) see the values; callbacks
before it do not. Put the monitors first:

```python
callbacks = [
    HessianEigenvalueMonitor(probe, every_n_epochs=1),
    SharpnessMonitor(probe, rho=0.05),
    keras.callbacks.CSVLogger("history.csv"),
    keras.callbacks.TensorBoard("logs"),
]
```

All measurements are taken on a fixed probe set (one batch or a small
dataset, read once when the callback is created), not on the moving training
batch, so consecutive values differ only because the weights moved.

TensorBoard scalars are written with `tf.summary.write` and the scalar
plugin's metadata, so these callbacks need no `tensorboard` package;
`keras.callbacks.TensorBoard` itself does need it.
"""

import csv
import math
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from tensorflow.core.framework import summary_pb2

from keras_eigensam import hessian
from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.eigenvector_tracker import METRIC_NAMES

#: The sharpness notions `SharpnessMonitor` can measure.
SHARPNESS_MEASURES = ("ascent", "average", "worst_case")

#: Name of the per-step CSV file `EigenAlignmentLogger` writes in `log_dir`.
ALIGNMENT_CSV = "alignment.csv"

_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")


class _DefaultInt(int):
    """An integer default that a constructor can tell from an explicit one."""

    def __repr__(self):
        return int.__repr__(self)


# `every_n_epochs=1` unless `every_n_steps` is given.
_EVERY_EPOCH = _DefaultInt(1)


# ---------------------------------------------------------------------------
# Helpers shared by the callbacks.


def _batch_size(x):
    return int(tf.nest.flatten(x)[0].shape[0])


def _probe_batches(data):
    """Reads `data` once into a list of `(x, y)` / `(x, y, sample_weight)`."""
    return [
        (b["x"], b["y"]) + ((b["sample_weight"],) if "sample_weight" in b else ())
        for b in hessian.read_batches(data)
    ]


class _FunctionLoss(keras.losses.Loss):
    """A loss function `fn(y_true, y_pred)` as a `Loss` (mean reduction)."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", None))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _resolve_loss(model, loss):
    """The `keras.losses.Loss` to measure: `loss`, else the compiled one."""
    source = "loss"
    if loss is None:
        loss, source = getattr(model, "loss", None), "model.loss"
        if loss is None:
            raise ValueError(
                "`loss` is None and the model has no compiled loss. Compile "
                "the model with a loss or pass `loss=` to the callback. "
                "Received: loss=None, model.loss=None"
            )
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "The curvature callbacks measure a model with one loss; pass the "
            f"loss to measure as `loss=`. Received: {source}={loss!r}"
        )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if not isinstance(loss, keras.losses.Loss):
        if not callable(loss):
            raise TypeError(
                "`loss` must be a Keras loss, the name of one, or a callable "
                f"`loss(y_true, y_pred)`. Received: {source}={loss!r}"
            )
        loss = _FunctionLoss(loss)
    if loss.reduction not in _REDUCTIONS:
        raise ValueError(
            "The loss must reduce to a scalar; its reduction must be one of "
            f"{sorted(_REDUCTIONS)}. Received: {source} with "
            f"reduction={loss.reduction!r}"
        )
    return loss


def _optimizer_step(model):
    """`model.optimizer.iterations` as an int, or None without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return None
    return int(ops.convert_to_numpy(iterations))


def _crosses_multiple(previous, step, n):
    """Whether a multiple of `n` lies in `(previous, step]`."""
    return step // n > previous // n


def _scalar_metadata():
    # What `tensorboard.summary.scalar` writes, so TensorBoard shows these as
    # scalars, without depending on the `tensorboard` package.
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return metadata


class _ScalarWriter:
    """Writes scalar summaries to one event-file directory, opened lazily."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._writer = None
        self._metadata = _scalar_metadata()

    def write(self, step, values):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, value in values.items():
                if math.isfinite(value):
                    tf.summary.write(
                        tag,
                        tf.constant(value, tf.float32),
                        step=step,
                        metadata=self._metadata,
                    )

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _StepTracker:
    """The global training step a callback reports measurements at.

    The step is `model.optimizer.iterations` (optimizer updates so far, across
    `fit` calls; exact with `steps_per_execution > 1`). Without an optimizer
    (hooks called by hand) it counts `on_train_batch_end` calls.
    """

    def __init__(self):
        self.reset(None)

    def reset(self, model):
        step = _optimizer_step(model) if model is not None else None
        self.step = 0 if step is None else step

    def advance(self, model):
        """Returns `(previous, current)` after one `on_train_batch_end`."""
        previous = self.step
        step = _optimizer_step(model)
        self.step = previous + 1 if step is None else step
        return previous, self.step

    def current(self, model):
        step = _optimizer_step(model)
        if step is not None:
            self.step = step
        return self.step


# ---------------------------------------------------------------------------
# Hessian eigenvalues.


class HessianEigenvalueMonitor(keras.callbacks.Callback):
    """Logs the top Hessian eigenvalues of the loss on a fixed probe set.

    At the end of every `every_n_epochs`-th epoch (or after every
    `every_n_steps`-th optimizer step) it builds the Hessian of the model's
    loss on `data` as a `keras_eigensam.hessian.HessianOperator` and logs

    ```
    hessian_top_eigenvalue          λ1                 (Lanczos or power iteration)
    hessian_eigenvalue_2 … _k       λ2 … λk            (top_k > 1)
    hessian_trace                   tr(H) ≈ mean zᵀHz  (trace=True, Rademacher z)
    ```

    into the epoch `logs`, where `History`, `keras.callbacks.CSVLogger` and
    `keras.callbacks.TensorBoard` read them, provided they come *after* the
    monitor in the `callbacks` list (Keras passes one `logs` dict to the
    callbacks in list order; `History` is always last). Epochs without a
    measurement get `nan`, so every epoch has the keys (`CSVLogger` fixes its
    columns at the first epoch). With `every_n_steps` the epoch logs carry
    the most recent measurement.

    Every measurement is also kept in `history`, a list of `(step, values)`
    with `step = model.optimizer.iterations` at the time, written as
    TensorBoard scalars at that step when `log_dir` is given, and, with
    `density=True`, the stochastic-Lanczos spectral density is kept in
    `densities` and saved as `density_step_<step>.npz` (arrays `grid`,
    `density`, `step`, `eigenvalues`) in `density_dir`, plus a PNG with
    `plot_density=True`.

    The Hessian is that of the mean loss over all of `data` (batch-size
    weighted), plus `model.losses`, with respect to the trainable weights. The
    loss is `loss` if given, else the model's compiled loss (`model.loss`).
    `training=False` (the default) takes it with the model in inference
    mode: BatchNormalization uses its moving statistics and dropout is off;
    `training=True` uses batch statistics. The two are different operators
    (on one ResNet λ_max was 59.3 in inference mode and 0.27 with batch
    statistics), so report which one a figure uses. Neither mode writes any
    variable.

    The weights are never changed, so training with the monitor gives the
    same weights as training without it.

    Cost per measurement, on the probe set: `method="lanczos"` takes
    `num_steps` Hessian-vector products (30 by default), `method="power"`
    up to `max_iterations` per eigenvalue; `trace=True` adds `trace_samples`
    products, `density=True` adds `density_steps × density_probes`. One HVP
    costs about 2.7 gradients (`benchmarks/hessian.md`). Measured on this
    project's shared 2-core CPU (medians of 5 interleaved rounds) with a
    small CNN (3×3 convolutions with 16 and 32 channels, max and global
    average pooling, 5,418 parameters, 32×32×3 inputs): one SGD training
    step on a batch of 128 took 31 ms; one measurement with the defaults
    (Lanczos, 30 HVPs) on a 128-example probe batch took 1.5 s, about 47
    training steps, so measuring once per epoch of 390 steps adds about 12 %.
    `num_hvps` counts the products of the last measurement.

    Args:
        data: The probe set: one batch `(x, y)` or `(x, y, sample_weight)`
            (a tuple), a list of such batches, or a batched
            `tf.data.Dataset` (read once, when the callback is created).
            Under a `tf.distribute` strategy every batch is split over the
            replicas, so it needs at least one example per replica.
        every_n_epochs: Measure at the end of every `every_n_epochs`-th
            epoch (`(epoch + 1) % every_n_epochs == 0`). Pass exactly one of
            `every_n_epochs` and `every_n_steps`. Defaults to `1` unless
            `every_n_steps` is given.
        every_n_steps: Measure after every `every_n_steps`-th optimizer
            step (whenever `model.optimizer.iterations` reaches a multiple
            of it). Defaults to `None`.
        top_k: Number of eigenvalues, >= 1. Defaults to `1`.
        trace: Whether to log the Hutchinson estimate of the trace as
            `hessian_trace`. Defaults to `False`.
        density: Whether to compute the spectral density (stochastic Lanczos
            quadrature). Defaults to `False`.
        training: Whether to take the Hessian with the model in training
            mode (batch statistics, dropout) instead of inference mode.
            Defaults to `False`.
        method: `"lanczos"` (the `top_k` largest algebraic eigenvalues) or
            `"power"` (power iteration with deflation: the `top_k` of
            largest absolute value). Defaults to `"lanczos"`.
        loss: The loss to take the Hessian of: a Keras loss, its name or a
            callable `loss(y_true, y_pred)`. `None` uses `model.loss`.
            Defaults to `None`.
        num_steps: Lanczos steps (HVPs), >= `top_k`; `None` uses
            `max(30, 2 * top_k)`, capped at the number of parameters.
            Defaults to `None`.
        max_iterations: Power iteration: the maximum number of HVPs per
            eigenvalue. Defaults to `100`.
        tol: Power iteration: relative tolerance of the stopping rule.
            Defaults to `1e-4`.
        trace_samples: Hutchinson probes (HVPs) per trace estimate, >= 1.
            Defaults to `100`.
        density_steps: Lanczos steps per density probe, >= 1. Defaults to
            `50`.
        density_probes: Random start vectors of the density estimate, >= 1.
            Defaults to `4`.
        density_dir: Directory for the density `.npz` files (and PNGs);
            `None` keeps the densities in memory only. Defaults to `None`.
        plot_density: Whether to also save each density as a PNG in
            `density_dir` (needs matplotlib, the `scripts` extra). Defaults
            to `False`.
        log_dir: Directory for per-measurement TensorBoard scalars (tags as
            the logs keys, step = optimizer step). Give it a directory of its
            own, e.g. a subdirectory of `keras.callbacks.TensorBoard`'s.
            `None` writes none. Defaults to `None`.
        hvp_mode: `"reverse_over_reverse"` or `"forward_over_backward"`;
            see `keras_eigensam.hessian.hvp`. Defaults to
            `"reverse_over_reverse"`, the faster on CPU here.
        seed: Seed of the random start vectors and probes, the same at every
            measurement, so a measurement is a function of the weights.
            Defaults to `0`.

    Raises:
        TypeError: if `data` is neither a batch nor a list or dataset of
            batches, or a flag is not a bool.
        ValueError: if not exactly one of `every_n_epochs` and
            `every_n_steps` is given, either is < 1, `top_k` < 1, `data` is
            empty, `method` or `hvp_mode` is unknown, `num_steps` < `top_k`,
            or `plot_density` is set without `density` and `density_dir`.

    Example:

    ```python
    probe = (x_train[:256], y_train[:256])
    monitor = HessianEigenvalueMonitor(probe, every_n_epochs=1, top_k=2,
                                       trace=True)
    model.fit(x_train, y_train, epochs=10,
              callbacks=[monitor, keras.callbacks.CSVLogger("history.csv")])
    model.history.history["hessian_top_eigenvalue"]
    ```

    Reference:
        - [Ghorbani et al., 2019](https://arxiv.org/abs/1901.10159)
        - [Luo et al., 2024 (Eigen-SAM)](https://arxiv.org/abs/2501.12666)
    """

    def __init__(
        self,
        data,
        every_n_epochs=_EVERY_EPOCH,
        every_n_steps=None,
        top_k=1,
        trace=False,
        density=False,
        training=False,
        method="lanczos",
        loss=None,
        num_steps=None,
        max_iterations=100,
        tol=1e-4,
        trace_samples=100,
        density_steps=50,
        density_probes=4,
        density_dir=None,
        plot_density=False,
        log_dir=None,
        hvp_mode="reverse_over_reverse",
        seed=0,
    ):
        super().__init__()
        self.every_n_epochs, self.every_n_steps = _check_schedule(
            every_n_epochs, every_n_steps
        )
        self.top_k = validation.check_int("top_k", top_k, minimum=1)
        self.trace = validation.check_bool("trace", trace)
        self.density = validation.check_bool("density", density)
        self.training = validation.check_bool("training", training)
        self.plot_density = validation.check_bool("plot_density", plot_density)
        self.method = validation.check_choice("method", method, hessian.EIGEN_METHODS)
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, hessian.HVP_MODES)
        if num_steps is not None:
            num_steps = validation.check_int("num_steps", num_steps, minimum=1)
            if num_steps < self.top_k:
                raise ValueError(
                    "`num_steps` must be at least `top_k`: m Lanczos steps give "
                    f"at most m eigenvalues. Received: num_steps={num_steps}, "
                    f"top_k={self.top_k}"
                )
        self.num_steps = num_steps
        self.max_iterations = validation.check_int(
            "max_iterations", max_iterations, minimum=1
        )
        self.tol = None if tol is None else validation.check_number(
            "tol", tol, minimum=0.0, strict=True
        )
        self.trace_samples = validation.check_int("trace_samples", trace_samples, minimum=1)
        self.density_steps = validation.check_int("density_steps", density_steps, minimum=1)
        self.density_probes = validation.check_int(
            "density_probes", density_probes, minimum=1
        )
        if self.plot_density and not (self.density and density_dir is not None):
            raise ValueError(
                "`plot_density=True` needs `density=True` and a `density_dir` to "
                f"save the plots in. Received: density={density}, "
                f"density_dir={density_dir!r}"
            )
        self.density_dir = density_dir
        self.log_dir = log_dir
        self.loss = loss
        self.seed = None if seed is None else validation.check_int("seed", seed)
        self._batches = _probe_batches(data)
        self.keys = ["hessian_top_eigenvalue"] + [
            f"hessian_eigenvalue_{i}" for i in range(2, self.top_k + 1)
        ]
        if self.trace:
            self.keys.append("hessian_trace")
        self._writer = _ScalarWriter(log_dir) if log_dir is not None else None
        self._steps = _StepTracker()
        self._reset()

    def _reset(self):
        #: Every measurement of this `fit`: a list of `(step, values)`.
        self.history = []
        #: With `density=True`: dicts with `step`, `grid`, `density`.
        self.densities = []
        #: Hessian-vector products of the last measurement.
        self.num_hvps = 0
        self._latest = None
        self._operator = None

    def set_model(self, model):
        super().set_model(model)
        self._operator = None

    def on_train_begin(self, logs=None):
        self._reset()
        self._steps.reset(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        previous, step = self._steps.advance(self.model)
        if _crosses_multiple(previous, step, self.every_n_steps):
            self._record(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            values = self._record(self._steps.current(self.model))
        elif self._latest is not None and self.every_n_steps is not None:
            values = self._latest
        else:
            values = {key: float("nan") for key in self.keys}
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

    def measure(self):
        """Measures the Hessian now, without logging or recording anything.

        Returns:
            A dict with the logged keys (`hessian_top_eigenvalue`, …) and
            Python float values.
        """
        values, _ = self._measure()
        return values

    def _operator_for_model(self):
        if self._operator is None:
            self._operator = hessian.HessianOperator(
                self.model,
                _resolve_loss(self.model, self.loss),
                self._batches,
                training=self.training,
                hvp_mode=self.hvp_mode,
            )
        return self._operator

    def _measure(self):
        op = self._operator_for_model()
        start = op.num_hvps
        eigvals, _ = op.top_eigenpairs(
            k=self.top_k,
            method=self.method,
            max_iterations=self.max_iterations,
            tol=self.tol,
            num_steps=self.num_steps,
            seed=self.seed,
        )
        values = {key: float(value) for key, value in zip(self.keys, eigvals)}
        if self.trace:
            values["hessian_trace"] = float(
                op.trace(num_samples=self.trace_samples, seed=self.seed)
            )
        density = None
        if self.density:
            density = op.density(
                num_steps=self.density_steps,
                num_probes=self.density_probes,
                seed=self.seed,
            )
        self.num_hvps = op.num_hvps - start
        return values, density

    def _record(self, step):
        values, density = self._measure()
        self.history.append((step, values))
        self._latest = values
        if self._writer is not None:
            self._writer.write(step, values)
        if density is not None:
            grid, dens = density
            self.densities.append({"step": step, "grid": grid, "density": dens})
            if self.density_dir is not None:
                self._save_density(step, grid, dens, values)
        return values

    def _save_density(self, step, grid, density, values):
        os.makedirs(self.density_dir, exist_ok=True)
        stem = os.path.join(self.density_dir, f"density_step_{step:08d}")
        eigenvalues = np.asarray(
            [values[key] for key in self.keys if key != "hessian_trace"]
        )
        np.savez(
            stem + ".npz", grid=grid, density=density, step=step, eigenvalues=eigenvalues
        )
        if self.plot_density:
            from keras_eigensam.experiments import plotting

            mode = "training" if self.training else "inference"
            plotting.plot_density(
                grid,
                density,
                stem + ".png",
                title=f"Hessian spectral density, step {step} ({mode}-mode BN)",
            )


def _check_schedule(every_n_epochs, every_n_steps):
    epochs_given = every_n_epochs is not _EVERY_EPOCH
    if every_n_steps is not None:
        if epochs_given and every_n_epochs is not None:
            raise ValueError(
                "Pass exactly one of `every_n_epochs` and `every_n_steps`. "
                f"Received: every_n_epochs={every_n_epochs!r}, "
                f"every_n_steps={every_n_steps!r}"
            )
        every_n_steps = validation.check_int("every_n_steps", every_n_steps, minimum=1)
        return None, every_n_steps
    if every_n_epochs is None:
        raise ValueError(
            "Pass exactly one of `every_n_epochs` and `every_n_steps`. "
            "Received: every_n_epochs=None, every_n_steps=None"
        )
    every_n_epochs = validation.check_int("every_n_epochs", every_n_epochs, minimum=1)
    return every_n_epochs, None


# ---------------------------------------------------------------------------
# Sharpness.


def random_unit_directions(num_parameters, num_samples, seed):
    """The random directions of `SharpnessMonitor`'s average sharpness.

    ```
    rng = np.random.default_rng(seed)
    for each sample:  z = rng.standard_normal(num_parameters);  yield z / ‖z‖
    ```

    A direction is a flat float64 vector over all trainable weights, in the
    order of `model.trainable_variables`, each variable flattened in C
    order. Drawn one at a time, so only one direction is in memory.

    Args:
        num_parameters: Length of each direction, >= 1.
        num_samples: Number of directions, >= 1.
        seed: Seed of `np.random.default_rng`.

    Returns:
        A generator of `num_samples` unit-norm NumPy arrays.

    Example:

    ```python
    directions = list(random_unit_directions(10, num_samples=3, seed=0))
    ```
    """
    num_parameters = validation.check_int("num_parameters", num_parameters, minimum=1)
    num_samples = validation.check_int("num_samples", num_samples, minimum=1)
    rng = np.random.default_rng(seed)
    for _ in range(num_samples):
        z = rng.standard_normal(num_parameters)
        yield z / np.linalg.norm(z)


class SharpnessMonitor(keras.callbacks.Callback):
    """Logs three notions of sharpness of the loss on a fixed probe set.

    The sharpness notions of Wen, Ma & Li (2023), with `L` the mean loss on
    `data` (batch-size weighted over its batches, plus `model.losses`) and
    `ĝ = ∇L(w) / (‖∇L(w)‖ + 1e-12)`:

    ```
    sharpness_ascent      L(w + ρ ĝ) − L(w)                  (what SAM evaluates)
    sharpness_average     mean_i L(w + ρ z_i/‖z_i‖) − L(w),  z_i ~ N(0, I)
    sharpness_worst_case  max_{‖e‖≤ρ} L(w + e) − L(w),       by projected ascent:
        e_0 = ρ ĝ;  e_(t+1) = Π_ρ(e_t + η ∇L(w+e_t)/‖∇L(w+e_t)‖),  t < ascent_steps
        value = max_t L(w + e_t) − L(w)
    ```

    `Π_ρ` scales `e` back onto the ball of radius ρ when it leaves it. The
    worst case starts at the ascent point, so it is never below the ascent
    sharpness. The average uses the same `num_samples` directions at every
    measurement (from `seed`, see `random_unit_directions`), so it is a
    function of the weights. Near a minimum, worst-case ≈ ρ‖g‖ + ρ²λ_max/2
    and average ≈ ρ² tr(H) / (2d), d the number of parameters.

    The loss is `loss` if given, else the model's compiled loss
    (`model.loss`), computed with the model in inference mode
    (BatchNormalization moving statistics, no dropout) on perturbed weight
    *values* through `model.stateless_call`: no variable is written, so the
    weights, BatchNormalization statistics and optimizer state are
    bit-identical afterwards, and training with the monitor gives the same
    weights as training without it.

    Values are written into the epoch `logs` at the end of every
    `every_n_epochs`-th epoch (`nan` in the others), for `History`,
    `keras.callbacks.CSVLogger` and `keras.callbacks.TensorBoard` *after*
    the monitor in the `callbacks` list, and kept in `history` as
    `(step, values)` with `step = model.optimizer.iterations`.

    Cost per measurement, in passes over the probe set: one gradient for
    `L(w)` and `ĝ`; ascent one forward pass (none extra with `worst_case`);
    average `num_samples` forward passes; worst case `ascent_steps`
    gradients and one forward pass: about 6 gradients and 11 forward passes
    with the defaults. Measured on this project's shared 2-core CPU
    (medians of 5 interleaved rounds) with a small CNN (3×3 convolutions
    with 16 and 32 channels, 5,418 parameters, 32×32×3 inputs): one SGD
    training step on a batch of 128 took 31 ms; one measurement with the
    defaults on a 128-example probe batch took 0.29 s, about 9 training
    steps.

    Args:
        data: The probe set: one batch `(x, y)` or `(x, y, sample_weight)`
            (a tuple), a list of such batches, or a batched
            `tf.data.Dataset` (read once, when the callback is created).
        rho: Radius ρ of the perturbation ball, > 0. Defaults to `0.05`.
        every_n_epochs: Measure at the end of every `every_n_epochs`-th
            epoch. Defaults to `1`.
        measures: Which of `"ascent"`, `"average"`, `"worst_case"` to log
            (as `sharpness_<measure>`). Defaults to all three.
        num_samples: Random directions of the average sharpness, >= 1.
            Defaults to `10`.
        ascent_steps: Projected gradient-ascent steps of the worst case
            (gradients), >= 1. Defaults to `5`.
        step_size: Step η of the worst-case ascent, > 0. `None` uses
            `2.5 * rho / ascent_steps` (the heuristic of Madry et al.).
            Defaults to `None`.
        loss: The loss: a Keras loss, its name or a callable
            `loss(y_true, y_pred)`. `None` uses `model.loss`. Defaults to
            `None`.
        seed: Seed of the random directions. Defaults to `0`.

    Raises:
        TypeError: if `data` is neither a batch nor a list or dataset of
            batches, or a number has the wrong type.
        ValueError: if `rho` <= 0, `every_n_epochs`, `num_samples` or
            `ascent_steps` < 1, `step_size` <= 0, `measures` is empty or
            names an unknown measure, or `data` is empty.

    Example:

    ```python
    monitor = SharpnessMonitor((x_test[:512], y_test[:512]), rho=0.05)
    model.fit(x_train, y_train, epochs=10, callbacks=[monitor])
    model.history.history["sharpness_worst_case"]
    ```

    Reference:
        - [Wen, Ma & Li, 2023](https://arxiv.org/abs/2211.05729)
        - [Madry et al., 2018](https://arxiv.org/abs/1706.06083)
    """

    def __init__(
        self,
        data,
        rho=0.05,
        every_n_epochs=1,
        measures=SHARPNESS_MEASURES,
        num_samples=10,
        ascent_steps=5,
        step_size=None,
        loss=None,
        seed=0,
    ):
        super().__init__()
        self.rho = validation.check_number("rho", rho, minimum=0.0, strict=True)
        self.every_n_epochs = validation.check_int(
            "every_n_epochs", every_n_epochs, minimum=1
        )
        if isinstance(measures, str):
            measures = (measures,)
        if not isinstance(measures, (list, tuple)) or not measures:
            raise ValueError(
                f"`measures` must be a non-empty list of {list(SHARPNESS_MEASURES)}. "
                f"Received: measures={measures!r}"
            )
        for measure in measures:
            if measure not in SHARPNESS_MEASURES:
                raise ValueError(
                    f"`measures` must contain only {list(SHARPNESS_MEASURES)}. "
                    f"Received: measures={measures!r} with unknown {measure!r}"
                )
        self.measures = tuple(m for m in SHARPNESS_MEASURES if m in measures)
        self.num_samples = validation.check_int("num_samples", num_samples, minimum=1)
        self.ascent_steps = validation.check_int("ascent_steps", ascent_steps, minimum=1)
        if step_size is None:
            step_size = 2.5 * self.rho / self.ascent_steps
        self.step_size = validation.check_number(
            "step_size", step_size, minimum=0.0, strict=True
        )
        self.loss = loss
        self.seed = None if seed is None else validation.check_int("seed", seed)
        self._batches = _probe_batches(data)
        self._num_examples = sum(_batch_size(b[0]) for b in self._batches)
        self.keys = [f"sharpness_{m}" for m in self.measures]
        self._steps = _StepTracker()
        self._functions = None
        #: Every measurement of this `fit`: a list of `(step, values)`.
        self.history = []

    def set_model(self, model):
        super().set_model(model)
        self._functions = None

    def on_train_begin(self, logs=None):
        self.history = []
        self._functions = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            values = self.measure()
            self.history.append((self._steps.current(self.model), values))
        else:
            values = {key: float("nan") for key in self.keys}
        if logs is not None:
            logs.update(values)

    def measure(self):
        """Measures the sharpness now, without logging or recording it.

        Returns:
            A dict with the logged keys (`sharpness_ascent`, …) and Python
            float values.
        """
        model = self.model
        weights = [ops.convert_to_tensor(v.value) for v in model.trainable_variables]
        need_gradient = "ascent" in self.measures or "worst_case" in self.measures
        if need_gradient:
            base, grads = self._loss_and_grad(weights)
        else:
            base = self._loss(weights)
        values = {}
        if need_gradient:
            g_hat, _ = linalg.normalize(grads)
            e = linalg.scale(g_hat, self.rho)
            if "worst_case" in self.measures:
                loss, grads_e = self._loss_and_grad(linalg.add(weights, e))
            else:
                loss = self._loss(linalg.add(weights, e))
            if "ascent" in self.measures:
                values["sharpness_ascent"] = loss - base
            if "worst_case" in self.measures:
                best = loss
                for t in range(self.ascent_steps):
                    e = self._project(
                        linalg.add_scaled(e, linalg.normalize(grads_e)[0], self.step_size)
                    )
                    if t < self.ascent_steps - 1:
                        loss, grads_e = self._loss_and_grad(linalg.add(weights, e))
                    else:
                        loss = self._loss(linalg.add(weights, e))
                    best = max(best, loss)
                values["sharpness_worst_case"] = best - base
        if "average" in self.measures:
            num_parameters = sum(int(np.prod(w.shape)) for w in weights)
            total = 0.0
            for direction in random_unit_directions(
                num_parameters, self.num_samples, self.seed
            ):
                e = _unflatten(self.rho * direction, weights)
                total += self._loss(linalg.add(weights, e))
            values["sharpness_average"] = total / self.num_samples - base
        return {key: float(values[key]) for key in self.keys}

    def _project(self, e):
        norm = float(linalg.global_norm(e))
        return e if norm <= self.rho else linalg.scale(e, self.rho / norm)

    # ------------------------------------------------------------- the loss

    def _build_functions(self):
        model = self.model
        if not model.built:
            model(self._batches[0][0], training=False)
        loss_fn = _resolve_loss(model, self.loss)

        def batch_loss(values, batch):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            # Perturbed values in, nothing written: the returned state
            # updates are dropped.
            y_pred, _, losses = model.stateless_call(
                values,
                [v.value for v in model.non_trainable_variables],
                x,
                training=False,
                return_losses=True,
            )
            loss = loss_fn(y, y_pred, sample_weight)
            extra = [ops.sum(ops.cast(t, loss.dtype)) for t in losses]
            if extra:
                loss = loss + ops.sum(ops.stack(extra))
            return loss

        def batch_loss_and_grad(values, batch):
            with tf.GradientTape() as tape:
                tape.watch(values)
                loss = batch_loss(values, batch)
            grads = tape.gradient(
                loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return loss, [tf.convert_to_tensor(g) for g in grads]

        self._functions = (
            tf.function(batch_loss, reduce_retracing=True),
            tf.function(batch_loss_and_grad, reduce_retracing=True),
        )

    def _loss(self, values):
        """Mean loss over the probe set at `values` (a Python float)."""
        if self._functions is None:
            self._build_functions()
        total = 0.0
        for batch in self._batches:
            total += _batch_size(batch[0]) * float(self._functions[0](values, batch))
        return total / self._num_examples

    def _loss_and_grad(self, values):
        """Mean loss (float) and its gradient (tensors) at `values`."""
        if self._functions is None:
            self._build_functions()
        total, grads = 0.0, None
        for batch in self._batches:
            n = _batch_size(batch[0])
            loss, batch_grads = self._functions[1](values, batch)
            total += n * float(loss)
            batch_grads = linalg.scale(batch_grads, n / self._num_examples)
            grads = batch_grads if grads is None else linalg.add(grads, batch_grads)
        return total / self._num_examples, grads


def _unflatten(flat, like):
    tensors, offset = [], 0
    for tensor in like:
        size = int(np.prod(tensor.shape))
        tensors.append(
            tf.constant(
                np.reshape(flat[offset : offset + size], tensor.shape), dtype=tensor.dtype
            )
        )
        offset += size
    return tensors


# ---------------------------------------------------------------------------
# Per-step alignment.


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
    `history`, a list of `(step, values)`.

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
    `on_train_batch_end`, it makes Keras call the batch hooks synchronously.
    On the small CNN of `HessianEigenvalueMonitor` trained with
    `SAM(track_eigen=True)` the difference in step time, with or without
    `log_dir`, was within the noise of this shared 2-core CPU (±30 %).

    Args:
        log_dir: Directory for the TensorBoard event files and
            `alignment.csv`; `None` keeps the values in memory (`history`)
            only. Give it a directory of its own. Defaults to `None`.
        every_n_steps: Record every `every_n_steps`-th optimizer step, >= 1.
            Every step is still read, so the recorded value is that step's.
            Defaults to `1`.

    Raises:
        TypeError: if `every_n_steps` is not an integer.
        ValueError: if `every_n_steps` < 1; at `on_train_begin`, if the
            model does not log the three metrics.

    Example:

    ```python
    model = SharpnessAwareModel(net, method=SAM(rho=0.05, track_eigen=True,
                                                refresh_every=10))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    logger = EigenAlignmentLogger("runs/sam/alignment", every_n_steps=1)
    model.fit(x, y, epochs=5, callbacks=[logger])
    steps = [step for step, _ in logger.history]
    ```

    Reference:
        - [Luo et al., 2024 (Eigen-SAM)](https://arxiv.org/abs/2501.12666)
    """

    def __init__(self, log_dir=None, every_n_steps=1):
        super().__init__()
        self.log_dir = log_dir
        self.every_n_steps = validation.check_int("every_n_steps", every_n_steps, minimum=1)
        self._writer = _ScalarWriter(log_dir) if log_dir is not None else None
        self._steps = _StepTracker()
        #: Every recorded step of this `fit`: a list of `(step, values)`.
        self.history = []
        self._previous_n = 0
        self._previous_means = {}

    @property
    def csv_path(self):
        """Path of the CSV file, or None without `log_dir`."""
        return None if self.log_dir is None else os.path.join(self.log_dir, ALIGNMENT_CSV)

    def on_train_begin(self, logs=None):
        self._check_model()
        self.history = []
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
        if _crosses_multiple(previous_step, step, self.every_n_steps):
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
            for step, values in self.history:
                writer.writerow([step] + [repr(values[name]) for name in METRIC_NAMES])
        self._writer.flush()

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


__all__ = [
    "ALIGNMENT_CSV",
    "EigenAlignmentLogger",
    "HessianEigenvalueMonitor",
    "SHARPNESS_MEASURES",
    "SharpnessMonitor",
    "random_unit_directions",
]
