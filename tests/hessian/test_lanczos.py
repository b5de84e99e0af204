"""Tests of `keras_eigensam.hessian.lanczos` on dense matrices (NumPy `eigh`)."""

import numpy as np
import pytest

from keras_eigensam import hessian
from keras_eigensam.hessian.lanczos import lanczos
from tests.hessian.reference import counting
from tests.hessian.reference import spectrum_matrix


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
        # Four dimensions give four eigenpairs, not five (was: a shape (4,)
        # result for k=5, unlike the documented (k,)).
        (dict(k=5, num_matvecs=6), r"`k` must be at most .*Received: k=5, n=4"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian.lanczos_eigenpairs(lambda v: v, np.ones(4), **kwargs)


# Both ends well separated from a bulk in [0, 1]: the largest-magnitude
# eigenvalue is positive (40), the next one negative (-30).
ENDS = np.concatenate([[-30.0, -12.0, -6.0], np.linspace(0.0, 1.0, 54), [10.0, 20.0, 40.0]])
EXPECTED = {
    "largest": [40.0, 20.0, 10.0],
    "smallest": [-30.0, -12.0, -6.0],
    "magnitude": [40.0, -30.0, 20.0],
}


def reference_order(evals, which):
    """Indices of `evals` (from `eigh`) at the `which` end, as documented."""
    key = {"largest": -evals, "smallest": evals, "magnitude": -np.abs(evals)}[which]
    return np.argsort(key, kind="stable")


@pytest.mark.parametrize("which", hessian.WHICH)
def test_every_end_of_the_spectrum_matches_eigh_on_all_steps(which):
    # A large negative eigenvalue (-10) beside positive ones; no ± ties in
    # magnitude. n steps: the Ritz pairs are exact eigenpairs.
    a = spectrum_matrix([-10.0, 8.0, 6.0, -4.0, 3.0, -2.0, 1.0, 0.5, 0.0, 0.25, 2.5, -7.0])
    evals, evecs = np.linalg.eigh(a)
    order = reference_order(evals, which)[:3]
    rng = np.random.default_rng(3)
    eigvals, vectors, residuals = hessian.lanczos_eigenpairs(
        lambda v: a @ v, rng.standard_normal(12), k=3, num_matvecs=12, rng=rng, which=which
    )
    expected = {
        "largest": [8.0, 6.0, 3.0],
        "smallest": [-10.0, -7.0, -4.0],
        "magnitude": [-10.0, 8.0, -7.0],
    }[which]
    np.testing.assert_allclose(evals[order], expected, rtol=0, atol=1e-12)  # the reference
    np.testing.assert_allclose(eigvals, expected, rtol=0, atol=1e-10)
    assert vectors.shape == (3, 12)
    for vector, j in zip(vectors, order):
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-12, atol=0)
        np.testing.assert_allclose(abs(vector @ evecs[:, j]), 1.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(residuals, 0.0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("which", hessian.WHICH)
def test_every_end_converges_in_fewer_steps_than_the_dimension(which):
    a = spectrum_matrix(ENDS, seed=5)
    evals, evecs = np.linalg.eigh(a)
    order = reference_order(evals, which)[:3]
    rng = np.random.default_rng(0)
    eigvals, vectors, _ = hessian.lanczos_eigenpairs(
        lambda v: a @ v, rng.standard_normal(60), k=3, num_matvecs=20, rng=rng, which=which
    )
    np.testing.assert_allclose(eigvals, EXPECTED[which], rtol=1e-10, atol=0)
    for vector, j in zip(vectors, order):
        np.testing.assert_allclose(abs(vector @ evecs[:, j]), 1.0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("which", hessian.WHICH)
def test_residuals_are_those_of_the_returned_pairs(which):
    # Eight steps on n = 60: the pairs are not converged, so the residuals
    # (1e-4 to 0.2) are a real check of b·|s_mj| against ‖Av − θv‖.
    a = spectrum_matrix(ENDS, seed=5)
    rng = np.random.default_rng(0)
    eigvals, vectors, residuals = hessian.lanczos_eigenpairs(
        lambda v: a @ v, rng.standard_normal(60), k=3, num_matvecs=8, rng=rng, which=which
    )
    direct = [np.linalg.norm(a @ v - lam * v) for lam, v in zip(eigvals, vectors)]
    assert residuals.dtype == np.float64 and residuals.shape == (3,)
    assert min(direct) > 1e-5  # not converged yet
    np.testing.assert_allclose(residuals, direct, rtol=1e-6, atol=0)
    # The Ritz values are Rayleigh quotients of the Ritz vectors.
    np.testing.assert_allclose(
        eigvals, [v @ a @ v for v in vectors], rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("k, tol", [(1, 1e-6), (3, 1e-6), (3, 1e-9)])
def test_tol_stops_at_the_first_step_that_meets_it(k, tol):
    # Top eigenvalues 100, 50, 25 over a bulk in [0, 1]: Lanczos converges
    # in a handful of steps, far fewer than num_matvecs = 40.
    a = spectrum_matrix(np.concatenate([[100.0, 50.0, 25.0], np.linspace(0, 1, 57)]), seed=4)
    evals = np.linalg.eigvalsh(a)
    start = np.random.default_rng(0).standard_normal(60)

    def run(num_matvecs, tol):
        matvec, calls = counting(a)
        result = hessian.lanczos_eigenpairs(
            matvec, start, k=k, num_matvecs=num_matvecs, rng=np.random.default_rng(1), tol=tol
        )
        return result, len(calls)

    (eigvals, vectors, residuals), steps = run(40, tol)
    assert k <= steps < 40
    np.testing.assert_allclose(eigvals, evals[::-1][:k], rtol=10 * tol, atol=0)
    # The tolerance is met (A is PSD, so max|θ| is the largest Ritz value),
    # in the residuals returned and in those computed directly.
    assert np.all(residuals <= tol * eigvals[0])
    direct = [np.linalg.norm(a @ v - lam * v) for lam, v in zip(eigvals, vectors)]
    assert np.all(np.asarray(direct) <= 1.01 * tol * eigvals[0] + 1e-12)
    # ... and not one step earlier: the same iteration cut at steps − 1
    # misses it, and cut at `steps` gives the same pairs.
    (early_vals, _, early_residuals), early_steps = run(steps - 1, None)
    assert early_steps == steps - 1
    assert np.any(early_residuals > tol * early_vals[0])
    (same_vals, _, same_residuals), same_steps = run(steps, None)
    assert same_steps == steps
    np.testing.assert_allclose(same_vals, eigvals, rtol=1e-14, atol=0)
    np.testing.assert_allclose(same_residuals, residuals, rtol=1e-10, atol=0)


def test_without_tol_every_step_is_spent():
    a = spectrum_matrix(np.concatenate([[100.0, 50.0, 25.0], np.linspace(0, 1, 57)]), seed=4)
    matvec, calls = counting(a)
    hessian.lanczos_eigenpairs(
        matvec, np.ones(60), k=2, num_matvecs=25, rng=np.random.default_rng(0), tol=None
    )
    assert len(calls) == 25
    # Capped at the dimension.
    matvec, calls = counting(a[:10, :10])
    hessian.lanczos_eigenpairs(matvec, np.ones(10), k=2, num_matvecs=25, tol=None)
    assert len(calls) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(which="middle"), r"`which` must be one of .*Received: which='middle'"),
        (dict(which="LA"), r"`which`.*Received: which='LA'"),
        (dict(tol=0.0), r"`tol` must be a float > 0.*Received: tol=0.0"),
        (dict(tol=-1e-3), r"`tol`.*Received: tol=-0.001"),
    ],
)
def test_bad_which_and_tol_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian.lanczos_eigenpairs(lambda v: v, np.ones(4), k=1, num_matvecs=3, **kwargs)
