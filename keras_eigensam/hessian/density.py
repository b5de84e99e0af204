"""Spectral density of a symmetric operator by stochastic Lanczos quadrature."""

import math

import numpy as np

from keras_eigensam import validation
from keras_eigensam.hessian.lanczos import lanczos
from keras_eigensam.hessian.lanczos import tridiagonal_eigh


def spectral_density(
    matvec,
    num_parameters,
    num_matvecs=200,
    num_probes=4,
    num_points=1024,
    sigma=None,
    seed=None,
    dtype=np.float64,
):
    """Spectral density of `H` by stochastic Lanczos quadrature.

    For each of `num_probes` Gaussian probes, `num_matvecs // num_probes`
    Lanczos steps give nodes `θ_j`
    (eigenvalues of the tridiagonal matrix) and weights `τ_j` (squared
    first components of its eigenvectors, summing to 1); the density is
    their Gaussian-broadened average over probes:

    ```
    φ(t) ≈ (1/num_probes) Σ_probes Σ_j τ_j · N(t; θ_j, σ²)
    ```

    It estimates `(1/n) Σ_i δ(t − λ_i)`, the distribution of the `n`
    eigenvalues, so it integrates to 1 over the returned grid (it is
    normalised there by the trapezoidal rule). Cost: `num_matvecs` products
    (`num_probes` times the steps per probe; a remainder is not spent).

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `num_parameters`).
        num_parameters: Dimension `n` of the operator, >= 1.
        num_matvecs: Products in all, >= `num_probes`; each probe gets
            `num_matvecs // num_probes` Lanczos steps (capped at `n`).
            Defaults to `200`.
        num_probes: Number of random start vectors, >= 1. Defaults to `4`.
        num_points: Number of grid points, >= 2. Defaults to `1024`.
        sigma: Width of the Gaussian broadening, > 0. `None` uses 1 % of
            the range of the nodes (or of their largest magnitude when
            all nodes coincide; 1e-3 when all are 0). Defaults to `None`.
        seed: Seed of the probes. Defaults to `None`.
        dtype: Dtype of the Lanczos basis. Defaults to `np.float64`.

    Returns:
        A tuple `(grid, density)` of NumPy arrays of shape
        `(num_points,)`: the grid spans the nodes with `5σ` of margin on
        each side.

    Raises:
        ValueError: if an argument is out of range, or `num_matvecs` <
            `num_probes`.

    Example:

    ```python
    grid, density = spectral_density(lambda v: a @ v, a.shape[0], num_matvecs=80)
    ```

    Reference:
        - [Ghorbani et al., 2019](https://arxiv.org/abs/1901.10159)
        - [Lin, Saad & Yang, 2016](https://arxiv.org/abs/1308.5467)
    """
    validation.check_callable("matvec", matvec, "a function `flat vector -> H · flat vector`")
    validation.check_seed("seed", seed)
    num_parameters = validation.check_int("num_parameters", num_parameters, minimum=1)
    num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
    num_probes = validation.check_int("num_probes", num_probes, minimum=1)
    if num_matvecs < num_probes:
        raise ValueError(
            "`num_matvecs` must be at least `num_probes`: every probe needs a "
            f"product. Received: num_matvecs={num_matvecs}, num_probes={num_probes}"
        )
    num_steps = num_matvecs // num_probes
    num_points = validation.check_int("num_points", num_points, minimum=2)
    if sigma is not None:
        sigma = validation.check_number("sigma", sigma, minimum=0.0, strict=True)
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(num_probes):
        start = rng.standard_normal(num_parameters)
        _, alpha, beta, _ = lanczos(matvec, start, num_steps, rng, dtype)
        theta, s = tridiagonal_eigh(alpha, beta)
        nodes.append(theta)
        weights.append(s[0, :] ** 2 / num_probes)
    nodes, weights = np.concatenate(nodes), np.concatenate(weights)
    if sigma is None:
        spread = float(nodes.max() - nodes.min())
        scale = spread if spread > 0 else float(np.abs(nodes).max())
        sigma = 0.01 * scale if scale > 0 else 1e-3
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, num_points)
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
    density = kernel @ weights / (sigma * math.sqrt(2 * math.pi))
    density /= np.trapezoid(density, grid)
    return grid, density
