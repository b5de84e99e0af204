"""Tests of `keras_eigensam.hessian.density` (stochastic Lanczos quadrature)."""

from math import erf
from math import sqrt

import numpy as np
import pytest

from keras_eigensam import hessian


def test_density_is_the_broadened_eigenvalue_distribution():
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([rng.normal(0.0, 0.3, 60), [4.0, 6.0]])
    q, _ = np.linalg.qr(rng.standard_normal((62, 62)))
    a = (q * eigenvalues) @ q.T
    sigma = 0.1
    # With as many steps as dimensions every probe resolves the spectrum
    # exactly; the weights are random, so the agreement is statistical.
    grid, density = hessian.spectral_density(
        lambda v: a @ v, 62, num_matvecs=62 * 20, num_probes=20, sigma=sigma, seed=0
    )
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9)
    assert np.all(density >= 0)
    assert grid[0] <= eigenvalues.min() - 4 * sigma and grid[-1] >= 6.0 + 4 * sigma
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    normal_cdf = np.vectorize(lambda t: 0.5 * (1 + erf(t / sqrt(2))))
    exact_cdf = normal_cdf((grid[:, None] - eigenvalues[None, :]) / sigma).mean(axis=1)
    assert np.max(np.abs(cdf - exact_cdf)) < 0.08


def test_default_sigma_and_a_zero_operator():
    grid, density = hessian.spectral_density(lambda v: 0 * v, 5, num_matvecs=12, seed=0)
    np.testing.assert_allclose(grid[[0, -1]], [-5e-3, 5e-3], rtol=1e-9)  # sigma 1e-3
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_matvecs=0), "num_matvecs=0"),
        (dict(num_probes=0), "num_probes=0"),
        (dict(num_points=1), "num_points=1"),
        (dict(sigma=0.0), "`sigma`"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian.spectral_density(lambda v: v, 4, **kwargs)
