"""SAM: Sharpness-Aware Minimization (Foret et al., 2021)."""

import keras

from keras_eigensam import linalg
from keras_eigensam.methods.base import SharpnessMethod


def sam_perturbation(grads, rho):
    """SAM's ascent step `e = ρ · g / (‖g‖ + 1e-12)`."""
    return linalg.scale(grads, rho / (linalg.global_norm(grads) + linalg.EPSILON))


@keras.saving.register_keras_serializable(package="keras_eigensam")
class SAM(SharpnessMethod):
    """Sharpness-Aware Minimization.

    Takes the descent step at the point of (first-order) highest loss within a
    ball of radius `rho` around the weights:

    ```
    e     = ρ · g / ‖g‖               # g = ∇L_B(w)
    g_sam = ∇L_B(w + e)               # second pass, same batch
    w     ← base_optimizer(w, g_sam)
    ```

    `rho=0` gives the base optimizer's step exactly.

    Args:
        rho: Radius of the perturbation ball. 0.05 is the usual default (0.1
            for CIFAR-100 with WRN-28-10 in the paper). Defaults to `0.05`.
        **kwargs: Passed to `keras.layers.Layer` (e.g. `name`).

    Example:

    ```python
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = keras_eigensam.SharpnessAwareModel(net, method=SAM(rho=0.05))
    ```

    Reference:
        - [Foret et al., 2021](https://arxiv.org/abs/2010.01412)
    """

    def __init__(self, rho=0.05, **kwargs):
        super().__init__(rho=rho, **kwargs)

    def perturbation(self, context):
        return sam_perturbation(context.grads, self.rho)
