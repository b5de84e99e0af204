"""Stateless random draws keyed on tensors (the TensorFlow-specific part).

Keras's `keras.random` takes Python ints or a `SeedGenerator` (a variable
that each draw advances). Rules that draw per step need draws that are a
pure function of `(seed, step)`: identical on every replica, replayed
exactly after a restart, with no state to commit, and the same with and
without XLA. TensorFlow's stateless generators are not the last (XLA
implements Philox with another counter layout), so the draws here come
from an integer hash, exact on every backend.
"""

import numpy as np
import tensorflow as tf

_MASK = 0xFFFFFFFF


def _hash(x):
    """A 32-bit integer mixer (xorshift-multiply, constants below 2**31 so
    that products stay inside int64) on int64 tensors holding uint32s."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = (x * 0x7FEB352D) & _MASK
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = (x * 0x2C1B3C6D) & _MASK
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def stateless_uniform(shape, seed, step):
    """Uniform [0, 1) float32 values of `shape`, a function of the Python
    int `seed` and the integer scalar tensor `step` only."""
    key = _hash(tf.constant(seed & _MASK, tf.int64))
    key = _hash((key + tf.cast(step, tf.int64) * 0x9E3779B9) & _MASK)
    size = int(np.prod(shape))
    bits = _hash((tf.range(size, dtype=tf.int64) * 0x61C88647 + key) & _MASK)
    # 24 bits: exactly representable in float32.
    values = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) / float(1 << 24)
    return tf.reshape(values, shape)
