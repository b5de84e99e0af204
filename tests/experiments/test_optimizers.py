"""Tests of `keras_eigensam.experiments.optimizers`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam.experiments import optimizers
from keras_eigensam.experiments.config import TrainConfig


def test_cosine_schedule_with_and_without_warmup():
    # rtol: float32 arithmetic of the Keras schedule.
    cosine = optimizers.learning_rate_schedule(TrainConfig(epochs=4), steps_per_epoch=10)
    np.testing.assert_allclose(
        [float(cosine(s)) for s in (0, 20, 40)], [0.1, 0.05, 0.0], rtol=1e-5, atol=1e-7
    )
    warm = optimizers.learning_rate_schedule(
        TrainConfig(epochs=4, warmup_epochs=1), steps_per_epoch=10
    )
    np.testing.assert_allclose(
        [float(warm(s)) for s in (0, 5, 10, 25, 40)],
        [0.0, 0.05, 0.1, 0.05, 0.0],
        rtol=1e-5,
        atol=1e-7,
    )
    constant = optimizers.learning_rate_schedule(
        TrainConfig(epochs=4, schedule="constant", warmup_epochs=1),
        steps_per_epoch=10,
    )
    np.testing.assert_allclose(
        [float(constant(s)) for s in (0, 5, 10, 40)],
        [0.0, 0.05, 0.1, 0.1],
        rtol=1e-5,
        atol=1e-7,
    )
    assert optimizers.learning_rate_schedule(
        TrainConfig(schedule="constant"), steps_per_epoch=10
    ) == pytest.approx(0.1)


def test_weight_decay_is_coupled_for_sgd_and_decoupled_on_kernels_for_adamw():
    assert optimizers.architecture_kwargs(TrainConfig(weight_decay=1e-3)) == {
        "weight_decay": 1e-3
    }
    adamw = TrainConfig(optimizer="adamw", weight_decay=0.1, schedule="constant")
    assert optimizers.architecture_kwargs(adamw) == {"weight_decay": 0.0}
    optimizer = optimizers.make_optimizer(adamw, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    layer = keras.layers.Dense(2, bias_initializer="ones")
    layer.build((None, 3))
    kernel, bias = np.array(layer.kernel), np.array(layer.bias)
    # With zero gradients AdamW's step is the decay alone: w ← w (1 − lr·wd).
    optimizer.apply(
        [tf.zeros_like(kernel), tf.zeros_like(bias)], layer.trainable_variables
    )
    np.testing.assert_allclose(
        np.array(layer.kernel), kernel * (1 - 1e-3 * 0.1), rtol=1e-6
    )
    np.testing.assert_allclose(np.array(layer.bias), bias, rtol=0, atol=0)
    sgd = optimizers.make_optimizer(TrainConfig(momentum=0.8), steps_per_epoch=10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.8
