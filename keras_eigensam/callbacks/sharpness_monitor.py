"""`SharpnessMonitor`: ascent, average and worst-case sharpness on a probe set."""

from keras_eigensam.callbacks.base import EPOCH
from keras_eigensam.callbacks.base import ScheduledMonitor
from keras_eigensam.hessian import data as hessian_data
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.sharpness import SHARPNESS_MEASURES
from keras_eigensam.hessian.sharpness import check_sharpness_arguments
from keras_eigensam.hessian.sharpness import sharpness


class SharpnessMonitor(ScheduledMonitor):
    """Logs three notions of sharpness of the loss on a fixed probe set.

    The sharpness notions of Wen, Ma & Li (2023), computed by
    `keras_eigensam.hessian.sharpness` with `L` the mean loss on `data`
    (batch-size weighted over its batches, plus `model.losses`) and
    `ĝ = ∇L(w) / (‖∇L(w)‖ + 1e-12)`:

    ```
    sharpness_ascent      L(w + ρ ĝ) − L(w)                  (what SAM evaluates)
    sharpness_average     mean_i L(w + ρ z_i/‖z_i‖) − L(w),  z_i ~ N(0, I)
    sharpness_worst_case  max_{‖e‖≤ρ} L(w + e) − L(w),       by projected ascent
    ```

    The worst case starts at the ascent point, so it is never below the
    ascent sharpness. The average uses the same `num_samples` directions at
    every measurement (from `seed`, see
    `keras_eigensam.hessian.random_unit_directions`), so it is a function of
    the weights.

    The loss is `loss` if given, else the model's compiled loss
    (`model.loss`), computed with the model in inference mode
    (BatchNormalization moving statistics, no dropout) on perturbed weight
    *values* in a `keras.StatelessScope`
    (`keras_eigensam.hessian.ProbeLoss`): no variable is written, so the
    weights, BatchNormalization statistics and optimizer state are
    bit-identical afterwards, and training with the monitor gives the same
    weights as training without it.

    Values are written into the epoch `logs` at the end of every epoch
    (`every="epoch"`) or, with `every=n`, the latest measurement, taken
    after every `n`-th optimizer step (`nan` before the first), for
    `History`, `keras.callbacks.CSVLogger` and
    `keras.callbacks.TensorBoard` *after* the monitor in the `callbacks`
    list, and kept in `history` as `(step, values)` with
    `step = model.optimizer.iterations`.

    Cost per measurement, in passes over the probe set: one gradient for
    `L(w)` and `ĝ`; ascent one forward pass (none extra with `worst_case`);
    average `num_samples` forward passes; worst case `ascent_steps`
    gradients and one forward pass: about 6 gradients and 11 forward passes
    with the defaults. Measured times are in `benchmarks/hessian.md`.

    Args:
        data: The probe set: one batch `(x, y)` or `(x, y, sample_weight)`
            (a tuple), a list of such batches, or a batched
            `tf.data.Dataset` (read once, when the callback is created).
        rho: Radius ρ of the perturbation ball, > 0. Defaults to `0.05`.
        every: `"epoch"` to measure at the end of every epoch, or an integer
            `n` to measure after every `n`-th optimizer step. Defaults to
            `"epoch"`.
        measures: Which of `keras_eigensam.hessian.SHARPNESS_MEASURES` to
            log, as `sharpness_<measure>`. Defaults to all three.
        num_samples: The estimator's setting of that name (directions of
            the average), see `keras_eigensam.hessian.sharpness`. Defaults
            to `10`.
        ascent_steps: The estimator's setting (gradient steps of the worst
            case). Defaults to `5`.
        step_size: The estimator's setting (the worst case's ascent step;
            `None` for `2.5 * rho / ascent_steps`). Defaults to `None`.
        loss: The loss: a Keras loss, its name or a callable
            `loss(y_true, y_pred)`. `None` uses `model.loss`. Defaults to
            `None`.
        log_dir: Directory for per-measurement TensorBoard scalars; `None`
            writes none. Defaults to `None`.
        seed: Seed of the random directions. Defaults to `0`.
        every_n_epochs: Deprecated: `every_n_epochs=1` is `every="epoch"`.
            Defaults to `None`.

    Raises:
        TypeError: if `data` is neither a batch nor a list or dataset of
            batches, or a number has the wrong type.
        ValueError: if `rho` <= 0, `every` is neither `"epoch"` nor an
            integer >= 1, `num_samples` or `ascent_steps` < 1, `step_size`
            <= 0, `measures` is empty or names an unknown measure, or `data`
            is empty.

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
        *,
        every=EPOCH,
        measures=SHARPNESS_MEASURES,
        num_samples=10,
        ascent_steps=5,
        step_size=None,
        loss=None,
        log_dir=None,
        seed=0,
        every_n_epochs=None,
    ):
        (
            self.rho,
            self.measures,
            self.num_samples,
            self.ascent_steps,
            self.step_size,
            self.seed,
        ) = check_sharpness_arguments(rho, measures, num_samples, ascent_steps, step_size, seed)
        self.loss = probe.check_loss(loss)
        self._batches = hessian_data.read_batches(data)
        self.keys = [f"sharpness_{m}" for m in self.measures]
        super().__init__(every, log_dir, every_n_epochs)

    def _build_measurer(self):
        return probe.ProbeLoss(self.model, self.loss, self._batches)

    def _measure(self):
        values = sharpness(
            self._get_measurer(),
            rho=self.rho,
            measures=self.measures,
            num_samples=self.num_samples,
            ascent_steps=self.ascent_steps,
            step_size=self.step_size,
            seed=self.seed,
        )
        return {f"sharpness_{m}": value for m, value in values.items()}
