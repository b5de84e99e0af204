"""The TensorFlow-specific distribution helpers, in one place.

Everything that needs a `tf.distribute` replica context lives here, so the
training step and the Hessian code stay backend-neutral apart from these calls.
All functions work under the default strategy (where they are identities) and
inside any strategy's replica context (`strategy.run`).
"""

import tensorflow as tf


def num_replicas_in_sync():
    """Number of replicas of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(values):
    """Sums `values` (a tensor or a list of tensors) over replicas."""
    context = tf.distribute.get_replica_context()
    if context is None or num_replicas_in_sync() == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def all_reduce_mean(values):
    """Averages `values` (a tensor or a list of tensors) over replicas."""
    context = tf.distribute.get_replica_context()
    if context is None or num_replicas_in_sync() == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)


def all_replicas_true(flag):
    """A boolean scalar that is True on every replica iff `flag` is True on all.

    Used so that every replica takes the same branch of a conditional (skipping
    a non-finite step, refreshing an eigenvector).
    """
    bad = tf.cast(tf.logical_not(flag), tf.float32)
    return tf.equal(all_reduce_sum(bad), 0.0)


def apply_gradients_if(optimizer, grads, variables, should_apply):
    """Applies `grads` with `optimizer` only when `should_apply` is True.

    `should_apply` must be identical on every replica (see
    `all_replicas_true`). When it is False the optimizer does nothing: no
    weight, slot or iteration counter changes. Keras's optimizers all-reduce
    gradients with `merge_call` on some strategies (MirroredStrategy on CPUs),
    and a `merge_call` may not sit inside a conditional in replica context, so
    there the conditional is taken in cross-replica context, as Keras's own
    `LossScaleOptimizer` does.
    """

    def apply_fn():
        optimizer.apply(grads, variables)

    if (
        not tf.distribute.has_strategy()
        or tf.__internal__.distribute.strategy_supports_no_merge_call()
    ):
        tf.cond(should_apply, apply_fn, lambda: None)
        return

    def cross_replica_fn(distribution, grads, variables, should_apply):
        flag = distribution.experimental_local_results(should_apply)[0]

        def distributed_apply():
            distribution.extended.call_for_each_replica(
                optimizer.apply, args=(grads, variables)
            )

        tf.cond(flag, distributed_apply, lambda: None)

    tf.distribute.get_replica_context().merge_call(
        cross_replica_fn, args=(grads, variables, should_apply)
    )
