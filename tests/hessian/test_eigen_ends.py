"""`CurvatureOperator.top_eigenpairs` at every end of the spectrum.

The operator is the Hessian of `½wᵀAw` (`quadratic_model_with(a)`), which is
exactly `A`; every result is compared with `numpy.linalg.eigh(A)` and every
residual with `‖Av − λv‖` computed in NumPy. Products are counted by
wrapping the operator's `matvec`, independently of `matvec_count`.
"""

import numpy as np
import pytest

from keras_eigensam import hessian
from tests.hessian import reference
from tests.hessian.reference import flatten
from tests.hessian.reference import pass_through
from tests.hessian.reference import quadratic_model_with


def spectrum_matrix(eigenvalues, seed=1):
    return reference.spectrum_matrix(eigenvalues, seed)


# One spectrum per end, chosen so that shifted power iteration converges in
# a few dozen products per run (ratios <= 0.7): "largest" has a dominant
# positive eigenvalue, "smallest" its mirror image, "magnitude" alternates
# signs. (3 wanted, 6 in all.) Power iteration costs ~25 ms a product here.
SPECTRA = {
    "largest": ([16.0, 2.0, -6.0, -10.0, -10.5, -11.0], [16.0, 2.0, -6.0]),
    "smallest": ([-16.0, -2.0, 6.0, 10.0, 10.5, 11.0], [-16.0, -2.0, 6.0]),
    "magnitude": ([-16.0, 6.0, -2.0, 0.6, 0.3, -0.1], [-16.0, 6.0, -2.0]),
}


def counted_operator(a):
    """A HessianOperator of ½wᵀAw whose `matvec` calls are counted."""
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    calls = []
    original = op.matvec

    def matvec(vectors):
        calls.append(1)
        return original(vectors)

    op.matvec = matvec  # what _flat_matvec and power iteration call
    return op, calls


def check_pairs(a, result, expected, eigval_rtol, cos_atol, residual_rtol):
    evals, evecs = np.linalg.eigh(a)
    eigvals, eigvecs = result  # unpacks as a pair
    assert isinstance(eigvals, np.ndarray) and eigvals.shape == (len(expected),)
    assert len(eigvecs) == len(expected)
    np.testing.assert_allclose(eigvals, expected, rtol=eigval_rtol, atol=0)
    residuals = []
    for lam, vector in zip(eigvals, eigvecs):
        v = flatten(vector)
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-10, atol=0)
        j = np.argmin(np.abs(evals - lam))
        np.testing.assert_allclose(abs(v @ evecs[:, j]), 1.0, rtol=0, atol=cos_atol)
        residuals.append(np.linalg.norm(a @ v - lam * v))
    assert result.residuals.shape == (len(expected),)
    np.testing.assert_allclose(result.residuals, residuals, rtol=residual_rtol, atol=1e-12)


@pytest.mark.parametrize("which", hessian.WHICH)
def test_lanczos_matches_eigh_at_every_end(float64, which):
    spectrum, expected = SPECTRA[which]
    a = spectrum_matrix(spectrum)
    op, calls = counted_operator(a)
    result = op.top_eigenpairs(k=3, method="lanczos", which=which, tol=1e-10, seed=0)
    check_pairs(a, result, expected, eigval_rtol=1e-10, cos_atol=1e-9, residual_rtol=1e-6)
    # The default budget max(30, 2k) is capped at the 6 parameters.
    assert result.num_matvecs == len(calls) <= 6


@pytest.mark.parametrize("which", hessian.WHICH)
def test_power_matches_eigh_at_every_end(float64, which):
    # tol = 1e-5 on the relative residual of each run: eigenvalues to ~1e-10
    # (their error is quadratic in the residual; measured <= 2e-9 absolute),
    # vectors to ~1e-5, so |cos| to ~1e-10.
    spectrum, expected = SPECTRA[which]
    a = spectrum_matrix(spectrum)
    op, calls = counted_operator(a)
    before = op.matvec_count
    result = op.top_eigenpairs(k=3, method="power", which=which, num_matvecs=400, tol=1e-5, seed=0)
    check_pairs(a, result, expected, eigval_rtol=1e-8, cos_atol=1e-9, residual_rtol=1e-6)
    assert result.num_matvecs == len(calls) == op.matvec_count - before
    assert result.num_matvecs <= 400 + 3  # plus one product per residual


def test_power_largest_with_a_dominant_negative_eigenvalue(float64):
    # Plain power iteration would return -9; "largest" must return 2.
    a = spectrum_matrix([-9.0, 2.0, -3.0, -4.0, -4.5, -5.0], seed=2)
    op, calls = counted_operator(a)
    result = op.top_eigenpairs(k=1, method="power", which="largest", num_matvecs=300, tol=1e-5, seed=0)
    check_pairs(a, result, [2.0], eigval_rtol=1e-8, cos_atol=1e-9, residual_rtol=1e-6)
    assert result.num_matvecs == len(calls) <= 300 + 1
    # And "magnitude" does return -9.
    magnitude = op.top_eigenpairs(k=1, method="power", which="magnitude", num_matvecs=300, tol=1e-5, seed=0)
    np.testing.assert_allclose(magnitude.eigenvalues, [-9.0], rtol=1e-8, atol=0)


@pytest.mark.parametrize("which", hessian.WHICH)
def test_lanczos_budget_and_residuals_of_unconverged_pairs(float64, which):
    # Four products of six: the pairs are not converged, so the residuals
    # (which Lanczos gets for free, b·|s_mj|) are a real check.
    spectrum, expected = SPECTRA[which]
    a = spectrum_matrix(spectrum)
    op, calls = counted_operator(a)
    before = op.matvec_count
    result = op.top_eigenpairs(k=3, method="lanczos", which=which, num_matvecs=4, tol=None, seed=0)
    assert result.num_matvecs == len(calls) == op.matvec_count - before == 4
    residuals = [
        np.linalg.norm(a @ flatten(v) - lam * flatten(v))
        for lam, v in zip(result.eigenvalues, result.eigenvectors)
    ]
    assert max(residuals) > 1e-3
    np.testing.assert_allclose(result.residuals, residuals, rtol=1e-6, atol=1e-12)
    # With a tolerance it never spends more than the budget.
    calls.clear()
    early = op.top_eigenpairs(k=3, method="lanczos", which=which, num_matvecs=5, tol=1e-3, seed=0)
    assert early.num_matvecs == len(calls) <= 5


def test_power_keeps_to_its_budget_or_refuses_it(float64):
    # "largest" and "smallest" need k + 1 runs (the dominant eigenvalue
    # first): with num_matvecs = k, each run got max(1, k // (k + 1)) = 1
    # product, k + 1 in all, over the documented budget of k (+ k residuals).
    a = spectrum_matrix(SPECTRA["largest"][0])
    op, calls = counted_operator(a)
    for which in ("largest", "smallest"):
        with pytest.raises(ValueError, match=rf"`num_matvecs`.*num_matvecs=3, k=3, which='{which}'"):
            op.top_eigenpairs(k=3, method="power", which=which, num_matvecs=3, tol=None)
    assert not calls
    exact = op.top_eigenpairs(k=3, method="power", which="largest", num_matvecs=4, tol=None)
    assert exact.num_matvecs == len(calls) == 4 + 3
    calls.clear()
    magnitude = op.top_eigenpairs(k=3, method="power", which="magnitude", num_matvecs=3, tol=None)
    assert magnitude.num_matvecs == len(calls) == 3 + 3
