"""Eigen-SAM: SAM with its perturbation tilted toward the top Hessian eigenvector."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.eigenvector import EigenvectorTracker


def eigen_sam_perturbation(grads, eigenvector, rho, alpha):
    """Eigen-SAM's perturbation `e = ρ (ĝ + α·sign(<g, v>)·v⊥)`.

    `v⊥ = v − <ĝ, v> ĝ` is the part of the unit eigenvector `v` orthogonal to
    the gradient. The sign makes the rule independent of `v`'s arbitrary
    sign. The direction is not renormalised (as in the reference code), so
    `‖e‖ = ρ·sqrt(1 + α²(1 − cos²(g, v)))`.
    """
    g_hat, _ = linalg.normalize(grads)
    g_dot_v = linalg.inner(g_hat, eigenvector)
    v_perp = linalg.add_scaled(eigenvector, g_hat, -g_dot_v)
    direction = linalg.add_scaled(g_hat, v_perp, alpha * ops.sign(g_dot_v))
    return linalg.scale(direction, rho)


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
            context.grads, self.eigenvector.values(), self.rho, self.alpha
        )

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
