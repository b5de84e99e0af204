"""Tests of `keras_eigensam.hessian.HessianOperator` against exact references."""

from math import erf
from math import sqrt

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import hessian
from keras_eigensam import linalg
from tests.hessian.reference import LOSS
from tests.hessian.reference import MODES
from tests.hessian.reference import classification_data
from tests.hessian.reference import flatten
from tests.hessian.reference import full_hessian
from tests.hessian.reference import logits_loss
from tests.hessian.reference import mlp
from tests.hessian.reference import pass_through
from tests.hessian.reference import quadratic_model
from tests.hessian.reference import random_vectors
from tests.hessian.reference import unflatten


@pytest.mark.parametrize("mode", MODES)
def test_matvec_of_quadratic_form_is_a_times_v(float64, mode):
    model, a, data = quadratic_model()
    op = hessian.HessianOperator(model, pass_through, data, hvp_mode=mode)
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = rng.standard_normal(a.shape[0])
        (hv,) = op.matvec([v])
        np.testing.assert_allclose(hv.numpy(), a @ v, rtol=1e-12, atol=1e-12)
    eigvals, eigvecs = op.top_eigenpairs(k=3, method="lanczos", seed=0)
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(a)[::-1][:3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "activation,batchnorm", [("tanh", False), ("relu", True)], ids=["tanh", "relu_bn"]
)
def test_eigenpairs_trace_and_density_match_full_hessian(float64, activation, batchnorm):
    model = mlp(activation, batchnorm)
    x, y = classification_data()
    h = full_hessian(model, x, y)
    evals, evecs = np.linalg.eigh(h)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=False)
    assert op.num_parameters == h.shape[0]

    # The operator is the Hessian: one product against the dense matrix.
    v = np.random.default_rng(0).standard_normal(h.shape[0])
    hv = flatten(op.matvec(unflatten(v, model.trainable_variables)))
    np.testing.assert_allclose(hv, h @ v, rtol=1e-9, atol=1e-10)

    # Power iteration: the eigenvalue of largest magnitude.
    top = np.argmax(np.abs(evals))
    lam, (vec,) = op.top_eigenpairs(k=1, method="power", which="magnitude", num_matvecs=300, tol=1e-6, seed=0)
    np.testing.assert_allclose(lam[0], evals[top], rtol=1e-3, atol=0)
    np.testing.assert_allclose(float(linalg.global_norm(vec)), 1.0, rtol=1e-10, atol=0)
    magnitudes = np.sort(np.abs(evals))[::-1]
    if magnitudes[1] / magnitudes[0] < 0.95:  # the gap allows a vector check
        assert abs(flatten(vec) @ evecs[:, top]) >= 0.999

    # Lanczos: the five largest eigenvalues.
    lams, vecs = op.top_eigenpairs(k=5, method="lanczos", num_matvecs=40, seed=0)
    np.testing.assert_allclose(lams, evals[::-1][:5], rtol=1e-3, atol=0)
    assert abs(flatten(vecs[0]) @ evecs[:, -1]) >= 0.999
    for u in vecs:  # Rayleigh quotients are the returned eigenvalues
        np.testing.assert_allclose(float(linalg.global_norm(u)), 1.0, rtol=1e-10, atol=0)

    # Hutchinson: within 5 % at 200 probes (seed 0), and within 4 standard
    # errors of the Rademacher estimator. That standard error is itself
    # 4.7 % of the trace for both models, so 5 % does not hold for every seed.
    trace, _ = op.trace(num_matvecs=200, seed=0)
    exact = np.trace(h)
    std_err = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 200)
    np.testing.assert_allclose(trace, exact, rtol=0.05, atol=0)
    assert abs(trace - exact) <= 4 * std_err

    # Density: integrates to 1, and its distribution matches the eigenvalues'
    # (broadened by the same sigma) in Kolmogorov-Smirnov distance.
    sigma = 0.01 * (evals[-1] - evals[0])
    grid, density = op.density(num_matvecs=200, num_probes=4, sigma=sigma, seed=0)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9, atol=0)
    assert np.all(density >= 0)
    assert grid[0] <= evals[0] and grid[-1] >= evals[-1]
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    normal_cdf = np.vectorize(lambda t: 0.5 * (1 + erf(t / sqrt(2))))
    exact_cdf = normal_cdf((grid[:, None] - evals[None, :]) / sigma).mean(axis=1)
    assert np.max(np.abs(cdf - exact_cdf)) < 0.05


def test_dataset_hvp_is_the_hessian_of_the_mean_loss(float64):
    """Batches of 7 and 5 examples give the Hessian of the 12-example mean."""
    model = mlp("tanh")
    x, y = classification_data(12)
    single = hessian.HessianOperator(model, logits_loss(), (x, y))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    batched = hessian.HessianOperator(model, logits_loss(), dataset)
    assert batched.num_examples == 12
    keras_loss = float(logits_loss()(y, model(x))) + float(sum(model.losses))
    np.testing.assert_allclose(batched.loss_value(), keras_loss, rtol=1e-10, atol=0)
    v = random_vectors(model.trainable_variables)
    np.testing.assert_allclose(
        flatten(batched.matvec(v)), flatten(single.matvec(v)), rtol=1e-10, atol=1e-12
    )
    # Sample weights scale the data term; the L2 term (2 · 1e-2 on one
    # kernel) is not weighted. Keras rounds the L2 factor to float32, hence
    # the atol.
    weighted = hessian.HessianOperator(model, logits_loss(), (x, y, 3 * np.ones(12)))
    reg = [tf.zeros_like(t) for t in v]
    reg[2] = 2e-2 * v[2]
    expected = 3 * (flatten(single.matvec(v)) - flatten(reg)) + flatten(reg)
    np.testing.assert_allclose(flatten(weighted.matvec(v)), expected, rtol=1e-10, atol=1e-8)


