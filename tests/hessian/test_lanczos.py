"""Tests of `keras_eigensam.hessian.lanczos` on dense matrices (NumPy `eigh`)."""

import numpy as np
import pytest

from keras_eigensam import hessian
from keras_eigensam.hessian.lanczos import lanczos


def spectrum_matrix(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * np.asarray(eigenvalues, float)) @ q.T


def test_top_eigenpairs_match_eigh():
    a = spectrum_matrix([5.0, 4.0, -7.0, 2.0, 1.0, 0.5, 0.25, 0.0, -0.5, -1.0])
    evals, evecs = np.linalg.eigh(a)
    rng = np.random.default_rng(1)
    eigvals, vectors, _ = hessian.lanczos_eigenpairs(
        lambda v: a @ v, rng.standard_normal(10), k=3, num_matvecs=10, rng=rng
    )
    # The largest algebraic eigenvalues (not -7, the largest in magnitude).
    np.testing.assert_allclose(eigvals, [5.0, 4.0, 2.0], rtol=1e-12, atol=1e-12)
    for vector, j in zip(vectors, [-1, -2, -3]):
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-12)
        np.testing.assert_allclose(abs(vector @ evecs[:, j]), 1.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(evals[::-1][:3], eigvals, rtol=1e-12)


def test_basis_stays_orthonormal_through_breakdown():
    # Three distinct eigenvalues: the Krylov space is exhausted after three
    # steps; Lanczos restarts orthogonally and still returns n steps whose
    # tridiagonal matrix has the whole spectrum.
    a = spectrum_matrix([3.0] * 3 + [1.0] * 3 + [-2.0] * 2)
    rng = np.random.default_rng(2)
    basis, alpha, beta, _ = lanczos(lambda v: a @ v, rng.standard_normal(8), 8, rng)
    assert basis.shape == (8, 8) and alpha.shape == (8,) and beta.shape == (7,)
    np.testing.assert_allclose(basis @ basis.T, np.eye(8), rtol=0, atol=1e-12)
    assert np.sum(beta == 0.0) >= 1  # at least one restart
    t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(t), np.linalg.eigvalsh(a), atol=1e-10)


def test_steps_are_capped_at_the_dimension():
    a = np.diag([1.0, 2.0, 3.0])
    basis, alpha, _, _ = lanczos(lambda v: a @ v, np.ones(3), num_steps=10)
    assert basis.shape == (3, 3) and alpha.shape == (3,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0, num_matvecs=3), "`k` must be an integer >= 1"),
        (dict(k=3, num_matvecs=2), "num_matvecs=2, k=3"),
        (dict(k=1, num_matvecs=0), "num_matvecs=0"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian.lanczos_eigenpairs(lambda v: v, np.ones(4), **kwargs)
