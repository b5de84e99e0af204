"""Tiny models and data shared by the tests."""

import keras
import numpy as np
import tensorflow as tf

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
