"""Models, data and readers shared by the callback tests."""

import csv
import glob
import os

import keras
import numpy as np
import tensorflow as tf

import keras_eigensam as ks
from tests import tiny

METRICS = ("top_eigenvalue", "eigen_alignment", "grad_eigen_cosine")


def compiled_mlp():
    model = tiny.mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def sam_model(net=None, refresh_every=2):
    model = ks.SharpnessAwareModel(
        net or tiny.mlp(),
        method=ks.SAM(rho=0.1, track_eigen=True, refresh_every=refresh_every, seed=0),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def data64():
    x, y = tiny.data()
    return x, y, x.astype("float64"), y.astype("float64")


def event_scalars(log_dir):
    """`{tag: [(step, value), …]}` from every event file under `log_dir`."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.*"), recursive=True)):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.dtype.kind not in "fiu" or array.size != 1:
                        continue  # not a scalar (e.g. Keras's model config)
                    number = float(array)
                else:
                    number = float(value.simple_value)
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def running_means(values):
    return list(np.cumsum(values) / np.arange(1, len(values) + 1))


def keras_sharpness_ascent(model, x, y, rho, training):
    """`L(w + ρĝ) − L(w)` written with Keras directly (weights assigned and
    restored), with the model in the given mode."""
    loss = keras.losses.MeanSquaredError()
    weights = [np.array(v) for v in model.trainable_variables]

    def value():
        return float(loss(y, model(x, training=training)))

    with tf.GradientTape() as tape:
        base = loss(y, model(x, training=training))
    grads = tape.gradient(base, model.trainable_variables)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
    for variable, w, g in zip(model.trainable_variables, weights, grads):
        variable.assign(w + rho * np.asarray(g) / (norm + 1e-12))
    perturbed = value()
    for variable, w in zip(model.trainable_variables, weights):
        variable.assign(w)
    return perturbed - float(base)
