"""`CurvatureOperator.to_scipy` against the known matrix of ½wᵀAw."""

import keras
import numpy as np
from scipy.sparse.linalg import LinearOperator
from scipy.sparse.linalg import eigsh

from keras_eigensam import hessian
from tests.hessian.reference import pass_through
from tests.hessian.reference import quadratic_model_with


def known_matrix(n=10, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigenvalues = [9.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -12.0][:n]
    return (q * np.asarray(eigenvalues)) @ q.T


def test_eigsh_matches_eigh_and_native_lanczos(float64):
    a = known_matrix()
    evals, evecs = np.linalg.eigh(a)
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    linear = op.to_scipy()
    # Count what ARPACK asks for by wrapping the operator in a counting one.
    calls = []

    def counted(v):
        calls.append(1)
        return linear @ v

    before = op.matvec_count
    wrapped = LinearOperator(linear.shape, matvec=counted, dtype=np.float64)
    values, vectors = eigsh(wrapped, k=3, which="LA", v0=np.ones(10), tol=1e-12)
    assert op.matvec_count - before == len(calls) > 0
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    np.testing.assert_allclose(values, [9.0, 6.0, 4.0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(values, evals[::-1][:3], rtol=1e-10, atol=0)
    for j in range(3):
        np.testing.assert_allclose(abs(vectors[:, j] @ evecs[:, -1 - j]), 1.0, rtol=0, atol=1e-9)
    native, _ = op.top_eigenpairs(k=3, tol=1e-10, seed=0)
    np.testing.assert_allclose(native, values, rtol=1e-10, atol=0)
    # "LA" skipped -12 although it has the largest |λ|; "SA" finds it.
    smallest = eigsh(linear, k=1, which="SA", v0=np.ones(10), return_eigenvectors=False)
    np.testing.assert_allclose(smallest, [-12.0], rtol=1e-10, atol=0)


def test_linear_operator_shape_dtype_and_products(float64):
    a = known_matrix()
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    linear = op.to_scipy()
    assert linear.shape == (10, 10) and linear.dtype == np.float64
    rng = np.random.default_rng(1)
    v = rng.standard_normal(10)
    av = linear @ v
    assert op.matvec_count == 1
    assert isinstance(av, np.ndarray) and av.dtype == np.float64 and av.shape == (10,)
    np.testing.assert_allclose(av, a @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear.matvec(v.reshape(10, 1)).reshape(-1), a @ v, rtol=1e-12, atol=1e-12)
    assert op.matvec_count == 2
    # A matrix of three columns: matmat, one product per column.
    m = rng.standard_normal((10, 3))
    am = linear @ m
    assert am.shape == (10, 3) and op.matvec_count == 5
    np.testing.assert_allclose(am, a @ m, rtol=1e-12, atol=1e-12)
    # Symmetric: the adjoint is the operator.
    np.testing.assert_allclose(linear.rmatvec(v), a @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear.H @ v, a @ v, rtol=1e-12, atol=1e-12)


def test_flat_order_is_that_of_the_trainable_variables():
    # Two variables: the flat vector is kernel (C order) then bias. The
    # Hessian of MSE of a linear layer is 2/(N·d) (X̃ᵀX̃ ⊗ I_d), X̃ = [x, 1].
    x = np.random.default_rng(2).standard_normal((8, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    op = hessian.HessianOperator(model, "mse", (x, np.zeros((8, 2), "float32")))
    xt = np.concatenate([x, np.ones((8, 1))], axis=1).astype(np.float64)
    h = 2 / (8 * 2) * np.kron(xt.T @ xt, np.eye(2))
    linear = op.to_scipy()
    assert linear.shape == (8, 8) and linear.dtype == np.float64
    dense = linear @ np.eye(8)
    assert dense.dtype == np.float64
    # float32 weights: products are computed in float32.
    np.testing.assert_allclose(dense, h, rtol=1e-5, atol=1e-6)