def test_mirrored_strategy_matches_one_device(mirrored_strategy):
    x, y = classification_data(13)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)  # 7 + 6
    single = mlp("tanh", batchnorm=True)
    with mirrored_strategy.scope():
        mirrored = mlp("tanh", batchnorm=True)
    mirrored.set_weights(single.get_weights())
    op_single = hessian.HessianOperator(single, logits_loss(), dataset)
    op_mirrored = hessian.HessianOperator(mirrored, logits_loss(), dataset)

    v = random_vectors(single.trainable_variables)
    np.testing.assert_allclose(
        flatten(op_mirrored.matvec(v)), flatten(op_single.matvec(v)), rtol=1e-5, atol=1e-6
    )
    lam_single, _ = op_single.top_eigenpairs(k=1, method="lanczos", num_matvecs=12, seed=0)
    lam_mirrored, _ = op_mirrored.top_eigenpairs(k=1, method="lanczos", num_matvecs=12, seed=0)
    np.testing.assert_allclose(lam_mirrored, lam_single, rtol=1e-5, atol=0)


def test_model_state_and_mode_are_unchanged():
    model = mlp("relu", batchnorm=True, dropout=0.3)
    x, y = classification_data()
    before = [np.array(v) for v in model.variables]
    trainable = [layer.trainable for layer in model.layers]
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=True)
    v = random_vectors(model.trainable_variables)
    hv = flatten(op.matvec(v))
    # Dropout masks come from the unchanged seed state: the same operator at
    # every product.
    np.testing.assert_allclose(flatten(op.matvec(v)), hv, rtol=1e-6, atol=1e-7)
    op.top_eigenpairs(k=1, method="power", which="magnitude", num_matvecs=3, tol=None, seed=0)
    op.trace(num_matvecs=2, seed=0)
    op.density(num_matvecs=3, num_probes=1, seed=0)
    inference = hessian.HessianOperator(model, logits_loss(), (x, y), training=False)
    assert not np.allclose(flatten(inference.matvec(v)), hv, rtol=1e-3)
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, np.array(new))
    assert [layer.trainable for layer in model.layers] == trainable
    assert model.trainable


@pytest.fixture
def small_op():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = (np.ones((4, 3), "float32"), np.zeros((4,), "int32"))
    return hessian.HessianOperator(model, logits_loss(), data)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda op: op.top_eigenpairs(k=0), ValueError, "`k` must be an integer >= 1"),
        (lambda op: op.top_eigenpairs(k=9), ValueError, r"`k` must be at most .*Received: k=9"),
        (
            lambda op: op.top_eigenpairs(k=3, method="lanczos", num_matvecs=2),
            ValueError,
            "num_matvecs=2, k=3",
        ),
        (lambda op: op.top_eigenpairs(method="arnoldi"), ValueError, "method='arnoldi'"),
        (lambda op: op.top_eigenpairs(tol=-1.0), ValueError, "`tol`"),
        (lambda op: op.matvec([np.ones((3, 2))]), ValueError, "`vectors` must be a list of 2"),
        (
            lambda op: op.matvec([np.ones((2, 3)), np.ones(2)]),
            ValueError,
            r"`vectors\[0\]` must have the shape",
        ),
        (lambda op: op.matvec(np.ones(8)), ValueError, "`vectors` must be a list"),
        (lambda op: op.top_eigenpairs(initial=[np.ones(3)]), ValueError, "`initial`"),
        (lambda op: op.trace(num_matvecs=0), ValueError, "num_matvecs=0"),
        (lambda op: op.density(num_matvecs=0), ValueError, "num_matvecs=0"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(small_op, call, error, match):
    with pytest.raises(error, match=match):
        call(small_op)


def test_bad_constructor_arguments_raise_naming_the_argument():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = (np.ones((4, 3), "float32"), np.zeros((4,), "int32"))
    with pytest.raises(ValueError, match="hvp_mode='exact'"):
        hessian.HessianOperator(model, LOSS, data, hvp_mode="exact")
    with pytest.raises(TypeError, match="`training` must be a bool"):
        hessian.HessianOperator(model, LOSS, data, training="yes")
    with pytest.raises(TypeError, match="`loss`"):
        hessian.HessianOperator(model, 3, data)
    with pytest.raises(TypeError, match="`model`"):
        hessian.HessianOperator("resnet", LOSS, data)
    empty = tf.data.Dataset.from_tensor_slices(data).batch(2).take(0)
    with pytest.raises(ValueError, match="`data` must not be empty.*0 batches"):
        hessian.HessianOperator(model, LOSS, empty)
    with pytest.raises(ValueError, match="needs targets"):
        hessian.HessianOperator(model, LOSS, [(data[0], None)])
    with pytest.raises(TypeError, match="`data`"):
        hessian.HessianOperator(model, LOSS, data[0])
    model.trainable = False
    with pytest.raises(ValueError, match="`model` has no trainable weights"):
        hessian.HessianOperator(model, LOSS, data)
