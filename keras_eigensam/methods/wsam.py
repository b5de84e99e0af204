"""WSAM: Weighted Sharpness-Aware Minimization (Yue et al., 2023)."""

import keras

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import sam_perturbation


def wsam_weight(gamma):
    """`a = γ / (1 − γ)`, the weight of the sharpness term."""
    return gamma / (1.0 - gamma)


def wsam_coupled_descent(grads, perturbed_grads, gamma):
    """`a·g_s + (1 − a)·g`: the gradient of `L + a·(L(w + e) − L(w))`."""
    a = wsam_weight(gamma)
    return linalg.add(linalg.scale(perturbed_grads, a), linalg.scale(grads, 1.0 - a))


def wsam_sharpness_term(grads, perturbed_grads, gamma):
    """`a·(g_s − g)`, the sharpness term the decoupled form applies itself."""
    return linalg.scale(linalg.add_scaled(perturbed_grads, grads, -1.0), wsam_weight(gamma))


@keras.saving.register_keras_serializable(package="keras_eigensam")
class WSAM(SharpnessMethod):
    """Weighted Sharpness-Aware Minimization.

    Minimises `L(w) + a·(L(w + e) − L(w))` with `a = γ/(1 − γ)`: the loss
    plus a weighted sharpness term (SAM is `γ = 1/2`, `a = 1`):

    ```
    e   = ρ · g / ‖g‖                 # g = ∇L_B(w)
    g_s = ∇L_B(w + e)                 # second pass
    coupled:    w ← base_optimizer(w, a·g_s + (1 − a)·g)
    decoupled:  w ← base_optimizer(w, g);  w ← w − lr · a·(g_s − g)
    ```

    The decoupled form (the paper's default, Algorithm 1) lets the base
    optimizer see only the loss's gradient and applies the sharpness term
    as a plain SGD step with the current learning rate, like decoupled
    weight decay; with plain SGD both forms are the same step, with
    momentum or Adam they differ. The decoupled term is averaged over
    replicas. Under gradient accumulation the decoupled term would be
    applied per micro-batch, so that is refused (the coupled form supports
    it).

    Two forward-backward passes per step.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05` (SAM's CIFAR
            radius; the paper tunes ρ per task).
        gamma: Weight of sharpness, in [0, 1): `a = γ/(1 − γ)`. Defaults to
            `0.9` (the paper finds γ in [0.8, 0.95] stable).
        decouple: Apply the sharpness term outside the base optimizer.
            Defaults to `True` (the paper's default).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`, `interval`) and `keras.layers.Layer`
            arguments.

    Example:

    ```python
    model = keras_eigensam.SharpnessAwareModel(
        net, method=WSAM(rho=0.05, gamma=0.9, decouple=True))
    ```

    Reference:
        - [Yue et al., 2023](https://arxiv.org/abs/2305.15817)
    """

    def __init__(self, rho=0.05, gamma=0.9, decouple=True, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.gamma = validation.check_number("gamma", gamma, minimum=0.0, maximum=1.0)
        if self.gamma >= 1.0:
            raise ValueError(
                f"`gamma` must be below 1 (a = γ/(1 − γ)). Received: gamma={gamma!r}"
            )
        self.decouple = validation.check_bool("decouple", decouple)

    @property
    def supports_gradient_accumulation(self):
        return not self.decouple

    def perturbation(self, context):
        return sam_perturbation(context.grads, self.rho, context.grad_norm)

    def descent(self, context):
        perturbed = self.perturbed_gradient(context)
        if not self.decouple:
            return wsam_coupled_descent(context.grads, perturbed, self.gamma)
        context.decoupled_step(
            wsam_sharpness_term(context.grads, perturbed, self.gamma)
        )
        return context.grads

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "decouple": self.decouple})
        return config
