"""Tests of `keras_eigensam.hessian.trace`: Hutchinson, Hutch++ and the diagonal."""

import keras
import numpy as np
import pytest

from keras_eigensam import hessian
from tests.hessian.reference import counting
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


def decaying_psd(n=60, seed=0):
    """A PSD matrix with eigenvalues 1/j² (j = 1..n), in a random basis."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q / np.arange(1, n + 1) ** 2) @ q.T


def hutchinson_variance(a, m):
    """Variance of the Rademacher Hutchinson estimate from m probes."""
    return 2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / m


def test_hutchpp_spends_num_matvecs_and_is_within_its_standard_errors():
    a = decaying_psd()
    for seed in range(10):
        matvec, calls = counting(a)
        value, std_error = hessian.hutchpp_trace(matvec, 60, num_matvecs=60, seed=seed)
        assert len(calls) == 60
        assert 0 < std_error and abs(value - np.trace(a)) <= 5 * std_error, (seed, value)


def test_hutchpp_is_unbiased_and_has_far_lower_variance_than_hutchinson():
    # 200 seeds at an equal budget of 30 products on the 1/j² spectrum.
    # Measured: variance ratio Hutch++/Hutchinson = 0.0017 (0.0015-0.0020
    # on blocks of 50 seeds); Hutchinson's variance 0.071 against 0.074 in
    # theory. The bound 0.02 leaves a factor of ~10.
    a = decaying_psd()
    exact = np.trace(a)
    hpp = np.array([hessian.hutchpp_trace(lambda v: a @ v, 60, 30, seed=s).value for s in range(200)])
    hut = np.array([hessian.hutchinson_trace(lambda v: a @ v, 60, 30, seed=s).value for s in range(200)])
    ratio = hpp.var(ddof=1) / hut.var(ddof=1)
    print(f"variance ratio Hutch++/Hutchinson at 30 products: {ratio:.4f}")
    assert ratio < 0.02
    # Unbiased: the mean over seeds is within 5 standard errors of the mean.
    for samples in (hpp, hut):
        assert abs(samples.mean() - exact) <= 5 * samples.std(ddof=1) / np.sqrt(200)
    # Hutchinson's empirical variance is its theoretical one.
    np.testing.assert_allclose(hut.var(ddof=1), hutchinson_variance(a, 30), rtol=0.3, atol=0)


def test_hutchpp_is_exact_for_a_matrix_of_low_rank():
    # Rank 5 <= s = 10: the sketch spans the range, so t1 is the trace and
    # the projected remainder is zero.
    b = np.random.default_rng(4).standard_normal((40, 5))
    a = b @ b.T
    value, std_error = hessian.hutchpp_trace(lambda v: a @ v, 40, num_matvecs=30, seed=0)
    np.testing.assert_allclose(value, np.trace(a), rtol=1e-10, atol=0)
    np.testing.assert_allclose(std_error, 0.0, rtol=0, atol=1e-9 * np.trace(a))


def test_hutchinson_std_error_agrees_with_the_theoretical_one():
    # Measured over 200 seeds at m = 100: 0.57-1.55 times the theory (mean
    # 0.97); seeds 0-9: 0.81-1.07.
    a = decaying_psd()
    theory = np.sqrt(hutchinson_variance(a, 100))
    errors = [hessian.hutchinson_trace(lambda v: a @ v, 60, 100, seed=s).std_error for s in range(10)]
    assert all(0.5 * theory <= e <= 2 * theory for e in errors), (errors, theory)


def test_std_error_is_nan_from_one_sample():
    a = decaying_psd(10)
    assert np.isnan(hessian.hutchinson_trace(lambda v: a @ v, 10, 1, seed=0).std_error)
    # Hutch++ with 3 products has one Hutchinson sample left.
    assert np.isnan(hessian.hutchpp_trace(lambda v: a @ v, 10, 3, seed=0).std_error)
    diag = hessian.hutchinson_diagonal(lambda v: a @ v, 10, 1, seed=0)
    assert np.all(np.isnan(diag.std_error))


@pytest.mark.parametrize("num_matvecs", [1, 2])
def test_hutchpp_needs_three_products(num_matvecs):
    with pytest.raises(ValueError, match=rf"`num_matvecs` must be an integer >= 3.*{num_matvecs}"):
        hessian.hutchpp_trace(lambda v: v, 5, num_matvecs=num_matvecs)


def test_hutchinson_diagonal_is_exact_for_a_diagonal_matrix():
    # z ⊙ Dz = diag(D) ⊙ z² = diag(D) for every ±1 probe.
    d = np.array([3.0, -1.0, 0.5, 2.0, 7.0, -0.25])
    for num_matvecs, seed in [(1, 0), (4, 1)]:
        value, std_error = hessian.hutchinson_diagonal(lambda v: d * v, 6, num_matvecs, seed=seed)
        np.testing.assert_allclose(value, d, rtol=1e-15, atol=0)
        if num_matvecs > 1:
            np.testing.assert_allclose(std_error, 0.0, rtol=0, atol=1e-15)


def test_hutchinson_diagonal_is_within_five_standard_errors_on_a_dense_matrix():
    # Entry j has per-probe variance Σ_(k≠j) A_jk². Measured over 50 seeds:
    # the worst entry is 3.5 standard errors away.
    b = np.random.default_rng(3).standard_normal((20, 20))
    a = b @ b.T / 20 + np.eye(20)
    sigma = np.sqrt((np.sum(a**2, axis=1) - np.diag(a) ** 2) / 400)
    matvec, calls = counting(a)
    value, std_error = hessian.hutchinson_diagonal(matvec, 20, 400, seed=0)
    assert len(calls) == 400 and value.shape == std_error.shape == (20,)
    assert np.all(np.abs(value - np.diag(a)) <= 5 * sigma)
    np.testing.assert_allclose(std_error, sigma, rtol=0.25, atol=0)


def test_operator_diagonal_is_shaped_like_the_variables(float64):
    # Dense(2) under MSE: the Hessian is 2/(N·d) (X̃ᵀX̃ ⊗ I_d), X̃ = [x, 1],
    # in the flat order kernel (3, 2) then bias (2,).
    x = np.random.default_rng(0).standard_normal((8, 3))
    y = np.zeros((8, 2))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    op = hessian.HessianOperator(model, "mse", (x, y))
    xt = np.concatenate([x, np.ones((8, 1))], axis=1)
    h = 2 / (8 * 2) * np.kron(xt.T @ xt, np.eye(2))
    value, std_error = op.diagonal(num_matvecs=300, seed=0)
    assert [v.shape for v in value] == [(3, 2), (2,)]
    assert [s.shape for s in std_error] == [(3, 2), (2,)]
    assert op.matvec_count == 300
    flat = np.concatenate([v.reshape(-1) for v in value])
    sigma = np.sqrt((np.sum(h**2, axis=1) - np.diag(h) ** 2) / 300)
    assert np.all(np.abs(flat - np.diag(h)) <= 5 * sigma + 1e-12)
    # The reference itself: the bias entries of the diagonal are 2/d = 1.
    np.testing.assert_allclose(np.diag(h)[-2:], 1.0, rtol=1e-12)


def test_operator_hutchpp_trace(float64):
    a = decaying_psd(12, seed=1) * 10
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    value, std_error = op.trace(num_matvecs=12, method="hutch++", seed=0)
    assert op.matvec_count == 12
    assert abs(value - np.trace(a)) <= 5 * std_error
    with pytest.raises(ValueError, match=r"`method`.*Received: method='hutch\+'"):
        op.trace(method="hutch+")
