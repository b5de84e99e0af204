"""The step's batch loss beyond its gradient: per-example losses and Hessian products.

What `SharpnessAwareModel`'s train step gives its method through
`StepContext`, besides the gradient passes: the compiled loss of every
example of the batch (`example_losses`, ESAM's selection) and Hessian-vector
products of the batch's loss (`hessian_runner`, the eigenvector tracker's
refresh), whole or accumulated over micro-batches, or Gauss-Newton products.
"""

import keras
from keras import ops

from keras_eigensam.backend import autodiff
from keras_eigensam.backend import distribute
from keras_eigensam.hessian.ggn import make_ggn_product
from keras_eigensam.hessian.hvp import make_hvp
from keras_eigensam.hessian.hvp import make_microbatched_hvp


def example_losses(model, x, y, y_pred, sample_weight):
    """`model`'s per-example losses of the compiled loss at predictions `y_pred`.

    The mean loss is `Σ_i s_i ℓ_i / N` (`sum_over_batch_size`) for
    sample weights `s`, so `ℓ_i = N ∂L/∂s_i`: one cheap backward through
    the loss's reduction only, for any compiled loss and output
    structure.
    """
    batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
    if sample_weight is None:
        sample_weight = ops.ones((batch_size,), "float32")

    # Weight regularisers' terms do not depend on the sample weights.
    def weighted_loss(values):
        with _own_variables(model):
            loss_ = model._loss(x, y, y_pred, values[0])
        return ops.cast(loss_, "float32")

    _, (per_example,) = autodiff.value_and_gradient(
        weighted_loss, [ops.cast(sample_weight, "float32")]
    )
    return ops.cast(batch_size, "float32") * ops.reshape(per_example, (-1,))

def hessian_runner(model, x, y, sample_weight):
    """`StepContext.with_hessian` for the batch `x, y, sample_weight` of
    `model`'s step (see there)."""

    def with_hessian(
        pred, fn, default, training, mode, examples, microbatch_size, curvature
    ):
        def replica_fn(x, y, sample_weight):
            if examples is not None:
                # The first examples of each replica's shard (batches
                # are shuffled, so a random sub-batch).
                local = -(-examples // distribute.num_replicas_in_sync())
                x, y, sample_weight = keras.tree.map_structure(
                    lambda t: None if t is None else t[:local],
                    (x, y, sample_weight),
                )
            def loss_fn(part):
                # True scale, float32: a loss-scaled product overflows in
                # float16 where the gradient does not.
                x, y, sample_weight = part
                with _own_variables(model):
                    y_pred = model._forward(x, training=training)
                    loss = model._loss(x, y, y_pred, sample_weight)
                return ops.cast(loss, "float32")

            batch = (x, y, sample_weight)
            if curvature == "ggn":
                local_matvec = _ggn_product(model, batch, training, microbatch_size)
            elif microbatch_size is None:
                local_matvec = make_hvp(
                    lambda: loss_fn(batch), model.trainable_variables, mode=mode
                )
            else:
                local_matvec = make_microbatched_hvp(
                    loss_fn, batch, model.trainable_variables,
                    microbatch_size, mode=mode,
                )

            def matvec(vectors):
                # Each replica's loss carries a 1/num_replicas factor, so
                # the sum over replicas is the global-batch Hessian.
                return distribute.all_reduce_sum(local_matvec(vectors))

            return fn(matvec)

        return distribute.replica_cond(
            pred, replica_fn, (x, y, sample_weight), default=default
        )

    return with_hessian


def _ggn_product(model, batch, training, microbatch_size):
    """The Gauss-Newton `matvec` of `model`'s compiled loss on `batch`
    (`make_ggn_product`, split at the model's output, which must be one
    tensor), at true scale in float32; with `microbatch_size`, accumulated
    over micro-batches of that many examples."""

    def part_product(part):
        x, y, sample_weight = part

        def outputs():
            with _own_variables(model):
                y_pred = keras.tree.flatten(model._forward(x, training=training))
            if len(y_pred) != 1:
                raise ValueError(
                    "curvature='ggn' needs a model with one output tensor (the "
                    "Gauss-Newton split is at the output). Received: an output "
                    f"structure of {len(y_pred)} tensors; use curvature='hessian'."
                )
            return ops.cast(y_pred[0], "float32")

        def loss(y_pred):
            # Weight regularisers do not depend on the output, so they add
            # nothing to the product.
            with _own_variables(model):
                return ops.cast(model._loss(x, y, y_pred, sample_weight), "float32")

        return make_ggn_product(outputs, loss, model.trainable_variables)

    if microbatch_size is None:
        return part_product(batch)
    return autodiff.microbatched_sum(
        lambda part, tangents: part_product(part)(tangents), batch, microbatch_size
    )


def _own_variables(model):
    """A scope in which `model` reads its trainable variables themselves (so
    that they can be differentiated, also by weight regularisers) and
    discards any state write (BatchNormalization statistics in training
    mode)."""
    return keras.StatelessScope(
        state_mapping=[(v, v.value) for v in model.trainable_variables],
        collect_losses=True,
    )
