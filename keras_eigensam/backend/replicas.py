"""Running a per-replica computation from cross-replica context.

`keras_eigensam.backend.distribute` holds what runs *inside* a replica
context (all-reduces, conditionals); this module holds what the analysis
code (`HessianOperator`) needs from *outside* one: which strategy a model
lives in, splitting a batch into one shard per replica, and running a
function on every replica and reading its (all-reduced) result.
"""

import keras
import numpy as np
import tensorflow as tf


def in_replica_context():
    """Whether the caller runs inside `strategy.run` (a replica context)."""
    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


def strategy_of(model):
    """The strategy in scope, else the one `model` was built under."""
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    return getattr(model, "distribute_strategy", tf.distribute.get_strategy())


def is_distributed_dataset(data):
    """Whether `data` was distributed already (`experimental_distribute_dataset`)."""
    return isinstance(data, tf.distribute.DistributedDataset)


def split_batch(strategy, batch, batch_size):
    """Splits a batch (a structure of tensors) into contiguous shards.

    One shard per replica, of near-equal sizes (`np.array_split`).

    Raises:
        ValueError: if the batch has fewer examples than replicas.
    """
    num_replicas = strategy.num_replicas_in_sync
    if batch_size < num_replicas:
        raise ValueError(
            f"Every batch of `data` must have at least one example per "
            f"replica ({num_replicas}) under {type(strategy).__name__}. "
            f"Received: a batch of {batch_size} examples"
        )
    sizes = [len(s) for s in np.array_split(np.arange(batch_size), num_replicas)]
    bounds = np.cumsum([0] + sizes)

    def shard(context):
        r = context.replica_id_in_sync_group
        start, stop = int(bounds[r]), int(bounds[r + 1])
        return keras.tree.map_structure(lambda t: t[start:stop], batch)

    return strategy.experimental_distribute_values_from_function(shard)


def run_replicated(strategy, replica_fn):
    """A compiled `f(*args)` that runs `replica_fn` on every replica.

    `replica_fn` must return values identical on every replica (all-reduced);
    `f` returns the first replica's copy of them.
    """

    def run(*args):
        return strategy.run(replica_fn, args=args)

    compiled = tf.function(run, reduce_retracing=True)

    def call(*args):
        results = compiled(*args)
        local = strategy.experimental_local_results
        return keras.tree.map_structure(lambda t: local(t)[0], results)

    return call
