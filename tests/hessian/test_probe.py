"""Tests of `keras_eigensam.hessian.probe`: probe data and the loss on it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam.hessian import data
from keras_eigensam.hessian import probe
from tests import numpy_reference as ref
from tests import tiny


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
    ],
    ids=["sum_over_batch_size", "sum", "mean_with_sample_weight"],
)
def test_batch_loss_is_reduced_like_keras(loss):
    """Outside a replica context the operator's loss is Keras's own."""
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.standard_normal((5, 3)), tf.float32)
    labels = tf.constant([0, 2, 1, 1, 0])
    weights = tf.constant([1.0, 0.5, 0.0, 2.0, 1.0])
    for sample_weight in (None, weights):
        np.testing.assert_allclose(
            probe.mean_loss(loss, labels, logits, sample_weight),
            loss(labels, logits, sample_weight=sample_weight),
            rtol=1e-6,
            atol=0,
        )


@pytest.mark.parametrize("case", ["one_batch", "two_batches", "sample_weight_and_l2"])
def test_probe_loss_and_gradient_match_numpy(case):
    x, y = tiny.data()
    sample_weight, l2 = None, 0.0
    if case == "one_batch":
        data = (x, y)
    elif case == "two_batches":
        data = [(x[:10], y[:10]), (x[10:], y[10:])]  # weighted mean = full mean
    else:
        sample_weight, l2 = np.linspace(0.5, 2.0, len(x)).astype("float32"), 0.01
        data = (x, y, sample_weight)
    model = tiny.mlp(l2=l2)
    objective = probe.ProbeLoss(model, "mse", data)
    weights = tiny.weights_of(model)
    expected_loss, expected_grad = ref.mlp_loss_and_grad(
        weights, x.astype("float64"), y.astype("float64"), sample_weight, l2
    )
    loss, grads = objective.value_and_gradient()
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(objective.value(), expected_loss, rtol=1e-5)
    for g, e in zip(grads, expected_grad):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-6)
    # At other values, without touching the variables.
    shifted = [w + 0.1 for w in weights]
    expected_shifted, _ = ref.mlp_loss_and_grad(
        shifted, x.astype("float64"), y.astype("float64"), sample_weight, l2
    )
    values = [tf.constant(w, tf.float32) for w in shifted]
    np.testing.assert_allclose(objective.value(values), expected_shifted, rtol=1e-5)
    tiny.assert_weights_close(tiny.weights_of(model), weights, rtol=0, atol=0)


def test_probe_loss_writes_no_state_in_training_mode():
    x, y = tiny.data()
    model = tiny.bn_dropout_net(dropout=0.5)
    before = [np.array(v) for v in model.variables]
    objective = probe.ProbeLoss(model, "mse", (x, y), training=True)
    objective.value_and_gradient()
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, np.array(new))


def test_read_batches_keeps_read_batches_and_flat_vectors_round_trip():
    x, y = tiny.data()
    batches = data.read_batches(tf.data.Dataset.from_tensor_slices((x, y)).batch(6))
    assert [data.num_examples(b["x"]) for b in batches] == [6, 6, 4]
    assert data.read_batches(batches) == batches
    model = tiny.mlp()
    flat = probe.flatten(model.trainable_variables)
    assert flat.dtype == np.float64 and flat.size == 5 * 4 + 4 + 4 * 3 + 3
    back = probe.unflatten(flat, model.trainable_variables)
    tiny.assert_weights_close([np.asarray(t) for t in back], tiny.weights_of(model), rtol=0, atol=0)


def test_resolve_loss():
    model = tiny.mlp()
    with pytest.raises(ValueError, match=r"`loss` is None.*pass `loss=`"):
        probe.resolve_loss(None, model)
    model.compile(loss="mse")
    compiled = probe.resolve_loss(None, model)  # "mse" names a function
    assert compiled.fn is keras.losses.mean_squared_error
    assert compiled.reduction == "sum_over_batch_size"
    with pytest.raises(ValueError, match="one loss"):
        probe.resolve_loss({"a": "mse"}, model)
    with pytest.raises(TypeError, match="`loss` must be a Keras loss.*Received: loss=3"):
        probe.resolve_loss(3, model)
    with pytest.raises(ValueError, match="reduction=None"):
        probe.resolve_loss(keras.losses.MeanSquaredError(reduction=None), model)
    keras.config.set_floatx("float64")
    try:
        wide = tiny.mlp()
        loss = probe.resolve_loss(lambda t, p: keras.ops.mean((t - p) ** 2, -1), wide)
    finally:
        keras.config.set_floatx("float32")
    assert loss.dtype == "float64" and loss.reduction == "sum_over_batch_size"
