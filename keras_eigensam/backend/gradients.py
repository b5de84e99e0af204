"""Reverse-mode gradients for the train step (TensorFlow tapes)."""

import tensorflow as tf


def value_and_gradient(fn, sources, watch=False):
    """Runs `fn()` on a tape and differentiates its first output.

    `fn` returns `(value, aux)`: `value` is the scalar to differentiate,
    `aux` anything else the caller needs back (it is not differentiated).
    `sources` are variables (or tensors, with `watch=True`). Returns
    `(value, aux, grads)`, with zeros for unconnected sources and
    `IndexedSlices` (embedding gradients) densified.
    """
    with tf.GradientTape() as tape:
        if watch:
            tape.watch(sources)
        value, aux = fn()
    grads = tape.gradient(
        value, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value, aux, dense(grads)


def dense(grads):
    """Densifies `IndexedSlices` (embedding gradients) for the vector math."""
    return [
        tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
        for g in grads
    ]
