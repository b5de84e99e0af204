"""TensorFlow automatic differentiation for second derivatives.

What the Hessian code needs from TensorFlow itself: densifying
`tf.IndexedSlices`, and a context in which normalization layers compute
moments whose second derivatives are exact.
"""

import contextlib
import threading
import warnings

import tensorflow as tf

try:  # Keras's TensorFlow backend; private, hence guarded.
    from keras.src.backend.tensorflow import nn as _keras_tf_nn
except ImportError:  # pragma: no cover - depends on the Keras version
    _keras_tf_nn = None


def densify(values):
    """`values` (a list) with every `tf.IndexedSlices` made a dense tensor.

    Embedding gradients, and the JVPs of their gradients, come back as
    `IndexedSlices` whose indices repeat; the vector algebra of
    `keras_eigensam.linalg` and the outer differentiation need dense tensors.
    `None` entries are kept.
    """
    return [
        tf.convert_to_tensor(value) if isinstance(value, tf.IndexedSlices) else value
        for value in values
    ]


def _exact_moments(x, axes, keepdims):
    """`tf.nn.moments` without its `stop_gradient` on the mean.

    The same forward values (the same operations), but the variance
    `mean((x − mean(x))²)` depends on `x` through the mean too, so its second
    derivatives are exact.
    """
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axes)
        variance = tf.squeeze(variance, axes)
    return mean, variance


_lock = threading.Lock()
_depth = 0
_original = None
_warned = False


@contextlib.contextmanager
def exact_moments():
    """Context in which Keras computes exact moments, for second derivatives.

    Keras's BatchNormalization (training mode), LayerNormalization and
    GroupNormalization compute their statistics with `tf.nn.moments`
    (through `keras.src.backend.tensorflow.nn._compute_moments`), which stops
    the gradient through the mean inside the variance:

    ```
    variance = mean((x − stop_gradient(mean(x)))²)
    ```

    First derivatives are unchanged by the stop (the derivative of the
    variance with respect to the mean is `−2·mean(x − mean(x)) = 0`), second
    derivatives are not. While this context is active (on any thread),
    `_compute_moments` is replaced by the same computation without the stop;
    forward values and first derivatives are the same, and Hessians recorded
    (or traced) inside the context are exact. Contexts nest; the original is
    restored when the outermost one exits. Synchronized BatchNormalization
    computes `E[x²] − E[x]²`, which is already exact.

    If the installed Keras has no `_compute_moments`, a `RuntimeWarning`
    says so (once) and nothing is replaced.
    """
    global _depth, _original, _warned
    with _lock:
        patchable = _keras_tf_nn is not None and hasattr(
            _keras_tf_nn, "_compute_moments"
        )
        if patchable:
            if _depth == 0:
                _original = _keras_tf_nn._compute_moments
                _keras_tf_nn._compute_moments = _exact_moments
            _depth += 1
        elif not _warned:
            _warned = True
            warnings.warn(
                "keras_eigensam could not find Keras's "
                "`keras.src.backend.tensorflow.nn._compute_moments`; Hessians "
                "of models with BatchNormalization (training mode), "
                "LayerNormalization or GroupNormalization may be inexact with "
                "this Keras version.",
                RuntimeWarning,
                stacklevel=3,
            )
    try:
        yield
    finally:
        if patchable:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _keras_tf_nn._compute_moments = _original
                    _original = None
