"""Lanczos with full reorthogonalisation, and the top eigenpairs it gives.

Free functions over a symmetric `matvec` on flat NumPy vectors, such as
`HessianOperator`'s; `density.py` builds stochastic Lanczos quadrature on
the same iteration.
"""

import math

import numpy as np

from keras_eigensam import validation


def lanczos(matvec, start, num_steps, rng=None, dtype=np.float64):
    """Lanczos iteration with full reorthogonalisation from `start`.

    ```
    β_j q_(j+1) = H q_j − α_j q_j − β_(j−1) q_(j−1)   (then re-orthogonalised)
    ```

    Every step is one product. The new vector is re-orthogonalised against
    the whole basis twice ("twice is enough"), which keeps `Q` orthonormal
    to working precision, so no spurious copies of converged Ritz values
    appear. On breakdown (an invariant subspace has been found) it continues
    from a random vector orthogonal to `Q`, with `β = 0`, so that it always
    returns `min(num_steps, n)` steps. It keeps the basis, `num_steps`
    vectors of length `n`, in memory.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `n`).
        start: Start vector (NumPy array of length `n`), not zero.
        num_steps: Number of steps (products), >= 1; capped at `n`.
        rng: `np.random.Generator` for restarts after breakdown. `None` uses
            `np.random.default_rng()`. Defaults to `None`.
        dtype: Dtype of the basis. Defaults to `np.float64`.

    Returns:
        A tuple `(basis, alpha, beta)`: the basis `Q` (steps × n), and the
        diagonal and off-diagonal of the tridiagonal matrix `T = QᵀHQ`.

    Example:

    ```python
    basis, alpha, beta = lanczos(lambda v: a @ v, np.ones(10), num_steps=5)
    ```

    Reference:
        - [Lanczos, 1950](https://doi.org/10.6028/jres.045.026)
    """
    num_steps = validation.check_int("num_steps", num_steps, minimum=1)
    rng = np.random.default_rng() if rng is None else rng
    n = start.shape[0]
    num_steps = min(num_steps, n)
    basis = np.zeros((num_steps, n), dtype=dtype)
    alpha, beta = [], []
    q = start / np.linalg.norm(start)
    eps = np.finfo(dtype).eps
    for j in range(num_steps):
        basis[j] = q
        w = np.asarray(matvec(q)).astype(dtype)
        alpha.append(float(q @ w))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        if j == num_steps - 1:
            break
        b = float(np.linalg.norm(w))
        scale = max(abs(a) for a in alpha) + (max(beta) if beta else 0.0)
        if b <= 100 * eps * max(scale, 1e-30) * math.sqrt(n):
            w = rng.standard_normal(n).astype(dtype)
            for _ in range(2):
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta.append(0.0)
            q = w / np.linalg.norm(w)
        else:
            beta.append(b)
            q = w / b
    return basis[: len(alpha)], np.asarray(alpha), np.asarray(beta)


def tridiagonal_eigh(alpha, beta):
    """Eigenvalues (ascending) and eigenvectors of `tridiag(β, α, β)`."""
    matrix = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    return np.linalg.eigh(matrix)


def lanczos_eigenpairs(matvec, start, k, num_steps, rng=None, dtype=np.float64):
    """The `k` largest (algebraic) eigenpairs from `num_steps` Lanczos steps.

    ```
    T = tridiag(β, α, β) = S Θ Sᵀ;   eigvals = top k of Θ;   eigvecs = Q S[:, top k]
    ```

    With full reorthogonalisation Lanczos needs far fewer products than
    power iteration with deflation, and finds the largest algebraic
    eigenvalues rather than the largest in magnitude (measurements in
    `benchmarks/hessian.md`).

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays).
        start: Start vector (NumPy array of length `n`), not zero.
        k: Number of eigenpairs, 1 <= k <= min(num_steps, n).
        num_steps: Number of Lanczos steps (products), >= `k`.
        rng: `np.random.Generator` for restarts. Defaults to `None`.
        dtype: Dtype of the basis. Defaults to `np.float64`.

    Returns:
        A tuple `(eigvals, eigvecs)`: a float64 array of shape `(k,)` in
        decreasing order and an array `(k, n)` of unit Ritz vectors.

    Raises:
        ValueError: if `k` < 1 or `num_steps` < `k`.

    Example:

    ```python
    eigvals, eigvecs = lanczos_eigenpairs(lambda v: a @ v, start, k=3, num_steps=20)
    ```

    Reference:
        - [Golub & Van Loan, Matrix Computations, §10.1](
          https://jhupbooks.press.jhu.edu/title/matrix-computations)
    """
    k = validation.check_int("k", k, minimum=1)
    num_steps = validation.check_int("num_steps", num_steps, minimum=1)
    if num_steps < k:
        raise ValueError(
            "`num_steps` must be at least `k`: m Lanczos steps give at most m "
            f"eigenpairs. Received: num_steps={num_steps}, k={k}"
        )
    basis, alpha, beta = lanczos(matvec, start, num_steps, rng, dtype)
    theta, s = tridiagonal_eigh(alpha, beta)
    order = np.argsort(theta)[::-1][:k]
    vectors = []
    for j in order:
        ritz = s[:, j] @ basis
        vectors.append(ritz / np.linalg.norm(ritz))
    return theta[order].astype(np.float64), np.stack(vectors)
