"""ESAM: Efficient Sharpness-Aware Minimization (Du et al., 2022)."""

import keras
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import random
from keras_eigensam.methods import eigenvector_tracker
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.sam import sam_perturbation


def weight_masks(shapes, beta, seed, step):
    """ESAM's stochastic weight perturbation masks: each entry is 1 with
    probability `beta`, else 0 (float32 tensors shaped like `shapes`).

    A function of `(seed, step)` only, so it is the same on every replica
    and replayed exactly after a restart.
    """
    return [
        ops.cast(random.stateless_uniform(shape, seed + 7919 * i, step) < beta, "float32")
        for i, shape in enumerate(shapes)
    ]


def esam_perturbation(grads, rho, beta, masks, grad_norm=None):
    """`e = ρ · (m ⊙ g) / (β ‖g‖)`: SAM's perturbation on the entries kept by
    the masks, rescaled by `1/β` so its expectation is SAM's."""
    perturbation = sam_perturbation(grads, rho / beta, grad_norm)
    return linalg.multiply(perturbation, masks)


def sharpest_examples(losses_before, losses_after, gamma):
    """Indices of the `max(1, ⌊γ·N⌋)` examples whose loss rose most.

    None for an empty batch (`N = 0`: a replica's shard of a last partial
    batch smaller than the number of replicas)."""
    rise = losses_after - losses_before
    size = ops.shape(rise)[0]
    count = ops.maximum(
        ops.cast(ops.floor(gamma * ops.cast(size, "float32")), "int32"), 1
    )
    _, indices = ops.top_k(rise, ops.minimum(count, size))
    return indices


@keras.saving.register_keras_serializable(package="keras_eigensam")
class ESAM(SharpnessMethod):
    """Efficient SAM: stochastic weight perturbation and data selection.

    Two savings on SAM's second pass:

    - *Stochastic weight perturbation* (SWP): each entry of the perturbation
      is kept with probability `beta` and the kept ones are scaled by
      `1/β` (so its expectation is SAM's).
    - *Sharpness-sensitive data selection* (SDS): the loss of every example
      is evaluated at the perturbed point (a forward pass), and the
      backward pass runs on the `gamma` fraction of the batch whose loss
      rose most, so the descent gradient is that of their mean loss.

    ```
    e      = ρ · (m ⊙ g) / (β ‖g‖),   m_i ~ Bernoulli(β)
    rise_i = ℓ_i(w + e) − ℓ_i(w)                 # forward pass only
    S      = the ⌊γ·N⌋ examples with the largest rise
    w      ← base_optimizer(w, ∇ mean_{i∈S} ℓ_i(w + e))
    ```

    With `gamma < 1` a step costs one full pass, one forward pass and a
    forward-backward pass on `γ·N` examples (about `1.8` passes at
    `gamma=0.5` counting a forward as a third of a pass) instead of SAM's 2;
    on accelerators the selected examples' pass is a batch of a different
    size, so XLA compiles it once more. In TensorFlow the gradient of every
    weight is computed whatever the mask, so SWP saves no time here (the
    paper's saving comes from skipping weight gradients in PyTorch); it is
    kept for the rule. The masks are drawn from `(seed, iterations)`, so
    they are identical on every replica and replayed after a restart.
    Per-example losses come from the compiled loss (see
    `StepContext.example_losses`); each replica selects from its own batch.

    `beta=1, gamma=1` is SAM.

    Args:
        rho: Radius of the perturbation. Defaults to `0.05` (the official
            code's CIFAR runs).
        beta: Probability that a weight is perturbed, in (0, 1]. Defaults
            to `0.6` (the official code's CIFAR runs).
        gamma: Fraction of the batch the second backward pass runs on, in
            (0, 1]. Defaults to `0.5` (the official code's CIFAR runs).
        seed: Seed of the SWP masks (and of a tracker's initial vector).
            Defaults to `None` (0).
        **kwargs: `SharpnessMethod` options (`tracker` and its arguments,
            `perturbed_variables`, `interval`) and `keras.layers.Layer`
            arguments.

    Example:

    ```python
    model = keras_eigensam.SharpnessAwareModel(
        net, method=ESAM(rho=0.05, beta=0.6, gamma=0.5))
    ```

    Reference:
        - [Du et al., 2022](https://arxiv.org/abs/2110.03141)
    """

    def __init__(self, rho=0.05, beta=0.6, gamma=0.5, seed=None, **kwargs):
        if seed is not None and (
            kwargs.get("tracker") is True
            or any(k in kwargs for k in eigenvector_tracker.ARGUMENTS)
        ):
            kwargs["seed"] = seed  # the tracker's initial vector too
        super().__init__(rho=rho, **kwargs)
        self.beta = validation.check_number("beta", beta, minimum=0.0, strict=True, maximum=1.0)
        self.gamma = validation.check_number("gamma", gamma, minimum=0.0, strict=True, maximum=1.0)
        self.seed = None if seed is None else validation.check_int("seed", seed)

    def perturbation(self, context):
        if self.beta == 1.0:
            return sam_perturbation(context.grads, self.rho, context.grad_norm)
        masks = weight_masks(
            [tuple(g.shape) for g in context.grads],
            self.beta,
            self.seed or 0,
            context.step,
        )
        return esam_perturbation(
            context.grads, self.rho, self.beta, masks, context.grad_norm
        )

    def perturbed_gradient(self, context, examples=None):
        if self.gamma == 1.0 or examples is not None:
            return super().perturbed_gradient(context, examples)
        perturbation = self.step_perturbation(context)

        def selected_pass():
            examples = sharpest_examples(
                context.example_losses(None),
                context.example_losses(perturbation),
                self.gamma,
            )
            return context.gradient_at(perturbation, examples)

        if self.interval == 1:
            return selected_pass()
        return context.cond(
            self.second_pass_due(context), selected_pass, lambda: list(context.grads)
        )

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "gamma": self.gamma, "seed": self.seed})
        return config
