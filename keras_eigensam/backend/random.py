"""Stateless random draws keyed on tensors (the TensorFlow-specific part).

Keras's `keras.random` takes Python ints or a `SeedGenerator` (a variable
that each draw advances). Rules that draw per step need draws that are a
pure function of `(seed, step)`: identical on every replica, replayed
exactly after a restart, and with no state to commit.
"""

import tensorflow as tf


def stateless_uniform(shape, seed, step):
    """Uniform [0, 1) float32 values of `shape`, a function of the Python
    int `seed` and the integer scalar tensor `step` only."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.stateless_uniform(shape, seed=key, dtype=tf.float32)
