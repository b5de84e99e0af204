"""Tests of `keras_eigensam.hessian.EmpiricalFisherOperator` against a dense
`Σ_i c_i g_i g_iᵀ` from per-example gradients (`tests/hessian/reference.py`)."""

import keras
import numpy as np
import pytest

from keras_eigensam import hessian
from tests.hessian.reference import LOSS_KINDS
from tests.hessian.reference import dense_matrix
from tests.hessian.reference import embedding_model
from tests.hessian.reference import flatten
from tests.hessian.reference import full_empirical_fisher
from tests.hessian.reference import make_loss
from tests.hessian.reference import random_vectors
from tests.hessian.reference import small_data
from tests.hessian.reference import small_mlp


@pytest.mark.parametrize("loss_kind", LOSS_KINDS)
def test_matrix_is_mean_outer_product_psd_and_of_rank_n(float64, loss_kind):
    model = small_mlp()  # 51 weights
    x, y = small_data(5, loss_kind)
    op = hessian.EmpiricalFisherOperator(model, make_loss(loss_kind), (x, y))
    f = dense_matrix(op)
    np.testing.assert_allclose(
        f, full_empirical_fisher(model, x, y, loss_kind), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(f, f.T, rtol=0, atol=1e-13)
    eigvals = np.linalg.eigvalsh(f)
    assert eigvals[0] >= -1e-12 * eigvals[-1]
    # Rank at most the number of examples (exactly 5 for generic data).
    assert np.linalg.matrix_rank(f, tol=1e-10 * eigvals[-1]) == 5


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_sample_weights_give_the_coefficients(float64, reduction):
    """`c_i = w_i/n`, `w_i` and `w_i/Σw` for the three reductions."""
    model = small_mlp()
    x, y = small_data(6, "sparse_ce")
    w = np.array([0.0, 1.0, 2.5, 0.5, 3.0, 1.0])
    op = hessian.EmpiricalFisherOperator(model, make_loss("sparse_ce", reduction), (x, y, w))
    expected = full_empirical_fisher(
        model, x, y, "sparse_ce", sample_weight=w, reduction=reduction
    )
    for seed in range(2):
        v = random_vectors(model.trainable_variables, seed=seed)
        np.testing.assert_allclose(
            flatten(op.matvec(v)), expected @ flatten(v), rtol=1e-10, atol=1e-12
        )
    # A zero weight removes its example: rank 5 for 6 examples.
    assert np.linalg.matrix_rank(expected, tol=1e-10 * np.abs(expected).max()) == 5


def test_trailing_loss_axes_are_averaged_per_example(float64):
    """A sequence output `(n, t, d)`: MSE values `(n, t)`, `ℓ_i` their mean."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2, 4)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)]
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2, 4)), rng.standard_normal((4, 2, 2))
    op = hessian.EmpiricalFisherOperator(model, make_loss("mse"), (x, y))
    # Per-example loss `mean over t and d`: the reference's "mse" with the
    # sequence flattened into the output axis.
    flat = keras.Sequential([keras.Input((8,)), keras.layers.Reshape((2, 4)), model,
                             keras.layers.Reshape((4,))])
    expected = full_empirical_fisher(flat, x.reshape(4, 8), y.reshape(4, 4), "mse")
    np.testing.assert_allclose(dense_matrix(op), expected, rtol=1e-10, atol=1e-12)


def test_a_loss_returning_a_scalar_raises():
    model = small_mlp()
    x, y = small_data(4, "mse")
    x, y = x.astype("float32"), y.astype("float32")

    def scalar_mse(y_true, y_pred):
        return keras.ops.mean((y_true - y_pred) ** 2)

    op = hessian.EmpiricalFisherOperator(model, scalar_mse, (x, y))
    with pytest.raises(ValueError, match="per-example losses.*returns a scalar"):
        op.matvec(random_vectors(model.trainable_variables))
    # The GGN and the Hessian only need the scalar.
    hessian.GGNOperator(model, scalar_mse, (x, y)).matvec(random_vectors(model.trainable_variables))


def test_embedding_model(float64):
    model, x, y = embedding_model()
    op = hessian.EmpiricalFisherOperator(model, make_loss("sparse_ce"), (x, y))
    np.testing.assert_allclose(
        dense_matrix(op), full_empirical_fisher(model, x, y, "sparse_ce"), rtol=1e-10, atol=1e-12
    )
