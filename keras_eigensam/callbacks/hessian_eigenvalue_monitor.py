"""`HessianEigenvalueMonitor`: top eigenvalues of a curvature matrix on probe data."""

import os

import numpy as np

from keras_eigensam import validation
from keras_eigensam.callbacks.base import EPOCH
from keras_eigensam.callbacks.base import ScheduledMonitor
from keras_eigensam.hessian.data import CurvatureData
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.fisher import EmpiricalFisherOperator
from keras_eigensam.hessian.ggn import GGNOperator
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.lanczos import WHICH
from keras_eigensam.hessian.eigenpairs import EIGEN_METHODS
from keras_eigensam.hessian.hessian_operator import HessianOperator
from keras_eigensam.hessian.trace import TRACE_METHODS

#: The curvature matrices the monitor measures, and the prefix of its keys.
CURVATURES = {"hessian": "hessian", "ggn": "ggn", "fisher": "fisher"}


class HessianEigenvalueMonitor(ScheduledMonitor):
    """Logs the top eigenvalues of the Hessian (or GGN, or Fisher) on probe data.

    At the end of every epoch (`every="epoch"`) or after every `every`-th
    optimizer step (`every=n`) it builds the curvature matrix of the model's
    loss on `data` (`curvature="hessian"`: a
    `keras_eigensam.hessian.HessianOperator`; `"ggn"`: a `GGNOperator`;
    `"fisher"`: an `EmpiricalFisherOperator`) and logs, with the prefix
    `hessian`, `ggn` or `fisher`,

    ```
    hessian_top_eigenvalue          λ1                 (Lanczos or power iteration)
    hessian_eigenvalue_2 … _k       λ2 … λk            (top_k > 1)
    hessian_trace                   tr(H) estimate     (trace=True: Hutchinson or Hutch++)
    hessian_trace_std_error         its standard error (trace=True)
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

    The matrix is that of the mean loss over all of `data` (batch-size
    weighted; the Hessian includes `model.losses`, the GGN and Fisher do
    not), with respect to the trainable weights; `data` can be one probe
    batch or a whole data set (a `tf.data.Dataset` is streamed at every
    product, so it must not reshuffle). `which="smallest"` logs the most
    negative eigenvalues instead (negative curvature). The
    loss is `loss` if given, else the model's compiled loss (`model.loss`).
    `training=False` (the default) takes it with the model in inference
    mode: BatchNormalization uses its moving statistics and dropout is off;
    `training=True` uses batch statistics. The two are different operators
    (they can differ by orders of magnitude, `benchmarks/hessian.md`), so
    report which one a figure uses. Neither mode writes any variable, so
    training with the monitor gives the same weights as training without it.

    Cost per measurement, in products over the probe data (each a few
    gradients): up to `num_matvecs` for the eigenvalues (Lanczos stops
    earlier once the residuals meet `tol`), `trace_matvecs` with
    `trace=True`, `density_matvecs` with `density=True`. `num_matvecs_used`
    counts the products of the last measurement; measured times are in
    `benchmarks/hessian.md` and `benchmarks/curvature_operators.md`.

    Args:
        data: The probe data: one batch `(x, y)` or `(x, y, sample_weight)`
            (a tuple; with `batch_size`, arrays split into batches), a list
            of such batches, or a batched `tf.data.Dataset` (streamed at
            every product; checked once, when the callback is created, to
            yield the same batches twice). Under a `tf.distribute` strategy
            every batch is split over the replicas, so it needs at least one
            example per replica.
        every: `"epoch"` to measure at the end of every epoch, or an integer
            `n` to measure after every `n`-th optimizer step (whenever
            `model.optimizer.iterations` passes a multiple of `n`). Defaults
            to `"epoch"`.
        top_k: Number of eigenvalues, >= 1. Defaults to `1`.
        trace: Whether to log an estimate of the trace and its standard
            error. Defaults to `False`.
        density: Whether to compute the spectral density (stochastic Lanczos
            quadrature). Defaults to `False`.
        training: Whether to take the Hessian with the model in training
            mode (batch statistics, dropout) instead of inference mode.
            Defaults to `False`.
        curvature: `"hessian"`, `"ggn"` (generalized Gauss-Newton) or
            `"fisher"` (empirical Fisher). Defaults to `"hessian"`.
        which: `"largest"` (algebraic), `"smallest"` or `"magnitude"`; see
            `CurvatureOperator.top_eigenpairs`. Defaults to `"largest"`.
        method: `"lanczos"` or `"power"` (power iteration with deflation).
            Defaults to `"lanczos"`.
        loss: The loss to measure: a Keras loss, its name or a callable
            `loss(y_true, y_pred)`. `None` uses `model.loss`. Defaults to
            `None`.
        num_matvecs: The most products for the eigenvalues, >= `top_k`;
            `None` uses `max(30, 2 * top_k)` for Lanczos (capped at the
            number of parameters) and 100 per power run. Defaults to `None`.
        tol: Relative tolerance of the stopping rule (Lanczos: residuals;
            power: change and residual), or `None` to spend all of
            `num_matvecs`. Defaults to `1e-4`.
        trace_matvecs: Products per trace estimate, >= 1 (>= 3 for
            Hutch++). Defaults to `100`.
        trace_method: `"hutchinson"` or `"hutch++"`. Defaults to
            `"hutchinson"`.
        density_matvecs: Products per density estimate, >= `density_probes`.
            Defaults to `200`.
        density_probes: Random start vectors of the density estimate, >= 1.
            Defaults to `4`.
        batch_size: Split in-memory arrays `data` into batches of this
            size. Defaults to `None` (one batch).
        density_dir: Directory for the density `.npz` files (and PNGs);
            `None` keeps the densities in memory only. Defaults to `None`.
        plot_density: Whether to also save each density as a PNG in
            `density_dir` (needs matplotlib, the `scripts` extra). Defaults
            to `False`.
        log_dir: Directory for per-measurement TensorBoard scalars (tags as
            the logs keys, step = optimizer step). Give it a directory of its
            own, e.g. a subdirectory of `keras.callbacks.TensorBoard`'s.
            `None` writes none. Defaults to `None`.
        hvp_mode: `"reverse_over_reverse"` or `"forward_over_backward"`
            (Hessian only); see `keras_eigensam.hessian.hvp`. Defaults to
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
            `top_k` < 1, `data` is empty or reshuffles, `curvature`,
            `which`, `method`, `trace_method` or `hvp_mode` is unknown,
            `num_matvecs` < `top_k`, or `plot_density` is set without
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
        curvature="hessian",
        which="largest",
        method="lanczos",
        loss=None,
        num_matvecs=None,
        tol=1e-4,
        trace_matvecs=100,
        trace_method="hutchinson",
        density_matvecs=200,
        density_probes=4,
        batch_size=None,
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
        self.curvature = validation.check_choice("curvature", curvature, tuple(CURVATURES))
        self.which = validation.check_choice("which", which, WHICH)
        self.method = validation.check_choice("method", method, EIGEN_METHODS)
        self.trace_method = validation.check_choice("trace_method", trace_method, TRACE_METHODS)
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if num_matvecs is not None:
            num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
            runs = self.top_k + (self.method == "power" and self.which != "magnitude")
            if num_matvecs < runs:
                raise ValueError(
                    f"`num_matvecs` must be at least {runs}: every eigenvalue "
                    "needs a product (power iteration with which='largest' or "
                    "'smallest' one more, for the shift). Received: "
                    f"num_matvecs={num_matvecs}, top_k={self.top_k}, "
                    f"method={self.method!r}, which={self.which!r}"
                )
        self.num_matvecs = num_matvecs
        self.tol = None if tol is None else validation.check_number(
            "tol", tol, minimum=0.0, strict=True
        )
        minimum = 3 if self.trace_method == "hutch++" else 1
        self.trace_matvecs = validation.check_int("trace_matvecs", trace_matvecs, minimum=minimum)
        self.density_probes = validation.check_int("density_probes", density_probes, minimum=1)
        self.density_matvecs = validation.check_int(
            "density_matvecs", density_matvecs, minimum=self.density_probes
        )
        if self.plot_density and not (self.density and density_dir is not None):
            raise ValueError(
                "`plot_density=True` needs `density=True` and a `density_dir` to "
                f"save the plots in. Received: density={density}, "
                f"density_dir={density_dir!r}"
            )
        if density_dir is not None:
            validation.check_path("density_dir", density_dir)
        self.density_dir = density_dir
        self.loss = probe.check_loss(loss)
        self.seed = validation.check_seed("seed", seed)
        self._data = CurvatureData(data, batch_size)
        prefix = CURVATURES[self.curvature]
        self._prefix = prefix
        self.eigenvalue_keys = [f"{prefix}_top_eigenvalue"] + [
            f"{prefix}_eigenvalue_{i}" for i in range(2, self.top_k + 1)
        ]
        self.keys = list(self.eigenvalue_keys)
        if self.trace:
            self.keys += [f"{prefix}_trace", f"{prefix}_trace_std_error"]
        super().__init__(every, log_dir, every_n_epochs, every_n_steps)

    def _reset(self):
        super()._reset()
        #: With `density=True`: dicts with `step`, `grid`, `density`.
        self.densities = []
        #: Products of the last measurement.
        self.num_matvecs_used = 0
        self._density = None

    def _build_measurer(self):
        if self.curvature == "hessian":
            return HessianOperator(
                self.model, self.loss, self._data, training=self.training, hvp_mode=self.hvp_mode
            )
        operator = GGNOperator if self.curvature == "ggn" else EmpiricalFisherOperator
        return operator(self.model, self.loss, self._data, training=self.training)

    def _measure(self):
        op = self._get_measurer()
        start = op.matvec_count
        eigvals, _ = op.top_eigenpairs(
            k=self.top_k,
            method=self.method,
            which=self.which,
            num_matvecs=self.num_matvecs,
            tol=self.tol,
            seed=self.seed,
        )
        values = {key: float(value) for key, value in zip(self.eigenvalue_keys, eigvals)}
        if self.trace:
            estimate = op.trace(
                num_matvecs=self.trace_matvecs, method=self.trace_method, seed=self.seed
            )
            values[f"{self._prefix}_trace"] = estimate.value
            values[f"{self._prefix}_trace_std_error"] = estimate.std_error
        self._density = None
        if self.density:
            self._density = op.density(
                num_matvecs=self.density_matvecs, num_probes=self.density_probes, seed=self.seed
            )
        self.num_matvecs_used = op.matvec_count - start
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
        eigenvalues = np.asarray([values[key] for key in self.eigenvalue_keys])
        np.savez(stem + ".npz", grid=grid, density=density, step=step, eigenvalues=eigenvalues)
        if self.plot_density:
            from keras_eigensam.experiments import plotting

            mode = "training" if self.training else "inference"
            plotting.plot_density(
                grid,
                density,
                stem + ".png",
                title=f"{self._measurer.kind} spectral density, step {step} ({mode}-mode BN)",
            )
