"""The kinds of model users train, for every registered method.

The battery (`test_contract.py`) trains small Sequential networks. Here
every method must also train a functional model with two inputs and two
outputs (a dict of losses with `loss_weights`, an activity regulariser that
adds a loss, an Embedding with sparse gradients, frozen layers) and a
recurrent network; SAM's step on the multi-output model is checked against
a `tf.GradientTape` oracle that does not use the library. SAM also trains a
`keras.applications` network (the other methods there cost too much CI
time; see the test).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_eigensam as ks
from keras_eigensam.methods import registry
from tests import tiny
from tests.methods.test_contract import _method_with_few_products
from tests.methods.test_contract import _state

NAMES = registry.names()

VOCABULARY, SEEN = 16, 10  # token ids in the data: 0 .. SEEN - 1
LOSSES = {"reg": "mse", "cls": "sparse_categorical_crossentropy"}
LOSS_WEIGHTS = {"reg": 0.5, "cls": 2.0}
ACTIVITY_L2 = 0.1


def _multi_io_net():
    """Features and token ids in; a regression and a classification out.

    The features pass a frozen BatchNormalization and a frozen Dense (their
    weights and statistics must not move); the tokens an Embedding (its
    gradient is `IndexedSlices`); the shared layer has an activity
    regulariser (a loss added by `add_loss` at each call).
    """
    init = keras.initializers.GlorotNormal
    features = keras.Input((5,), name="features")
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    frozen_bn = keras.layers.BatchNormalization(name="frozen_bn")
    frozen_dense = keras.layers.Dense(4, kernel_initializer=init(0), name="frozen_dense")
    h = frozen_dense(frozen_bn(features))
    frozen_bn.trainable = frozen_dense.trainable = False
    e = keras.layers.Embedding(
        VOCABULARY, 3, embeddings_initializer=keras.initializers.RandomNormal(seed=1)
    )(tokens)
    h = keras.layers.Concatenate()([h, keras.layers.GlobalAveragePooling1D()(e)])
    h = keras.layers.Dense(
        6, activation="tanh", kernel_initializer=init(2),
        activity_regularizer=keras.regularizers.L2(ACTIVITY_L2),
    )(h)
    outputs = {
        "reg": keras.layers.Dense(2, kernel_initializer=init(3), name="reg")(h),
        "cls": keras.layers.Dense(
            3, activation="softmax", kernel_initializer=init(4), name="cls"
        )(h),
    }
    net = keras.Model({"features": features, "tokens": tokens}, outputs)
    # Statistics away from their initial values, so that a write shows.
    frozen_bn.moving_mean.assign(np.linspace(-1.0, 1.0, 5))
    frozen_bn.moving_variance.assign(np.linspace(0.5, 2.0, 5))
    return net


def _multi_io_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "features": rng.normal(size=(n, 5)).astype("float32"),
        "tokens": rng.integers(0, SEEN, size=(n, 6)).astype("int32"),
    }
    y = {
        "reg": rng.normal(size=(n, 2)).astype("float32"),
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
    }
    return x, y


def _compile(model, optimizer=None):
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        loss=LOSSES, loss_weights=LOSS_WEIGHTS,
    )
    return model


def _embedding(net):
    return next(l for l in net.layers if isinstance(l, keras.layers.Embedding))


@pytest.mark.parametrize("name", NAMES)
def test_multi_io_model_with_frozen_layers_and_embedding_trains(name):
    x, y = _multi_io_data()
    net = _multi_io_net()
    model = _compile(ks.SharpnessAwareModel(net, method=_method_with_few_products(name)))
    frozen = [np.array(v) for v in net.non_trainable_variables]
    assert len(frozen) == 6  # BN: gamma, beta, mean, variance; Dense: kernel, bias
    before = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    for variable, b in zip(model.trainable_variables, before):
        assert np.abs(np.array(variable) - b).max() > 1e-5, variable.path
    for variable, b in zip(net.non_trainable_variables, frozen):
        np.testing.assert_array_equal(np.array(variable), b, err_msg=variable.path)
    # Rows of tokens absent from the data get no gradient (the Embedding's
    # sparse gradient is zero there), so no method moves them; except
    # X-SAM, whose descent adds the tracked eigenvector itself, and a
    # Lanczos estimate keeps a part of its random start vector there (the
    # Hessian's null space), shrinking as the estimate converges.
    embeddings = np.array(_embedding(net).embeddings)
    paths = [v.path for v in model.trainable_variables]
    initial = before[paths.index(_embedding(net).embeddings.path)]
    if name != "xsam":
        np.testing.assert_array_equal(embeddings[SEEN:], initial[SEEN:])
    assert np.abs(embeddings[:SEEN] - initial[:SEEN]).max(axis=1).min() > 0
    assert all(np.isfinite(s).all() for s in _state(model))


def _oracle_sam_step(net, x, y, rho, lr, loss_weights, with_activity=True):
    """One SAM step with plain SGD on the weighted total loss, by hand."""
    clone = keras.models.clone_model(net)
    clone.set_weights(net.get_weights())
    variables = clone.trainable_variables
    w0 = [tf.constant(np.array(v)) for v in variables]

    def gradient_at(point):
        for v, p in zip(variables, point):
            v.assign(p)
        with tf.GradientTape() as tape:
            out = clone(x, training=True)
            reg = tf.reduce_mean(tf.square(out["reg"] - y["reg"]))
            picked = tf.gather(out["cls"], y["cls"], axis=1, batch_dims=1)
            cls = -tf.reduce_mean(tf.math.log(picked))
            loss = loss_weights["reg"] * reg + loss_weights["cls"] * cls
            if with_activity:
                loss += tf.add_n(clone.losses)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    g = gradient_at(w0)
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(t * t) for t in g]))
    g_sam = gradient_at([w + rho * t / norm for w, t in zip(w0, g)])
    return [np.array(w - lr * t, dtype="float64") for w, t in zip(w0, g_sam)]


def test_multi_output_sam_step_matches_gradient_tape_oracle():
    """SAM's step on the dict-loss model: both passes use the total loss,
    the outputs' losses weighted by `loss_weights` plus the activity
    regulariser's loss, and the Embedding's sparse gradient."""
    x, y = _multi_io_data(n=16)
    net = _multi_io_net()
    model = _compile(
        ks.SharpnessAwareModel(net, method=ks.SAM(rho=0.5)), keras.optimizers.SGD(0.2)
    )
    expected = _oracle_sam_step(net, x, y, 0.5, 0.2, LOSS_WEIGHTS)
    model.train_on_batch(x, y)
    tiny.assert_weights_close(tiny.weights_of(model), expected)
    # The oracle tells the loss weights and the added loss apart.
    for other in (
        _oracle_sam_step(net, x, y, 0.5, 0.2, {"reg": 1.0, "cls": 1.0}),
        _oracle_sam_step(net, x, y, 0.5, 0.2, LOSS_WEIGHTS, with_activity=False),
    ):
        assert tiny.max_difference(other, expected) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_recurrent_network_trains(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4, 2)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    net = keras.Sequential([
        keras.Input((4, 2)),
        keras.layers.GRU(3, seed=0),
        keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotNormal(1)),
    ])
    # (Hessian-vector products through the GRU: second derivatives of a
    # while loop.)
    model = ks.SharpnessAwareModel(net, method=_method_with_few_products(name))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    before = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["skipped_steps"] == [0.0]
    for variable, b in zip(model.trainable_variables, before):
        assert np.abs(np.array(variable) - b).max() > 1e-5, variable.path
    assert all(np.isfinite(v).all() for v in tiny.weights_of(model) + _state(model))


@pytest.mark.parametrize("name", NAMES)
def test_keras_application_trains(name):
    """VGG16 (no top, 32×32 input) with every method: of the
    `keras.applications` networks measured (MobileNet, MobileNetV2/V3Small),
    the one that costs least to trace (SAM 3-9 s, ESAM 7-14 s, Eigen-SAM
    20-30 s with 5 products; the trackers here take 2)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, size=(8,))
    net = keras.Sequential([
        keras.applications.VGG16(
            weights=None, include_top=False, input_shape=(32, 32, 3), pooling="avg"
        ),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model = ks.SharpnessAwareModel(net, method=_method_with_few_products(name))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    before = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["skipped_steps"] == [0.0]
    assert tiny.max_difference(tiny.weights_of(model), before) > 1e-6
    assert all(np.isfinite(v).all() for v in tiny.weights_of(model) + _state(model))
