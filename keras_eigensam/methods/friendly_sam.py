"""FriendlySAM: SAM without the full-gradient component (Li et al., 2024)."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod


def friendly_sam_step(grads, momentum, started, rho, sigma, lmbda):
    """FriendlySAM's perturbation and next EMA from `g` and the EMA `m`.

    ```
    first step (not started):  m ← g;                 e = ρ ĝ
    later:   d = g − σ·m;     m ← λ·m + (1 − λ)·g;    e = ρ d / ‖d‖
    ```

    Returns `(e, m_next)`.
    """
    d = linalg.add_scaled(grads, momentum, -sigma)
    direction = [ops.where(started, di, gi) for di, gi in zip(d, grads)]
    ema = linalg.add(linalg.scale(momentum, lmbda), linalg.scale(grads, 1.0 - lmbda))
    next_momentum = [ops.where(started, mi, gi) for mi, gi in zip(ema, grads)]
    unit, _ = linalg.normalize(direction)
    return linalg.scale(unit, rho), next_momentum


@keras.saving.register_keras_serializable(package="keras_eigensam")
class FriendlySAM(SharpnessMethod):
    """FriendlySAM (F-SAM): SAM's perturbation without the full-gradient part.

    The minibatch gradient is the full-data gradient plus noise; the paper
    finds SAM's benefit in the noise part and removes an estimate of the
    full gradient (an EMA of past minibatch gradients) from the
    perturbation direction:

    ```
    first step:  m = g;   e = ρ g/‖g‖                    # g = ∇L_B(w)
    later:       d = g − σ·m_prev;   m = λ·m_prev + (1 − λ)·g
                 e = ρ d/‖d‖
    g_s = ∇L_B(w + e);   w ← base_optimizer(w, g_s)
    ```

    The EMA `m` is method state: saved with the model, restored by
    `BackupAndRestore`, left unchanged by a skipped (non-finite) step. With
    `perturbation_scope="replica"` each replica perturbs with its own `g`
    and the EMA averages over replicas (it estimates the full gradient).
    Under gradient accumulation the EMA would advance once per micro-batch,
    so that is refused.

    Two forward-backward passes per step. `sigma=0` is SAM.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05` (SAM's CIFAR
            radius; the paper's CIFAR-100 runs use 0.1–0.2).
        sigma: How much of the EMA is removed, >= 0. Defaults to `1.0` (the
            paper's setting).
        lmbda: EMA decay. Defaults to `0.6` (the paper's CIFAR setting).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`, `interval`) and `keras.layers.Layer`
            arguments.

    Example:

    ```python
    model = keras_eigensam.SharpnessAwareModel(
        net, method=FriendlySAM(rho=0.05, sigma=1.0, lmbda=0.6))
    ```

    Reference:
        - [Li et al., 2024](https://arxiv.org/abs/2403.12350)
    """

    supports_gradient_accumulation = False

    def __init__(self, rho=0.05, sigma=1.0, lmbda=0.6, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.sigma = validation.check_number("sigma", sigma, minimum=0.0)
        self.lmbda = validation.check_number("lmbda", lmbda, minimum=0.0, maximum=1.0)

    def build_state(self, variable_shapes):
        super().build_state(variable_shapes)
        self.momentum = [
            self.add_state(f"momentum_{i}", shape, aggregation="mean")
            for i, shape in enumerate(variable_shapes)
        ]
        # 1.0 once the EMA holds a gradient.
        self.started = self.add_state("started", ())

    def perturbation(self, context):
        started = ops.greater(self.started.value, 0.5)
        momentum = context._restrict([m.value for m in self.momentum])
        perturbation, next_momentum = friendly_sam_step(
            context.grads, momentum, started, self.rho, self.sigma, self.lmbda
        )
        for variable, value in zip(self.momentum, next_momentum):
            context.assign(variable, value)
        context.assign(self.started, 1.0)
        return perturbation

    def get_config(self):
        config = super().get_config()
        config.update({"sigma": self.sigma, "lmbda": self.lmbda})
        return config
