"""Tests of `keras_eigensam.hessian.trace` (Hutchinson's estimator)."""

import numpy as np
import pytest

from keras_eigensam import hessian
from tests.hessian.reference import pass_through
from tests.hessian.reference import quadratic_model_with


def test_trace_of_diagonal_hessian_is_exact_with_rademacher_probes(float64):
    # zᵀAz = Σ A_jj z_j² = tr(A) for every ±1 probe z when A is diagonal.
    a = np.diag([3.0, -1.0, 0.5, 2.0, 7.0, -0.25])
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    for num_samples, seed in [(1, 0), (3, 1)]:
        np.testing.assert_allclose(
            op.trace(num_matvecs=num_samples, seed=seed).value, np.trace(a), rtol=1e-12, atol=0
        )
    assert op.matvec_count == 4


def test_trace_is_within_the_standard_error_of_hutchinson(float64):
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a = (q * np.linspace(0.5, 4.0, 10)) @ q.T  # trace 22.5, off-diagonal mass
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    num_samples = 400
    # Variance of one Rademacher probe: 2 (‖A‖_F² − Σ A_jj²).
    std_err = np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / num_samples)
    assert 5 * std_err < 0.2 * np.trace(a)  # the bound excludes 0 and ±20 % errors
    for seed in range(3):
        estimate, _ = op.trace(num_matvecs=num_samples, seed=seed)
        assert abs(estimate - np.trace(a)) <= 5 * std_err, (seed, estimate)


def test_free_function_on_a_dense_matrix_and_its_variance():
    rng = np.random.default_rng(3)
    b = rng.standard_normal((30, 30))
    a = b @ b.T / 30 + np.eye(30)
    num_samples = 500
    std_err = np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / num_samples)
    estimate, _ = hessian.hutchinson_trace(lambda v: a @ v, 30, num_samples, seed=0)
    assert abs(estimate - np.trace(a)) <= 5 * std_err < 0.2 * np.trace(a)
    # The same seed gives the same probes.
    assert estimate == hessian.hutchinson_trace(lambda v: a @ v, 30, num_samples, seed=0).value


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_matvecs=0), "num_matvecs=0"), (dict(num_parameters=0), "num_parameters=0")],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    arguments = dict(num_parameters=3, num_matvecs=2) | kwargs
    with pytest.raises(ValueError, match=match):
        hessian.hutchinson_trace(lambda v: v, **arguments)
