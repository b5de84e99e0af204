"""Eigen-SAM: SAM with its perturbation tilted toward the top Hessian eigenvector."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.eigenvector import EigenvectorTracker


def eigen_sam_perturbation(grads, eigenvector, rho, alpha, grad_norm=None, cosine=None):
    """Eigen-SAM's perturbation `e = ρ (ĝ + α·sign(<g, v>)·v⊥)`.

    `v⊥ = v − <ĝ, v> ĝ` is the part of the unit eigenvector `v` orthogonal to
    the gradient. The sign makes the rule independent of `v`'s arbitrary
    sign. The direction is not renormalised (as in the reference code), so
    `‖e‖ = ρ·sqrt(1 + α²(1 − cos²(g, v)))`. It is computed as the equal
    combination `e = ρ(1 − α s c)/‖g‖ · g + ρ α s · v` (`c = <ĝ, v>`,
    `s = sign(c)`), one pass over the weights instead of four.

    `grad_norm` (`‖g‖`) and `cosine` (`c`) may be passed when already known.
    """
    if grad_norm is None:
        grad_norm = linalg.global_norm(grads)
    if cosine is None:
        cosine = linalg.inner(grads, eigenvector) / (grad_norm + linalg.EPSILON)
    sign = ops.sign(cosine)
    grad_coefficient = rho * (1.0 - alpha * sign * cosine) / (grad_norm + linalg.EPSILON)
    return [
        ops.add(ops.multiply(g, grad_coefficient), ops.multiply(v, rho * alpha * sign))
        for g, v in zip(grads, eigenvector)
    ]


def eigen_sam_alignment(cosine, alpha):
    """`cos(e, v)` of Eigen-SAM's perturbation given `c = cos(g, v)`."""
    sign = ops.sign(cosine)
    off_gradient = 1.0 - ops.square(cosine)
    return (cosine + alpha * sign * off_gradient) / ops.sqrt(
        1.0 + alpha**2 * off_gradient
    )


@keras.saving.register_keras_serializable(package="keras_eigensam")
class EigenSAM(SharpnessMethod):
    """Eigen-SAM: SAM whose perturbation leans toward the top eigenvector.

    SAM's ascent direction `ĝ` is tilted toward `v`, the top eigenvector of
    the Hessian of the training loss, which the model refreshes by warm-started
    power iteration every `refresh_every` steps inside the train step:

    ```
    s     = sign(<g, v>)
    v⊥    = v − <ĝ, v> ĝ
    e     = ρ · (ĝ + α · s · v⊥)
    g_sam = ∇L_B(w + e)
    w     ← base_optimizer(w, g_sam)
    ```

    `alpha=0` is SAM. Two quirks of the reference code are not copied: its
    refresh counter resets every epoch (so with fewer than `refresh_every + 1`
    steps per epoch `v` is never computed) and before the first refresh it
    perturbs by `ρ·g` unnormalised. Here the schedule is the optimizer's
    global iteration count and the first refresh happens at step 0.

    Logs `top_eigenvalue` (Rayleigh quotient at the last refresh),
    `eigen_alignment` (|cos(e, v)|) and `grad_eigen_cosine` (|cos(g, v)|)
    every step.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05` (0.1 in the
            reference CIFAR-100 logs).
        alpha: Weight of the eigenvector component; the paper tunes it in
            {0.05, 0.1, 0.2}. Defaults to `0.2`.
        refresh_every: Optimizer steps between eigenvector refreshes.
            Defaults to `100`.
        power_iterations: Hessian-vector products per refresh, warm-started
            from the previous vector. Defaults to `5`.
        hessian_training: Take the Hessian of the model in training mode
            (batch statistics, dropout on) instead of inference mode, which is
            what the reference code does. Defaults to `False`.
        hvp_mode: `"reverse_over_reverse"` or `"forward_over_backward"`.
            Defaults to `"reverse_over_reverse"`, the faster for repeated
            products on CPU (see `benchmarks/RESULTS.md`).
        seed: Seed of the Gaussian initial vector. Defaults to `None`.
        **kwargs: Passed to `keras.layers.Layer` (e.g. `name`).

    Raises:
        ValueError: if `alpha < 0`, `refresh_every < 1`,
            `power_iterations < 1` or `hvp_mode` is unknown.

    Example:

    ```python
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = keras_eigensam.SharpnessAwareModel(
        net, method=EigenSAM(rho=0.05, alpha=0.2, refresh_every=100))
    ```

    Reference:
        - [Luo et al., 2024](https://arxiv.org/abs/2501.12666)
    """

    def __init__(
        self,
        rho=0.05,
        alpha=0.2,
        refresh_every=100,
        power_iterations=5,
        hessian_training=False,
        hvp_mode="reverse_over_reverse",
        seed=None,
        **kwargs,
    ):
        eigenvector = EigenvectorTracker(
            refresh_every=refresh_every,
            power_iterations=power_iterations,
            hessian_training=hessian_training,
            hvp_mode=hvp_mode,
            seed=seed,
        )
        super().__init__(rho=rho, eigenvector=eigenvector, **kwargs)
        self.alpha = validation.check_number("alpha", alpha, minimum=0.0)

    def perturbation(self, context):
        return eigen_sam_perturbation(
            context.grads,
            self.eigenvector.values(),
            self.rho,
            self.alpha,
            grad_norm=context.grad_norm,
            cosine=self.eigenvector.grad_cosine(context),
        )

    def eigen_alignment(self, grad_cosine):
        return eigen_sam_alignment(grad_cosine, self.alpha)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
