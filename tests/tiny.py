"""Tiny models and data shared by the tests."""

import keras
import numpy as np
import tensorflow as tf

from keras_eigensam import normalization
from keras_eigensam.methods.context import StepContext

RTOL, ATOL = 1e-5, 1e-6  # float32 Keras step vs float64 NumPy reference


def data(n=16, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, k)).astype("float32")
    return x, y


def mlp(d=5, hidden=4, k=3, seed=1, l2=0.0):
    """`tanh(x W1 + b1) W2 + b2`, the network of `numpy_reference`."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(
                hidden,
                activation="tanh",
                kernel_initializer=keras.initializers.GlorotNormal(seed),
                bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
                kernel_regularizer=regularizer,
            ),
            keras.layers.Dense(
                k,
                kernel_initializer=keras.initializers.GlorotNormal(seed + 2),
                bias_initializer=keras.initializers.RandomNormal(seed=seed + 3),
                kernel_regularizer=regularizer,
            ),
        ]
    )


def bn_dropout_net(seed=7, dropout=0.0):
    layers = [
        keras.Input((5,)),
        keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotNormal(seed)),
        keras.layers.BatchNormalization(momentum=0.5),
        keras.layers.Activation("relu"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=seed))
    layers.append(
        keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotNormal(seed + 1))
    )
    return keras.Sequential(layers)


def weights_of(model):
    return [np.array(v, dtype="float64") for v in model.trainable_variables]


def assert_weights_close(actual, expected, rtol=RTOL, atol=ATOL):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def max_difference(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def fit_steps(model, x, y, batch_size, steps, **kwargs):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).take(steps)
    return model.fit(ds, epochs=1, verbose=0, **kwargs)


def eager_context(model, grads, optimizer, step=0):
    """A `StepContext` of one eager step of `model` (a `SharpnessAwareModel`)
    at its current weights with first-pass gradients `grads`, loss 1, one
    replica and no second pass, Hessian or collective: what a method's
    perturbation and metrics read, without a train step."""
    variables = model.trainable_variables
    return StepContext(
        step=tf.constant(step, "int64"),
        loss=tf.constant(1.0),
        variables=variables,
        weights=[v.value for v in variables],
        grads=[tf.constant(g, "float32") for g in grads],
        is_normalization=normalization.normalization_flags(model, variables),
        optimizer=optimizer,
        num_replicas=1,
        gradient_at=None,
        with_hessian=None,
        all_reduce_mean=None,
        cond=None,
    )


def assert_trains_keeping_float32_state(history, variables):
    """Under a mixed policy: the logged loss is finite and falls, and every
    variable in `variables` (weights, slots, method state) is float32 (or an
    integer counter) and finite."""
    loss = history.history["loss"]
    assert np.isfinite(loss).all(), loss
    assert loss[-1] < loss[0], loss
    for variable in variables:
        assert variable.dtype in ("float32", "int64", "int32"), variable.path
        assert np.isfinite(np.array(variable)).all(), variable.path
