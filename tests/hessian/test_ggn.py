"""Tests of `keras_eigensam.hessian.GGNOperator` against dense references.

The references (`tests/hessian/reference.py`) build `Jᵀ H J` from a
first-order Jacobian and the loss Hessian in the outputs in closed form; the
operator's matrix is built column by column through `to_scipy`.
"""

import keras
import numpy as np
import pytest

from keras_eigensam import hessian
from tests.hessian.reference import LOSS_KINDS
from tests.hessian.reference import dense_matrix
from tests.hessian.reference import embedding_model
from tests.hessian.reference import flatten
from tests.hessian.reference import full_ggn
from tests.hessian.reference import full_hessian
from tests.hessian.reference import make_loss
from tests.hessian.reference import normalized_model
from tests.hessian.reference import random_vectors
from tests.hessian.reference import small_data
from tests.hessian.reference import small_mlp


@pytest.mark.parametrize("loss_kind", LOSS_KINDS)
def test_matrix_is_jt_h_j_and_positive_semidefinite(float64, loss_kind):
    model = small_mlp()
    x, y = small_data(8, loss_kind)
    op = hessian.GGNOperator(model, make_loss(loss_kind), (x, y))
    g = dense_matrix(op)
    expected = full_ggn(model, x, y, loss_kind)
    np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, g.T, rtol=0, atol=1e-13)
    eigvals = np.linalg.eigvalsh(g)
    assert eigvals[0] >= -1e-12 * eigvals[-1]
    # The loss Hessian in the outputs has rank n·d (MSE) or n·(d−1) (CE).
    assert np.linalg.matrix_rank(g, tol=1e-10 * eigvals[-1]) <= 8 * 3


def test_equals_the_hessian_for_a_model_linear_in_its_weights(float64):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x, y = small_data(7, "mse")
    op = hessian.GGNOperator(model, make_loss("mse"), (x, y))
    # Finite differences of exact gradients: errors about 1e-9.
    h = full_hessian(model, x, y, loss=make_loss("mse"))
    np.testing.assert_allclose(dense_matrix(op), h, rtol=1e-7, atol=1e-8)


def test_differs_from_the_hessian_of_a_nonlinear_model(float64):
    """The dropped term `Σ ∂L/∂f · ∇²f` is not small here: the tests above
    would notice a GGN that silently returned the Hessian."""
    model = small_mlp()
    x, y = small_data(8, "sparse_ce")
    g = dense_matrix(hessian.GGNOperator(model, make_loss("sparse_ce"), (x, y)))
    h = full_hessian(model, x, y, loss=make_loss("sparse_ce"))
    assert np.abs(g - h).max() > 1e-2 * np.abs(h).max()
    assert np.linalg.eigvalsh(h)[0] < -1e-6  # the Hessian is indefinite


@pytest.mark.parametrize(
    "loss_kind,reduction", [("sparse_ce", "sum_over_batch_size"), ("mse", "sum")]
)
def test_sample_weights_scale_each_example(float64, loss_kind, reduction):
    """`c_i · h_i` blocks, `c_i = w_i/n` or `w_i` (the Fisher tests check
    every reduction; here it is `mean_loss` differentiated twice)."""
    model = small_mlp()
    x, y = small_data(6, loss_kind)
    w = np.array([0.0, 1.0, 2.5, 0.5, 3.0, 1.0])
    op = hessian.GGNOperator(model, make_loss(loss_kind, reduction), (x, y, w))
    expected = full_ggn(model, x, y, loss_kind, sample_weight=w, reduction=reduction)
    for v in random_vectors(model.trainable_variables, seed=0), random_vectors(
        model.trainable_variables, seed=1
    ):
        np.testing.assert_allclose(flatten(op.matvec(v)), expected @ flatten(v), rtol=1e-10, atol=1e-12)


def test_model_losses_are_not_part_of_it(float64):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1)),
            keras.layers.Dense(3),
        ]
    )
    x, y = small_data(6, "sparse_ce")
    op = hessian.GGNOperator(model, make_loss("sparse_ce"), (x, y))
    np.testing.assert_allclose(
        dense_matrix(op), full_ggn(model, x, y, "sparse_ce"), rtol=1e-10, atol=1e-12
    )


def test_batchnorm_in_training_mode_uses_batch_statistics(float64):
    model = normalized_model("batch")
    x, y = small_data(8, "sparse_ce")
    x = np.concatenate([x, x[:, :2]], axis=1)  # the model takes 6 features
    trained = dense_matrix(hessian.GGNOperator(model, make_loss("sparse_ce"), (x, y), training=True))
    np.testing.assert_allclose(
        trained, full_ggn(model, x, y, "sparse_ce", training=True), rtol=1e-9, atol=1e-12
    )
    inference = dense_matrix(hessian.GGNOperator(model, make_loss("sparse_ce"), (x, y)))
    np.testing.assert_allclose(
        inference, full_ggn(model, x, y, "sparse_ce"), rtol=1e-9, atol=1e-12
    )
    assert np.abs(trained - inference).max() > 1e-2 * np.abs(inference).max()


def test_embedding_model(float64):
    """The embedding's gradients are sparse (`IndexedSlices`)."""
    model, x, y = embedding_model()
    op = hessian.GGNOperator(model, make_loss("sparse_ce"), (x, y))
    np.testing.assert_allclose(
        dense_matrix(op), full_ggn(model, x, y, "sparse_ce"), rtol=1e-10, atol=1e-12
    )
