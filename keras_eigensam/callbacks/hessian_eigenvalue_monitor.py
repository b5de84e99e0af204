"""`HessianEigenvalueMonitor`: top Hessian eigenvalues on a fixed probe set."""

import os

import numpy as np

from keras_eigensam import validation
from keras_eigensam.callbacks.base import EPOCH
from keras_eigensam.callbacks.base import ScheduledMonitor
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.operator import EIGEN_METHODS
from keras_eigensam.hessian.operator import HessianOperator


class HessianEigenvalueMonitor(ScheduledMonitor):
    """Logs the top Hessian eigenvalues of the loss on a fixed probe set.

    At the end of every epoch (`every="epoch"`) or after every `every`-th
    optimizer step (`every=n`) it builds the Hessian of the model's loss on
    `data` as a `keras_eigensam.hessian.HessianOperator` and logs

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
    columns at the first epoch); with `every=n` the epoch logs carry the
    most recent measurement.

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
    (they can differ by orders of magnitude, `benchmarks/hessian.md`), so
    report which one a figure uses. Neither mode writes any variable, so
    training with the monitor gives the same weights as training without it.

    Cost per measurement, in Hessian-vector products over the probe set
    (each a few gradients): `method="lanczos"` takes `num_steps` (30 by
    default), `method="power"` up to `max_iterations` per eigenvalue;
    `trace=True` adds `trace_samples`, `density=True` adds
    `density_steps × density_probes`. `num_hvps` counts the products of the
    last measurement; measured times are in `benchmarks/hessian.md`.

    Args:
        data: The probe set: one batch `(x, y)` or `(x, y, sample_weight)`
            (a tuple), a list of such batches, or a batched
            `tf.data.Dataset` (read once, when the callback is created).
            Under a `tf.distribute` strategy every batch is split over the
            replicas, so it needs at least one example per replica.
        every: `"epoch"` to measure at the end of every epoch, or an integer
            `n` to measure after every `n`-th optimizer step (whenever
            `model.optimizer.iterations` passes a multiple of `n`). Defaults
            to `"epoch"`.
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
            `"reverse_over_reverse"`, the faster in this project's
            measurements (`benchmarks/hessian.md`).
        seed: Seed of the random start vectors and probes, the same at every
            measurement, so a measurement is a function of the weights.
            Defaults to `0`.
        every_n_epochs: Deprecated: `every_n_epochs=1` is `every="epoch"`.
            Defaults to `None`.
        every_n_steps: Deprecated: `every_n_steps=n` is `every=n`. Defaults
            to `None`.

    Raises:
        TypeError: if `data` is neither a batch nor a list or dataset of
            batches, or a flag is not a bool.
        ValueError: if `every` is neither `"epoch"` nor an integer >= 1,
            `top_k` < 1, `data` is empty, `method` or `hvp_mode` is unknown,
            `num_steps` < `top_k`, or `plot_density` is set without
            `density` and `density_dir`.

    Example:

    ```python
    probe = (x_train[:256], y_train[:256])
    monitor = HessianEigenvalueMonitor(probe, every="epoch", top_k=2, trace=True)
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
        *,
        every=EPOCH,
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
        hvp_mode=DEFAULT_HVP_MODE,
        seed=0,
        every_n_epochs=None,
        every_n_steps=None,
    ):
        self.top_k = validation.check_int("top_k", top_k, minimum=1)
        self.trace = validation.check_bool("trace", trace)
        self.density = validation.check_bool("density", density)
        self.training = validation.check_bool("training", training)
        self.plot_density = validation.check_bool("plot_density", plot_density)
        self.method = validation.check_choice("method", method, EIGEN_METHODS)
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if num_steps is not None:
            num_steps = validation.check_int("num_steps", num_steps, minimum=1)
            if num_steps < self.top_k:
                raise ValueError(
                    "`num_steps` must be at least `top_k`: m Lanczos steps give "
                    f"at most m eigenvalues. Received: num_steps={num_steps}, "
                    f"top_k={self.top_k}"
                )
        self.num_steps = num_steps
        self.max_iterations = validation.check_int("max_iterations", max_iterations, minimum=1)
        self.tol = None if tol is None else validation.check_number(
            "tol", tol, minimum=0.0, strict=True
        )
        self.trace_samples = validation.check_int("trace_samples", trace_samples, minimum=1)
        self.density_steps = validation.check_int("density_steps", density_steps, minimum=1)
        self.density_probes = validation.check_int("density_probes", density_probes, minimum=1)
        if self.plot_density and not (self.density and density_dir is not None):
            raise ValueError(
                "`plot_density=True` needs `density=True` and a `density_dir` to "
                f"save the plots in. Received: density={density}, "
                f"density_dir={density_dir!r}"
            )
        self.density_dir = density_dir
        self.loss = loss
        self.seed = None if seed is None else validation.check_int("seed", seed)
        self._batches = probe.read_batches(data)
        self.keys = ["hessian_top_eigenvalue"] + [
            f"hessian_eigenvalue_{i}" for i in range(2, self.top_k + 1)
        ]
        if self.trace:
            self.keys.append("hessian_trace")
        super().__init__(every, log_dir, every_n_epochs, every_n_steps)

    def _reset(self):
        super()._reset()
        #: With `density=True`: dicts with `step`, `grid`, `density`.
        self.densities = []
        #: Hessian-vector products of the last measurement.
        self.num_hvps = 0
        self._density = None

    def _build_measurer(self):
        return HessianOperator(
            self.model,
            self.loss,
            self._batches,
            training=self.training,
            hvp_mode=self.hvp_mode,
        )

    def _measure(self):
        op = self._get_measurer()
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
            values["hessian_trace"] = op.trace(num_samples=self.trace_samples, seed=self.seed)
        self._density = None
        if self.density:
            self._density = op.density(
                num_steps=self.density_steps, num_probes=self.density_probes, seed=self.seed
            )
        self.num_hvps = op.num_hvps - start
        return values

    def _on_record(self, step, values):
        if self._density is None:
            return
        grid, density = self._density
        self.densities.append({"step": step, "grid": grid, "density": density})
        if self.density_dir is not None:
            self._save_density(step, grid, density, values)

    def _save_density(self, step, grid, density, values):
        os.makedirs(self.density_dir, exist_ok=True)
        stem = os.path.join(self.density_dir, f"density_step_{step:08d}")
        eigenvalues = np.asarray([values[key] for key in self.keys if key != "hessian_trace"])
        np.savez(stem + ".npz", grid=grid, density=density, step=step, eigenvalues=eigenvalues)
        if self.plot_density:
            from keras_eigensam.experiments import plotting

            mode = "training" if self.training else "inference"
            plotting.plot_density(
                grid,
                density,
                stem + ".png",
                title=f"Hessian spectral density, step {step} ({mode}-mode BN)",
            )
