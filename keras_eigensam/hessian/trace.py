"""Stochastic estimates of the trace and diagonal of a symmetric operator.

Hutchinson's trace and diagonal estimators and Hutch++, as free functions
over a `matvec` on flat NumPy vectors, each returning its estimate beside a
standard error.
"""

import collections
import math

import numpy as np

from keras_eigensam import validation

#: The trace estimators of `CurvatureOperator.trace`.
TRACE_METHODS = ("hutchinson", "hutch++")

#: An estimate and its standard error (the standard deviation of the mean of
#: the random samples it averages; `nan` from a single sample).
Estimate = collections.namedtuple("Estimate", ["value", "std_error"])


def _rademacher(rng, n, m=None):
    shape = (n,) if m is None else (n, m)
    return rng.choice([-1.0, 1.0], size=shape)


def _mean_and_error(samples):
    samples = np.asarray(samples, dtype=np.float64)
    m = samples.shape[0]
    mean = samples.mean(axis=0)
    if m < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, samples.std(axis=0, ddof=1) / math.sqrt(m)


def _hutchinson_samples(matvec, n, m, seed, combine):
    """`[combine(z_i, H z_i) for m Rademacher probes z_i]`."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(m):
        z = _rademacher(rng, n)
        samples.append(combine(z, np.asarray(matvec(z), dtype=np.float64)))
    return samples


def _check(matvec, num_parameters, num_matvecs, seed, minimum=1):
    validation.check_callable("matvec", matvec, "a function `flat vector -> H · flat vector`")
    validation.check_seed("seed", seed)
    num_parameters = validation.check_int("num_parameters", num_parameters, minimum=1)
    num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=minimum)
    return num_parameters, num_matvecs


def hutchinson_trace(matvec, num_parameters, num_matvecs=100, seed=None):
    """Hutchinson estimate of `tr(H)` from `num_matvecs` products.

    ```
    tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i,    z_i with independent ±1 entries
    ```

    Rademacher probes give the smallest variance among the usual probe
    distributions, `2(‖H‖_F² − Σ H_jj²)/m`; for a diagonal `H` every probe
    gives the exact trace. The standard error is the sample standard
    deviation of the `z_iᵀ H z_i` over `√m`.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `num_parameters`).
        num_parameters: Dimension `n` of the operator, >= 1.
        num_matvecs: Number of probes `m` (one product each), >= 1.
            Defaults to `100`.
        seed: Seed of `np.random.default_rng` for the probes. Defaults to
            `None`.

    Returns:
        An `Estimate(value, std_error)` of Python floats (`std_error` is
        `nan` for `m = 1`).

    Raises:
        ValueError: if `num_parameters` or `num_matvecs` < 1.

    Example:

    ```python
    trace, std_error = hutchinson_trace(lambda v: a @ v, a.shape[0], 200, seed=0)
    ```

    Reference:
        - [Hutchinson, 1990](https://doi.org/10.1080/03610919008812866)
        - [Avron & Toledo, 2011](https://doi.org/10.1145/1944345.1944349)
    """
    n, m = _check(matvec, num_parameters, num_matvecs, seed)
    samples = _hutchinson_samples(matvec, n, m, seed, lambda z, hz: float(z @ hz))
    value, error = _mean_and_error(samples)
    return Estimate(float(value), float(error))


def hutchpp_trace(matvec, num_parameters, num_matvecs=99, seed=None):
    """Hutch++ estimate of `tr(H)` from `num_matvecs` products.

    The products are spent in three parts (`s = m // 3`, `g = m − 2s`):

    ```
    Q  = orth(H S)                    S: n × s Rademacher     (s products)
    t1 = tr(Qᵀ H Q)                                            (s products)
    t2 = (1/g) Σ_i z_iᵀ P H P z_i     P = I − QQᵀ, z_i ±1     (g products)
    tr(H) ≈ t1 + t2
    ```

    `Q` captures the top of the spectrum, whose trace `t1` is then exact;
    Hutchinson only estimates the rest, `tr(PHP)`, whose variance
    `2‖PHP‖_F²/g` is small when the spectrum decays (Meyer et al. prove
    `O(1/m)` relative error against Hutchinson's `O(1/√m)` for positive
    semi-definite `H`). The standard error is that of `t2` given `Q`.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `num_parameters`).
        num_parameters: Dimension `n` of the operator, >= 1.
        num_matvecs: Number of products `m`, >= 3. Defaults to `99`.
        seed: Seed of `np.random.default_rng`. Defaults to `None`.

    Returns:
        An `Estimate(value, std_error)` of Python floats (`std_error` is
        `nan` when `g = 1`).

    Raises:
        ValueError: if `num_parameters` < 1 or `num_matvecs` < 3.

    Example:

    ```python
    trace, std_error = hutchpp_trace(lambda v: a @ v, a.shape[0], 99, seed=0)
    ```

    Reference:
        - [Meyer, Musco, Musco & Woodruff, Hutch++, 2021](
          https://arxiv.org/abs/2010.09649)
    """
    n, m = _check(matvec, num_parameters, num_matvecs, seed, minimum=3)
    rng = np.random.default_rng(seed)
    s = min(m // 3, n)
    g = m - 2 * s

    def apply(columns):
        return np.stack(
            [np.asarray(matvec(np.ascontiguousarray(c)), dtype=np.float64) for c in columns.T],
            axis=1,
        )

    q, _ = np.linalg.qr(apply(_rademacher(rng, n, s)))
    exact = float(np.trace(q.T @ apply(q)))
    samples = []
    for _ in range(g):
        z = _rademacher(rng, n)
        pz = z - q @ (q.T @ z)
        samples.append(float(pz @ np.asarray(matvec(pz), dtype=np.float64)))
    rest, error = _mean_and_error(samples)
    return Estimate(exact + float(rest), float(error))


def hutchinson_diagonal(matvec, num_parameters, num_matvecs=100, seed=None):
    """Hutchinson estimate of `diag(H)` from `num_matvecs` products.

    ```
    diag(H) ≈ (1/m) Σ_i z_i ⊙ H z_i,    z_i with independent ±1 entries
    ```

    Entry `j` of a sample is `H_jj + Σ_(k≠j) H_jk z_j z_k`: unbiased, with
    variance `Σ_(k≠j) H_jk²` per probe (exact for a diagonal `H`). The
    standard error of each entry is its sample standard deviation over `√m`.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `num_parameters`).
        num_parameters: Dimension `n` of the operator, >= 1.
        num_matvecs: Number of probes `m`, >= 1. Defaults to `100`.
        seed: Seed of `np.random.default_rng`. Defaults to `None`.

    Returns:
        An `Estimate(value, std_error)` of two float64 arrays of shape `(n,)`.

    Raises:
        ValueError: if `num_parameters` or `num_matvecs` < 1.

    Example:

    ```python
    diag, std_error = hutchinson_diagonal(lambda v: a @ v, a.shape[0], 500, seed=0)
    ```

    Reference:
        - [Bekas, Kokiopoulou & Saad, 2007](
          https://doi.org/10.1016/j.apnum.2007.01.003)
    """
    n, m = _check(matvec, num_parameters, num_matvecs, seed)
    samples = _hutchinson_samples(matvec, n, m, seed, lambda z, hz: z * hz)
    value, error = _mean_and_error(samples)
    return Estimate(value, error)
