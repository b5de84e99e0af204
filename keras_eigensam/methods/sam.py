"""SAM: Sharpness-Aware Minimization (Foret et al., 2021)."""

import keras

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod


def sam_perturbation(grads, rho, grad_norm=None):
    """SAM's ascent step `e = ρ · g / (‖g‖ + 1e-12)`."""
    if grad_norm is None:
        grad_norm = linalg.global_norm(grads)
    return linalg.scale(grads, rho / (grad_norm + linalg.EPSILON))


def tracked_sam_perturbation(context, rho, tracker=None):
    """`sam_perturbation` of the step's gradient; with a tracker, noted with
    it (`EigenvectorTracker.note_perturbation`: `e = a·g`), so its alignment
    metric costs no pass over the weights."""
    if tracker is not None:
        tracker.note_perturbation(context, rho / (context.grad_norm + linalg.EPSILON), 0.0)
    return sam_perturbation(context.grads, rho, context.grad_norm)


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

    Two forward-backward passes per step. `rho=0` gives the base optimizer's
    step exactly. With a tracker (`track_eigen=True`, `tracker=...` or any
    tracker argument) the model also estimates the top Hessian eigenvector
    `v` on a schedule and logs `top_eigenvalue`, `eigen_alignment`
    (|cos(e, v)|) and `grad_eigen_cosine` (|cos(g, v)|) every step, without
    changing the update: the Eigen-SAM paper's first figure is SAM's
    alignment over training.

    Args:
        rho: Radius of the perturbation ball. 0.05 is the usual default (0.1
            for CIFAR-100 with WRN-28-10 in the paper). Defaults to `0.05`.
        track_eigen: Shorthand for `tracker=True`: track the top Hessian
            eigenvector and log the curvature metrics. Defaults to `False`.
        **kwargs: `tracker` and the tracker's arguments (see
            `EigenvectorTracker`), and `keras.layers.Layer` arguments.

    Example:

    ```python
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = keras_eigensam.SharpnessAwareModel(net, method=SAM(rho=0.05))
    ```

    Reference:
        - [Foret et al., 2021](https://arxiv.org/abs/2010.01412)
    """

    def __init__(self, rho=0.05, track_eigen=False, **kwargs):
        if validation.check_bool("track_eigen", track_eigen) and kwargs.get("tracker") is None:
            kwargs["tracker"] = True
        super().__init__(rho=rho, **kwargs)

    def perturbation(self, context):
        return tracked_sam_perturbation(context, self.rho, self.tracker)
