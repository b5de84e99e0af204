"""The set-ups a `SharpnessAwareModel` refuses at its first step, with a
clear error, instead of failing deep inside TensorFlow or silently training
another method."""

from keras_eigensam.backend import distribute
from keras_eigensam.methods.context import inner_optimizer
from keras_eigensam.methods.wsam import WSAM


def check_compiled_setup(model):
    """Raises `ValueError` for `model`'s compiled set-up where its step
    cannot be built or would not be its method: `steps_per_execution > 1`
    or gradient accumulation under a strategy that synchronises replicas
    with `merge_call`, and gradient accumulation with a method whose update
    is not a mean of per-micro-batch descent gradients."""
    if model.steps_per_execution > 1 and distribute.uses_merge_call():
        # The conditional update that skips non-finite steps is taken in
        # cross-replica context there, which TensorFlow cannot place
        # inside Keras's multi-step loop (it fails with "You must feed a
        # value for placeholder tensor"): refuse it clearly instead.
        raise ValueError(
            "`steps_per_execution > 1` is not supported under "
            "this strategy and device set-up "
            "(a strategy that synchronises replicas with `merge_call`, "
            "such as MirroredStrategy on CPUs). Received: "
            f"steps_per_execution={model.steps_per_execution}; compile "
            "with `steps_per_execution=1`."
        )
    accumulation = getattr(
        inner_optimizer(model.optimizer), "gradient_accumulation_steps", None
    )
    if (
        accumulation
        and accumulation > 1
        and not model.method.supports_gradient_accumulation
    ):
        raise ValueError(
            f"{type(model.method).__name__} does not support gradient "
            "accumulation: its update is not the mean of per-micro-batch "
            "descent gradients (it normalises the averaged gradient, "
            "advances per-step state, or moves the weights outside the "
            "optimizer), so accumulating would apply it once per "
            "micro-batch, a different method. Received: an optimizer "
            f"with gradient_accumulation_steps={accumulation}; use a "
            "larger batch"
            + (", or `WSAM(decouple=False)`" if isinstance(model.method, WSAM) else "")
            + " instead."
        )
    if accumulation and accumulation > 1 and distribute.uses_merge_call():
        # Keras's accumulation branches on the update step around the
        # optimizer's cross-replica update, which TensorFlow cannot build
        # there (a plain Keras model fails the same way, with "`merge_call`
        # called while defining a new graph").
        raise ValueError(
            "Gradient accumulation is not supported under this strategy "
            "and device set-up (a strategy that synchronises replicas "
            "with `merge_call`, such as MirroredStrategy on CPUs): Keras's "
            "accumulation cannot be built there. Received: an optimizer "
            f"with gradient_accumulation_steps={accumulation}; use a "
            "larger global batch instead."
        )
