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


def local_device_count(strategy):
    """The number of devices `strategy` places replicas on in this process
    (1 for the default strategy)."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return 1
    try:
        return len(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError):  # no such notion: one device
        return 1


def uses_merge_call():
    """Whether the current strategy synchronises replicas with `merge_call`
    (MirroredStrategy on CPUs and with some GPU set-ups)."""
    return tf.distribute.has_strategy() and not (
        tf.__internal__.distribute.strategy_supports_no_merge_call()
    )


def replica_cond(pred, fn, args=(), default=None):
    """`fn(*args)` on every replica iff `pred`, else `default`, in replica context.

    `pred` is a boolean scalar tensor, or a Python bool known while tracing
    (then no conditional is built).

    `pred` must be identical on every replica (see `all_replicas_true`), and
    `fn` may contain collectives (`all_reduce_*`, an optimizer update) and
    variable writes. Per-replica tensors must be passed through `args`, not
    captured by `fn`: on strategies that synchronise with `merge_call`
    (MirroredStrategy on CPUs and with some GPU set-ups) a collective may not
    sit inside a conditional in replica context, so there the conditional is
    taken in cross-replica context and `fn` is run for each replica with that
    replica's `args`, as Keras's `LossScaleOptimizer` does.

    `fn` returns `None`, or a structure of tensors shaped like `default`. On
    merge-call strategies the result of the first replica is returned to
    every replica, so a returned value must be identical on all replicas
    (computed from all-reduced values), as an eigenvector estimate is.
    """

    if isinstance(pred, bool):  # known while tracing: no conditional
        if not pred:
            return default
        result = fn(*args)
        return None if default is None else result
    if not uses_merge_call():
        if default is None:
            tf.cond(pred, lambda: _no_output(fn(*args)), lambda: None)
            return None
        return tf.cond(pred, lambda: fn(*args), lambda: default)

    def cross_replica_fn(distribution, pred, default, *args):
        flag = distribution.experimental_local_results(pred)[0]

        def for_each_replica():
            results = distribution.extended.call_for_each_replica(fn, args=args)
            if default is None:
                return None
            return tf.nest.map_structure(
                lambda v: distribution.experimental_local_results(v)[0], results
            )

        if default is None:
            tf.cond(flag, for_each_replica, lambda: None)
            return None
        first = tf.nest.map_structure(
            lambda v: distribution.experimental_local_results(v)[0], default
        )
        return tf.cond(flag, for_each_replica, lambda: first)

    return tf.distribute.get_replica_context().merge_call(
        cross_replica_fn, args=(pred, default) + tuple(args)
    )


def _no_output(result):
    del result


def apply_gradients_if(optimizer, grads, variables, should_apply):
    """Applies `grads` with `optimizer` only when `should_apply` is True.

    `should_apply` must be identical on every replica (see
    `all_replicas_true`). When it is False the optimizer does nothing: no
    weight, slot or iteration counter changes.
    """
    replica_cond(should_apply, optimizer.apply, (grads, variables))


def assign_sub_if(variables, deltas, should_apply):
    """`variable ← variable − delta` for each pair, only when `should_apply`.

    For updates of trainable (mirrored) weights outside the optimizer, such
    as a decoupled update applied after it. `deltas` and `should_apply`
    must be identical on every replica (all-reduced); the update goes
    through the strategy as an optimizer's does, so every copy of a
    mirrored variable receives it.
    """

    def update(deltas):
        def apply_all(distribution, deltas):
            for variable, delta in zip(variables, deltas):
                distribution.extended.update(
                    getattr(variable, "value", variable),
                    _assign_sub,
                    args=(delta,),
                    group=False,
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply_all, tf.distribute.get_strategy(), deltas
        )

    replica_cond(should_apply, update, (list(deltas),))


def _assign_sub(variable, delta):
    return variable.assign_sub(tf.cast(delta, variable.dtype))


# ---------------------------------------------------------------------------
# A workaround for Keras's use of `tf.distribute`.

#: The Keras versions `fix_multi_worker_reduce` patches, `[first, end)` as
#: (major, minor): from the oldest Keras this package supports (setup.cfg)
#: to the newest checked to still need it (3.15.1, by the two-worker test of
#: tests/test_scripts.py). On a newer Keras nothing is patched; if that test
#: then fails, the bug is still there and `end` moves up.
KERAS_VERSIONS_WITH_REDUCE_BUG = ((3, 8), (3, 16))


def fix_multi_worker_reduce(strategy, keras_version=None):
    """Lets Keras 3's `fit` run under `MultiWorkerMirroredStrategy`.

    Keras (keras-team/keras#20585) calls `strategy.reduce` on nested
    structures (the first data batch, in `fit`'s symbolic build) and with
    `axis=0` on scalar metrics; `MultiWorkerMirroredStrategy.reduce` accepts
    neither (`MirroredStrategy`'s does). On the Keras versions in
    `KERAS_VERSIONS_WITH_REDUCE_BUG`, this instance's `reduce` is made to
    reduce each leaf, over replicas only for scalars, as `MirroredStrategy`
    does; on others the strategy is left alone. Every worker makes the same
    calls in the same order, so the collectives pair up.

    Args:
        strategy: A `tf.distribute.MultiWorkerMirroredStrategy`.
        keras_version: The Keras version to decide for, as a string.
            Defaults to `None` (the installed one).

    Returns:
        `strategy`, patched or not.
    """
    import re

    import keras

    version = keras.version() if keras_version is None else keras_version
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    first, end = KERAS_VERSIONS_WITH_REDUCE_BUG
    if not first <= major_minor < end:
        return strategy
    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def reduce_one(leaf):
            rank = strategy.experimental_local_results(leaf)[0].shape.rank
            return reduce(reduce_op, leaf, axis=axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)

    strategy.reduce = reduce_each
    return strategy
