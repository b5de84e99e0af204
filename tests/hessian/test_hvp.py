"""Tests of `keras_eigensam.hessian.hvp`: products against exact references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import hessian
from keras_eigensam import linalg
from tests.hessian.reference import MODES
from tests.hessian.reference import classification_data
from tests.hessian.reference import embedding_model
from tests.hessian.reference import exact_gradient
from tests.hessian.reference import fd_hvp
from tests.hessian.reference import flatten
from tests.hessian.reference import full_hessian
from tests.hessian.reference import logits_loss
from tests.hessian.reference import mlp
from tests.hessian.reference import model_loss_fn
from tests.hessian.reference import normalized_model
from tests.hessian.reference import quadratic_model
from tests.hessian.reference import random_vectors

# Normalization layers whose moments come from tf.nn.moments, and the mode.
NORMALIZED = [("batch", True), ("batch", False), ("layer", False), ("group", True)]


def test_functional_hvp_on_plain_tf_variable_and_persistent_tape(float64):
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    w = tf.Variable([0.5, -1.0], dtype=tf.float64)
    loss_fn = lambda: 0.5 * tf.tensordot(w, tf.linalg.matvec(a, w), 1)  # noqa: E731
    v = [tf.constant([1.0, 2.0], tf.float64)]
    expected = a @ np.array([1.0, 2.0])
    for mode in MODES:
        once = hessian.hvp(loss_fn, [w], v, mode)[0]
        reused = hessian.make_hvp(loss_fn, [w], mode)(v)[0]
        np.testing.assert_allclose(once, expected, rtol=1e-12, atol=0)
        np.testing.assert_allclose(reused, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_embedding_hessian_matches_finite_differences(float64, mode):
    model, x, y = embedding_model()
    variables = model.trainable_variables
    h = full_hessian(model, x, y)
    evals = np.linalg.eigh(h)[0]
    v = random_vectors(variables)
    expected = h @ flatten(v)
    tolerance = dict(rtol=1e-7, atol=1e-7 * np.max(np.abs(expected)))
    loss_fn = model_loss_fn(model, x, y)
    # Every HVP path returns dense tensors equal to H·v.
    products = {
        "hvp": hessian.hvp(loss_fn, variables, v, mode),
        "make_hvp": hessian.make_hvp(loss_fn, variables, mode)(v),
        "hvp_traced": tf.function(lambda v: hessian.hvp(loss_fn, variables, v, mode))(v),
    }
    op = hessian.HessianOperator(model, logits_loss(), (x, y), hvp_mode=mode)
    products["operator"] = op.matvec(v)
    for name, product in products.items():
        assert all(isinstance(t, tf.Tensor) for t in product), name
        np.testing.assert_allclose(flatten(product), expected, err_msg=name, **tolerance)
    # The eigen-solvers see the same operator.
    lam, _ = op.top_eigenpairs(k=1, method="power", which="magnitude", num_matvecs=300, tol=1e-8, seed=0)
    np.testing.assert_allclose(lam[0], evals[np.argmax(np.abs(evals))], rtol=1e-6, atol=0)
    lams, _ = op.top_eigenpairs(k=2, method="lanczos", seed=0)
    np.testing.assert_allclose(lams, evals[::-1][:2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind,training", NORMALIZED, ids=["bn_training", "bn_inference", "ln", "gn"]
)
def test_normalization_hessian_matches_finite_differences(float64, kind, training, mode):
    """`tf.nn.moments` stops the gradient through the mean inside the
    variance; the Hessian must be that of the function the layer computes,
    i.e. the finite difference of its (exact) training-mode gradient."""
    model = normalized_model(kind)
    variables = model.trainable_variables
    x, y = classification_data(12)
    gradient = exact_gradient(model, x, y, training)
    weights = [w.value for w in variables]
    loss_fn = model_loss_fn(model, x, y, training)
    # `make_hvp` traced once in a function, as the train step's eigenvector
    # refresh calls it (traced for the first vector, reused for the second).
    traced = tf.function(lambda v: hessian.make_hvp(loss_fn, variables, mode)(v))
    for seed in range(2):
        v = random_vectors(variables, seed)
        expected = fd_hvp(gradient, weights, v)
        # Central differences in float64 with step 1e-5: error about 1e-9
        # of the largest entry; the stop_gradient errs by 9-22 %.
        tolerance = dict(rtol=1e-6, atol=1e-6 * np.max(np.abs(expected)))
        for name, product in {
            "hvp": hessian.hvp(loss_fn, variables, v, mode),
            "make_hvp": hessian.make_hvp(loss_fn, variables, mode)(v),
            "make_hvp_traced": traced(v),
        }.items():
            np.testing.assert_allclose(flatten(product), expected, err_msg=name, **tolerance)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=training, hvp_mode=mode)
    np.testing.assert_allclose(flatten(op.matvec(v)), expected, **tolerance)
    h = full_hessian(model, x, y, training)
    lams, _ = op.top_eigenpairs(k=2, method="lanczos", seed=0)
    np.testing.assert_allclose(lams, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "activation,batchnorm,dropout,training",
    [
        ("tanh", False, 0.0, False),
        ("relu", True, 0.0, False),
        ("tanh", True, 0.0, True),
        ("relu", True, 0.3, True),
    ],
    ids=["tanh", "relu_bn", "tanh_bn_training", "relu_bn_dropout_training"],
)
def test_modes_agree_on_every_model(activation, batchnorm, dropout, training):
    model = mlp(activation, batchnorm, dropout)
    x, y = classification_data()
    loss_fn = model_loss_fn(model, x, y, training)
    v = random_vectors(model.trainable_variables)
    results = [
        flatten(hessian.hvp(loss_fn, model.trainable_variables, v, mode)) for mode in MODES
    ]
    scale = np.max(np.abs(results[0]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-5 * scale)


def test_modes_agree_on_quadratic_form():
    model, _, (x, y) = quadratic_model()
    variables = model.trainable_variables
    loss_fn = lambda: keras.ops.mean(model(x))  # noqa: E731
    v = random_vectors(variables)
    fob, ror = (flatten(hessian.hvp(loss_fn, variables, v, mode)) for mode in MODES)
    np.testing.assert_allclose(ror, fob, rtol=1e-5, atol=1e-6)


def test_hvp_compiles_with_xla():
    model = mlp("tanh", batchnorm=True)
    x, y = classification_data()
    variables = model.trainable_variables
    loss_fn = model_loss_fn(model, x, y)
    v = random_vectors(variables)
    reference = flatten(hessian.hvp(loss_fn, variables, v, "forward_over_backward"))
    tolerance = dict(rtol=1e-5, atol=1e-5 * np.max(np.abs(reference)))
    for mode in MODES:
        compiled = tf.function(
            lambda v, mode=mode: hessian.hvp(loss_fn, variables, v, mode), jit_compile=True
        )
        np.testing.assert_allclose(flatten(compiled(v)), reference, **tolerance)
    # Two products from one recorded pass (persistent tape), under XLA.
    persistent = tf.function(
        lambda v: [hessian.make_hvp(loss_fn, variables)(u) for u in (v, linalg.scale(v, 2.0))],
        jit_compile=True,
    )
    once, twice = persistent(v)
    np.testing.assert_allclose(flatten(once), reference, **tolerance)
    np.testing.assert_allclose(flatten(twice), 2 * reference, **tolerance)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), jit_compile=True)
    np.testing.assert_allclose(flatten(op.matvec(v)), reference, **tolerance)


@pytest.mark.parametrize("size", [7, 100])
def test_microbatched_hvp_is_the_whole_batchs_product(float64, size):
    """24 examples in micro-batches of 7 (3 + 7 + 7 + 7: a smaller first
    one) and of 100 (one, the whole batch), with a weight
    regulariser and BatchNormalization in inference mode: H·v of the mean
    loss, against central differences of exact gradients, in both modes,
    traced and under XLA."""
    model = mlp("tanh", batchnorm=True)
    x, y = classification_data(n=24)
    variables = model.trainable_variables
    v = random_vectors(variables)
    expected = fd_hvp(exact_gradient(model, x, y), [w.value for w in variables], v)
    tolerance = dict(rtol=1e-6, atol=1e-6 * np.max(np.abs(expected)))

    def loss_fn(part):
        return model_loss_fn(model, *part)()

    for mode in MODES:
        matvec = hessian.make_microbatched_hvp(loss_fn, (x, y), variables, size, mode)
        np.testing.assert_allclose(flatten(matvec(v)), expected, err_msg=mode, **tolerance)
        traced = tf.function(
            lambda v, mode=mode: hessian.make_microbatched_hvp(
                loss_fn, (tf.constant(x), tf.constant(y)), variables, size, mode
            )(v),
            jit_compile=mode == "reverse_over_reverse",
        )
        np.testing.assert_allclose(flatten(traced(v)), expected, err_msg=mode, **tolerance)


def test_bad_functional_arguments_raise_naming_the_argument():
    w = tf.Variable([1.0, 2.0])
    loss_fn = lambda: tf.reduce_sum(w**2)  # noqa: E731
    with pytest.raises(ValueError, match="mode='exact'"):
        hessian.hvp(loss_fn, [w], [tf.ones(2)], mode="exact")
    with pytest.raises(ValueError, match=r"`vectors\[0\]` must have the shape"):
        hessian.hvp(loss_fn, [w], [tf.ones(3)])
    with pytest.raises(ValueError, match="one tensor per variable"):
        hessian.hvp(loss_fn, [w], [tf.ones(2), tf.ones(2)])
    with pytest.raises(ValueError, match="scalar loss"):
        hessian.hvp(lambda: w**2, [w], [tf.ones(2)])
    with pytest.raises(ValueError, match="mode='exact'"):
        hessian.make_hvp(loss_fn, [w], mode="exact")
    with pytest.raises(ValueError, match="`variables` must not be empty"):
        hessian.make_hvp(loss_fn, [])
    with pytest.raises(
        ValueError, match="`microbatch_size` must be an integer >= 1. Received: microbatch_size=0"
    ):
        hessian.make_microbatched_hvp(lambda part: loss_fn(), (tf.ones(2),), [w], 0)
