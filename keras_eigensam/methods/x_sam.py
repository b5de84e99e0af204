"""X-SAM: SAM with the descent gradient corrected along the top eigenvector."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import tracked_sam_perturbation

CORRECTIONS = ("reference", "projection")


def x_sam_descent(perturbed_grads, eigenvector, alpha, correction="reference"):
    """X-SAM's corrected descent direction from `g_a = ∇L_B(w + ρĝ)`.

    ```
    ĝ_a = g_a / ‖g_a‖;   c = <ĝ_a, v>
    "reference":  g̃ = ĝ_a − α · sign(c) · c · v = ĝ_a − α |c| v
    "projection": g̃ = ĝ_a − α · c · v = (I − α v vᵀ) ĝ_a
    ```
    """
    g_hat, _ = linalg.normalize(perturbed_grads)
    c = linalg.inner(g_hat, eigenvector)
    if correction == "reference":
        c = ops.sign(c) * c
    return linalg.add_scaled(g_hat, eigenvector, -alpha * c)


@keras.saving.register_keras_serializable(package="keras_eigensam")
class XSAM(SharpnessMethod):
    """X-SAM: SAM whose descent gradient is corrected along the top eigenvector.

    The perturbation is SAM's; the gradient at the perturbed point, averaged
    over replicas, is normalised and its component along the top Hessian
    eigenvector `v` (refreshed every `refresh_every` steps) is damped:

    ```
    g_a = mean over replicas of ∇L_B(w + ρ ĝ)
    ĝ_a = g_a / ‖g_a‖;   c = <ĝ_a, v>
    g̃   = ĝ_a − α · sign(c) · c · v      # correction="reference"
    g̃   = ĝ_a − α · c · v                # correction="projection"
    w   ← base_optimizer(w, g̃)
    ```

    `sign(c)·c = |c|`, so the reference rule (the published code's) depends on
    the arbitrary sign of `v`: it damps the component when `v` points along
    `ĝ_a` and amplifies it when `v` points against. The paper's theorem
    analyses the sign-free projection `I − α v vᵀ`, offered as
    `correction="projection"`.

    The step handed to the optimizer has norm `sqrt(1 − 2α·sign(c)c·c + α²c²)`
    with the reference rule and `sqrt(1 − α(2 − α)c²)` with the projection
    (both about 1), whatever `rho` is, which changes the effective learning rate compared
    with SAM: retune it. So `rho=0` is *not* the base optimizer's step (it is
    the base optimizer on the normalised, corrected gradient) and `alpha=0`
    is SAM with a normalised descent gradient. With
    `perturbation_scope="replica"` each replica perturbs with its own
    gradient (m-sharpness) and the normalisation acts on the averaged
    gradient, so the step is unit-norm for any number of replicas. Under
    `gradient_accumulation_steps > 1` the normalisation would act per
    micro-batch, so that is refused.

    Two forward-backward passes per step, plus `num_matvecs` Hessian-vector
    products every `refresh_every` steps (every 5 by default, as in the
    reference). Logs `top_eigenvalue`, `eigen_alignment` and
    `grad_eigen_cosine` every step, as Eigen-SAM does. Refreshing that
    often makes the refresh the larger cost: on ResNet-18 (batch 32, XLA) a
    step costs 1.85× SAM's amortised, and 1.26× with the Hessian taken on a
    quarter of the batch (`hessian_batch_size=batch_size // 4`), whose
    vector kept a median |cos| of 0.93 to the converged one on digits
    (`benchmarks/steps_refresh.md`, `benchmarks/eigenvector.md`).

    Args:
        rho: Radius of the SAM perturbation. Defaults to `0.05`.
        alpha: Strength of the correction, in [0, 2] (beyond 2 the
            component along `v` is reversed and amplified). Defaults to
            `0.2`.
        correction: `"reference"` or `"projection"`. Defaults to
            `"reference"`.
        **kwargs: `tracker` or the tracker's arguments: `refresh_every`
            (defaults to `5`), `num_matvecs` (5), `which`,
            `hessian_training`, `hvp_mode`, `seed`, `hessian_batch_size`,
            `hessian_microbatch_size`, `curvature`, `lanczos_basis_dtype`
            (see `EigenvectorTracker`); and `keras.layers.Layer` arguments.

    Raises:
        ValueError: if an argument is out of range or `correction` unknown.

    Example:

    ```python
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = keras_eigensam.SharpnessAwareModel(
        net, method=XSAM(rho=0.05, alpha=0.2, correction="projection"))
    ```

    Reference:
        - [Duan, Chen & Guan, 2026](https://arxiv.org/abs/2601.10251)
    """

    requires_tracker = True
    default_refresh_every = 5
    supports_gradient_accumulation = False

    def __init__(self, rho=0.05, alpha=0.2, correction="reference", **kwargs):
        super().__init__(rho=rho, **kwargs)
        self.alpha = validation.check_number("alpha", alpha, minimum=0.0, maximum=2.0)
        self.correction = validation.check_choice(
            "correction", correction, CORRECTIONS
        )

    def perturbation(self, context):
        return tracked_sam_perturbation(context, self.rho, self.tracker)

    def descent(self, context):
        perturbed = context.gradient_at(self.step_perturbation(context))
        return x_sam_descent(
            context.all_reduce_mean(perturbed),
            context.memo("eigenvector", self.tracker.values),
            self.alpha,
            self.correction,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "correction": self.correction})
        return config
