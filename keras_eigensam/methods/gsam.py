"""GSAM: Surrogate Gap Guided Sharpness-Aware Minimization (Zhuang et al., 2022)."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import sam_perturbation


def gsam_rho(learning_rate, rho_max, rho_min, lr_max, lr_min):
    """`ρ_t`, linear in the learning rate between `rho_min` and `rho_max`.

    ```
    ρ_t = ρ_min + (ρ_max − ρ_min) · (lr − lr_min) / (lr_max − lr_min)
    ```

    clipped to the interval between `rho_min` and `rho_max`; `ρ_max` when
    `lr_max == lr_min` (a constant rate).
    """
    learning_rate = ops.cast(learning_rate, "float32")
    span = ops.cast(lr_max, "float32") - ops.cast(lr_min, "float32")
    fraction = ops.where(
        span > 0.0,
        (learning_rate - lr_min) / ops.where(span > 0.0, span, 1.0),
        1.0,
    )
    rho = rho_min + (rho_max - rho_min) * fraction
    return ops.clip(rho, min(rho_min, rho_max), max(rho_min, rho_max))


def gsam_descent(grads, perturbed_grads, alpha):
    """GSAM's descent direction from `g = ∇L(w)` and `g_s = ∇L(w + e)`.

    ```
    ĝ_s = g_s / ‖g_s‖;   g⊥ = g − <g, ĝ_s> ĝ_s;   d = g_s − α g⊥
    ```
    """
    unit, _ = linalg.normalize(perturbed_grads)
    orthogonal = linalg.add_scaled(grads, unit, -linalg.inner(grads, unit))
    return linalg.add_scaled(perturbed_grads, orthogonal, -alpha)


@keras.saving.register_keras_serializable(package="keras_eigensam")
class GSAM(SharpnessMethod):
    """Surrogate Gap Guided Sharpness-Aware Minimization.

    SAM's descent, plus an ascent along the part of the first-pass gradient
    orthogonal to the perturbed one, which lowers the surrogate gap
    `L(w + e) − L(w)` (a measure of sharpness) without changing the
    perturbed loss to first order:

    ```
    ρ_t = ρ_min + (ρ_max − ρ_min)·(lr − lr_min)/(lr_max − lr_min)
    e   = ρ_t · g / ‖g‖                   # g = ∇L_B(w)
    g_s = ∇L_B(w + e)                     # second pass
    g⊥  = g − <g, ĝ_s> ĝ_s                # ĝ_s = g_s / ‖g_s‖
    w   ← base_optimizer(w, g_s − α g⊥)
    ```

    `lr` is the optimizer's learning rate at this step (a learning-rate
    schedule is evaluated at `iterations`; a `ReduceLROnPlateau` change is
    seen at the next step), so `ρ_t` follows the schedule as the paper's
    "proportional" scheduler does. `lr_max`/`lr_min` are the schedule's
    extremes: pass them as the reference does (its `ProportionScheduler`),
    or leave `lr_max=None` for the largest rate seen so far in training
    (method state, saved with the model; a constant rate gives
    `ρ_t = rho_max`) and `lr_min=None` for 0. `ρ_t` is clipped to
    `[rho_min, rho_max]`. Under `perturbation_scope="replica"` each replica
    decomposes its own gradients and the descent directions are averaged,
    as in the official JAX code.

    Two forward-backward passes per step. `alpha=0, rho_min=rho_max` is SAM.

    Args:
        rho_max: `ρ` at the largest learning rate. Defaults to `0.05`, SAM's
            CIFAR radius (the paper tunes ρ per task and publishes no plain
            CIFAR setting; big_vision's ViT-B/32 ImageNet config uses 0.6).
        rho_min: `ρ` at the smallest learning rate. Defaults to `0.01` (our
            choice: a fifth of `rho_max`; set it equal to `rho_max` for a
            constant radius).
        alpha: Strength of the ascent along `g⊥`, >= 0. Defaults to `0.2`, the
            authors' PyTorch CIFAR example (juntang-zhuang/GSAM).
        lr_max: Learning rate at which `ρ_t = rho_max`. Defaults to `None`
            (the largest rate seen so far).
        lr_min: Learning rate at which `ρ_t = rho_min`. Defaults to `None`
            (0).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`, `interval`) and `keras.layers.Layer`
            arguments.

    Example:

    ```python
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=1000)
    model = keras_eigensam.SharpnessAwareModel(
        net, method=GSAM(rho_max=0.05, rho_min=0.01, alpha=0.2, lr_max=0.1))
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), ...)
    ```

    Reference:
        - [Zhuang et al., 2022](https://arxiv.org/abs/2203.08065)
    """

    def __init__(
        self,
        rho_max=0.05,
        rho_min=0.01,
        alpha=0.2,
        lr_max=None,
        lr_min=None,
        **kwargs,
    ):
        if "rho" in kwargs:
            raise TypeError(
                "GSAM's radius follows the learning rate between `rho_min` and "
                f"`rho_max`; it takes no `rho`. Received: rho={kwargs['rho']!r}"
            )
        rho_max = validation.check_number("rho_max", rho_max, minimum=0.0)
        super().__init__(rho=rho_max, **kwargs)
        self.rho_max = rho_max
        self.rho_min = validation.check_number("rho_min", rho_min, minimum=0.0)
        if self.rho_min > rho_max:
            raise ValueError(
                "`rho_min` must not exceed `rho_max` (`ρ_t` is clipped to "
                f"[rho_min, rho_max]). Received: rho_min={rho_min!r}, "
                f"rho_max={rho_max!r}"
            )
        self.alpha = validation.check_number("alpha", alpha, minimum=0.0)
        self.lr_max = (
            None if lr_max is None else validation.check_number("lr_max", lr_max, minimum=0.0)
        )
        self.lr_min = (
            None if lr_min is None else validation.check_number("lr_min", lr_min, minimum=0.0)
        )
        if self.lr_max is not None and self.lr_min is not None and self.lr_min > self.lr_max:
            raise ValueError(
                "`lr_min` must not exceed `lr_max`. Received: "
                f"lr_min={lr_min!r}, lr_max={lr_max!r}"
            )

    def build_state(self, variable_shapes):
        super().build_state(variable_shapes)
        if self.lr_max is None:
            self.largest_learning_rate = self.add_state("largest_learning_rate", ())

    def current_rho(self, context):
        """`ρ_t` of this step (a float32 scalar tensor)."""

        def compute():
            learning_rate = context.learning_rate
            lr_max = self.lr_max
            if lr_max is None:
                lr_max = ops.maximum(self.largest_learning_rate.value, learning_rate)
                context.assign(self.largest_learning_rate, lr_max)
            lr_min = 0.0 if self.lr_min is None else self.lr_min
            return gsam_rho(learning_rate, self.rho_max, self.rho_min, lr_max, lr_min)

        return context.memo("gsam_rho", compute)

    def perturbation(self, context):
        return sam_perturbation(context.grads, self.current_rho(context), context.grad_norm)

    def descent(self, context):
        return gsam_descent(context.grads, self.perturbed_gradient(context), self.alpha)

    def get_config(self):
        config = super().get_config()
        config.pop("rho")
        config.update(
            {
                "rho_max": self.rho_max,
                "rho_min": self.rho_min,
                "alpha": self.alpha,
                "lr_max": self.lr_max,
                "lr_min": self.lr_min,
            }
        )
        return config
