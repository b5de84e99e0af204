"""Momentum-SAM: SAM along the optimizer's momentum, in one pass (Becker et al., 2024)."""

import keras

from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.context import inner_optimizer
from keras_eigensam.methods.sam import sam_perturbation


@keras.saving.register_keras_serializable(package="keras_eigensam")
class MomentumSAM(SharpnessMethod):
    """Momentum-SAM (MSAM): perturb along the accumulated momentum, one pass.

    SAM's ascent direction is a fresh gradient, which costs a pass. MSAM
    ascends along the optimizer's momentum instead, which it already has,
    and takes its one forward-backward pass at the perturbed point:

    ```
    b = the optimizer's momentum, pointing uphill (before this step's update)
    e = ρ · b / ‖b‖
    g = ∇L_B(w + e)               # the only pass
    w ← base_optimizer(w, g)
    ```

    `b` is read from the optimizer's slots (`StepContext.momentum`):

    - `keras.optimizers.SGD(momentum=μ > 0)`: minus its velocity. Keras
      stores `m ← μ·m − lr·g` (downhill), so `b = −m = lr·Σ_k μ^k g_{t−k}`,
      which for a constant rate is `lr` times PyTorch's `momentum_buffer`
      (`buf ← μ·buf + g`), the vector the paper and its code
      (marlonbecker/msam) perturb along; the sign is the paper's: a step
      *up* the accumulated gradient, the opposite of Nesterov's look-ahead.
    - Adam-family optimizers (`Adam`, `AdamW`, `Nadam`, `Lion`, …): their
      first moment (`+g`-signed).

    An optimizer with no momentum slot (SGD without momentum, Adagrad, …)
    raises a `ValueError` at the first step. At the first step the
    momentum is zero, and so is `e`. BatchNormalization statistics are
    updated by the one pass, at the perturbed point (as in the reference,
    whose weights stay perturbed between steps).

    One forward-backward pass per step.

    Args:
        rho: Radius of the perturbation. Defaults to `0.3` (the official
            code's CIFAR setting with SGD; MSAM's best ρ is larger than
            SAM's).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`) and `keras.layers.Layer` arguments.

    Example:

    ```python
    model = keras_eigensam.SharpnessAwareModel(net, method=MomentumSAM(rho=0.3))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), ...)
    ```

    Reference:
        - [Becker et al., 2024](https://arxiv.org/abs/2401.12033)
    """

    supports_interval = False

    def __init__(self, rho=0.3, **kwargs):
        super().__init__(rho=rho, **kwargs)

    def perturbation(self, context):
        momentum = context.momentum()
        if momentum is None:
            optimizer = inner_optimizer(context.optimizer)
            raise ValueError(
                "MomentumSAM perturbs along the optimizer's momentum, and this "
                "optimizer keeps none. Use `keras.optimizers.SGD(momentum=0.9)`, "
                "Adam or AdamW. Received: optimizer="
                f"{type(optimizer).__name__}"
                + (
                    f"(momentum={optimizer.momentum})"
                    if hasattr(optimizer, "momentum")
                    else ""
                )
            )
        return sam_perturbation(momentum, self.rho)

    def first_pass_perturbation(self, context):
        return self.step_perturbation(context)

    def descent(self, context):
        return context.grads
