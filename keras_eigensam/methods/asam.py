"""ASAM: Adaptive Sharpness-Aware Minimization (Kwon et al., 2021)."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod


def asam_perturbation(grads, weights, rho, eta):
    """ASAM's ascent step `e = ρ · T²g / ‖Tg‖` with `T = |w| + η`."""
    t = [ops.add(ops.abs(w), eta) for w in weights]
    tg = linalg.multiply(t, grads)
    scale = rho / (linalg.global_norm(tg) + linalg.EPSILON)
    return linalg.scale(linalg.multiply(t, tg), scale)


@keras.saving.register_keras_serializable(package="keras_eigensam")
class ASAM(SharpnessMethod):
    """Adaptive Sharpness-Aware Minimization.

    SAM in a weight-scaled coordinate system, so the sharpness it minimises is
    invariant to rescaling of the weights:

    ```
    T     = |w| + η                   # elementwise
    e     = ρ · T² g / ‖T g‖
    g_sam = ∇L_B(w + e)
    w     ← base_optimizer(w, g_sam)
    ```

    Two forward-backward passes per step; `rho=0` is the base optimizer.

    Args:
        rho: Radius of the perturbation ball, much larger than SAM's (0.5 on
            CIFAR-10, 1.0 on CIFAR-100 in the reference code). Defaults to
            `0.5`.
        eta: Offset that keeps zero weights perturbable. Defaults to `0.01`.
        **kwargs: `tracker` and the tracker's arguments (see
            `EigenvectorTracker`), and `keras.layers.Layer` arguments.

    Example:

    ```python
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = keras_eigensam.SharpnessAwareModel(net, method=ASAM(rho=0.5))
    ```

    Reference:
        - [Kwon et al., 2021](https://arxiv.org/abs/2102.11600)
    """

    def __init__(self, rho=0.5, eta=0.01, **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.eta = validation.check_number("eta", eta, minimum=0.0)

    def perturbation(self, context):
        return asam_perturbation(context.grads, context.weights, self.rho, self.eta)

    def get_config(self):
        config = super().get_config()
        config.update({"eta": self.eta})
        return config
