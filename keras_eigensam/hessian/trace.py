"""Hutchinson's estimate of the trace of a symmetric operator."""

import numpy as np

from keras_eigensam import validation


def hutchinson_trace(matvec, num_parameters, num_samples=100, seed=None):
    """Hutchinson estimate of `tr(H)` from `num_samples` products.

    ```
    tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i,    z_i with independent ±1 entries
    ```

    Rademacher probes give the smallest variance among the usual probe
    distributions, `2(‖H‖_F² − Σ H_jj²)/m`; for a diagonal `H` every probe
    gives the exact trace.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `num_parameters`).
        num_parameters: Dimension `n` of the operator, >= 1.
        num_samples: Number of probes `m` (one product each), >= 1.
            Defaults to `100`.
        seed: Seed of `np.random.default_rng` for the probes. Defaults to
            `None`.

    Returns:
        The estimate, a Python float.

    Raises:
        ValueError: if `num_parameters` or `num_samples` < 1.

    Example:

    ```python
    trace = hutchinson_trace(lambda v: a @ v, a.shape[0], num_samples=200, seed=0)
    ```

    Reference:
        - [Hutchinson, 1990](https://doi.org/10.1080/03610919008812866)
        - [Avron & Toledo, 2011](https://doi.org/10.1145/1944345.1944349)
    """
    num_parameters = validation.check_int("num_parameters", num_parameters, minimum=1)
    num_samples = validation.check_int("num_samples", num_samples, minimum=1)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_samples):
        z = rng.choice([-1.0, 1.0], size=num_parameters)
        total += float(z @ np.asarray(matvec(z), dtype=np.float64))
    return total / num_samples
