"""Tests of `keras_eigensam.backend.autodiff`."""

import keras
import numpy as np
import tensorflow as tf

from tests.hessian.conftest import float64  # noqa: F401
from tests.hessian.reference import classification_data
from tests.hessian.reference import exact_gradient
from tests.hessian.reference import flatten
from tests.hessian.reference import normalized_model


def test_exact_moments_keep_values_and_first_derivatives(float64):
    """Inside `exact_moments` the loss and its gradient are unchanged; only
    second derivatives change. Keras's function is restored on exit."""
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    from keras_eigensam.backend import autodiff

    model = normalized_model("batch")
    x, y = classification_data(12)
    gradient = exact_gradient(model, x, y, training=True)
    weights = [w.value for w in model.trainable_variables]
    original = keras_tf_nn._compute_moments
    plain = flatten(gradient.python_function(weights))
    with autodiff.exact_moments():
        with autodiff.exact_moments():  # nests
            assert keras_tf_nn._compute_moments is not original
        assert keras_tf_nn._compute_moments is not original
        exact = flatten(gradient.python_function(weights))
        inputs = tf.constant(np.random.default_rng(0).standard_normal((7, 5)))
        patched = keras.ops.moments(inputs, axes=[0])
    assert keras_tf_nn._compute_moments is original
    np.testing.assert_allclose(exact, plain, rtol=1e-12, atol=1e-15)
    for a, b in zip(patched, keras.ops.moments(inputs, axes=[0])):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
