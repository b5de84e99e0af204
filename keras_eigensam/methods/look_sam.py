"""LookSAM: SAM's orthogonal gradient component reused for k steps (Liu et al., 2022)."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import sam_perturbation


def look_sam_direction(grads, perturbed_grads):
    """`g_v = g_s − ‖g_s‖·cos(g, g_s)·ĝ`: the part of `g_s` orthogonal to `g`."""
    unit, _ = linalg.normalize(grads)
    return linalg.add_scaled(perturbed_grads, unit, -linalg.inner(perturbed_grads, unit))


def look_sam_descent(grads, direction, alpha):
    """`g + α·(‖g‖/‖g_v‖)·g_v`, LookSAM's one-pass descent direction."""
    ratio = linalg.global_norm(grads) / (linalg.global_norm(direction) + linalg.EPSILON)
    return linalg.add_scaled(grads, direction, alpha * ratio)


@keras.saving.register_keras_serializable(package="keras_eigensam")
class LookSAM(SharpnessMethod):
    """LookSAM: a SAM step every `k` steps, its direction reused in between.

    The part of SAM's gradient orthogonal to the plain gradient changes
    slowly, so it is computed every `k` steps and added to the plain
    gradient on the others, which take one forward-backward pass:

    ```
    step % k == 0:  e = ρ ĝ;   g_s = ∇L_B(w + e);   d = g_s
                    g_v = g_s − ‖g_s‖ cos(g, g_s) ĝ      (stored)
    otherwise:      d = g + α (‖g‖/‖g_v‖) g_v            (one pass)
    w ← base_optimizer(w, d)
    ```

    `step` is the optimizer's `iterations`, so the schedule survives
    `steps_per_execution`, restarts and `BackupAndRestore`; `g_v` is method
    state (saved, mirrored, untouched by a skipped step). Under
    `perturbation_scope="replica"` each replica computes its own `g_v` on
    SAM steps and the stored one is their average. Under gradient
    accumulation each micro-batch is a step of its own at the window's
    weights (its own `g`, and on SAM steps its own `e` and `g_v`), the
    descent directions are averaged by the optimizer, and the stored `g_v`
    is the mean of the window's micro-batches' (as it is of replicas').

    `(k + 1)/k` passes per step on average (1.2 at `k=5`). `k=1` is SAM.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05` (SAM's CIFAR
            radius).
        k: Period of the SAM steps. Defaults to `5` (the paper's).
        alpha: Weight of the reused direction, >= 0. Defaults to `0.7` (the
            paper's).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`) and `keras.layers.Layer` arguments.

    Example:

    ```python
    model = keras_eigensam.SharpnessAwareModel(
        net, method=LookSAM(rho=0.05, k=5, alpha=0.7))
    ```

    Reference:
        - [Liu et al., 2022](https://arxiv.org/abs/2203.02714)
    """

    supports_interval = False

    def __init__(self, rho=0.05, k=5, alpha=0.7, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.k = validation.check_int("k", k, minimum=1)
        self.alpha = validation.check_number("alpha", alpha, minimum=0.0)

    def build_state(self, variable_shapes):
        super().build_state(variable_shapes)
        self.direction = [
            self.add_state(f"direction_{i}", shape, aggregation="mean")
            for i, shape in enumerate(variable_shapes)
        ]

    def perturbation(self, context):
        return sam_perturbation(context.grads, self.rho, context.grad_norm)

    def descent(self, context):
        stored = [v.value for v in self.direction]

        def stored_direction(perturbed):
            direction = look_sam_direction(context.grads, perturbed)
            if isinstance(context.micro_batch, int):
                return direction
            # Gradient accumulation: the running mean over the window's
            # micro-batches (`stored` holds the mean of the previous ones).
            j = ops.cast(context.micro_batch, direction[0].dtype)
            return [(j * s + d) / (j + 1.0) for s, d in zip(stored, direction)]

        if self.k == 1:
            perturbed = context.gradient_at(self.step_perturbation(context))
            new_direction = stored_direction(perturbed)
            descent = perturbed
        else:
            perturbation = self.step_perturbation(context)

            def sam_step():
                perturbed = context.gradient_at(perturbation)
                return perturbed, stored_direction(perturbed)

            def reuse_step():
                return look_sam_descent(context.grads, stored, self.alpha), stored

            descent, new_direction = context.cond(
                context.on_schedule(self.k), sam_step, reuse_step
            )
        for variable, value in zip(self.direction, new_direction):
            context.assign(variable, value)
        return descent

    def schedules(self):
        found = super().schedules()
        if self.k != 1:
            found.add((self.k, False))
        return found

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "alpha": self.alpha})
        return config
