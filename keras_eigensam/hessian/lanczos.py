"""Lanczos with full reorthogonalisation, and the top eigenpairs it gives.

Free functions over a symmetric `matvec` on flat NumPy vectors, such as
`HessianOperator`'s (`density.py` builds stochastic Lanczos quadrature on
the same iteration), and `lanczos_top_eigenpair`, the same iteration in
Keras operations on lists of tensors for a compiled step (the eigenvector
tracker's refresh).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import tracing


#: The ends of the spectrum `lanczos_eigenpairs` (and the operators) find.
WHICH = ("largest", "smallest", "magnitude")

#: The dtypes `lanczos_top_eigenpair` keeps its basis in between products.
BASIS_DTYPES = ("float32", "bfloat16")


def lanczos(matvec, start, num_steps, rng=None, dtype=np.float64, stop=None):
    """Lanczos iteration with full reorthogonalisation from `start`.

    ```
    β_j q_(j+1) = H q_j − α_j q_j − β_(j−1) q_(j−1)   (then re-orthogonalised)
    ```

    Every step is one product. The new vector is re-orthogonalised against
    the whole basis twice ("twice is enough"), which keeps `Q` orthonormal
    to working precision, so no spurious copies of converged Ritz values
    appear. On breakdown (an invariant subspace has been found) it continues
    from a random vector orthogonal to `Q`, with `β = 0`, so that it always
    returns `min(num_steps, n)` steps unless `stop` ends it. It keeps the
    basis, `num_steps` vectors of length `n`, in memory.

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays of
            length `n`).
        start: Start vector (NumPy array of length `n`), not zero.
        num_steps: Number of steps (products), >= 1; capped at `n`.
        rng: `np.random.Generator` for restarts after breakdown. `None` uses
            `np.random.default_rng()`. Defaults to `None`.
        dtype: Dtype of the basis. Defaults to `np.float64`.
        stop: Optional function `(alpha, beta, b) -> bool` called after every
            step that did not break down, with `b = ‖r_j‖` the norm of the
            next residual (the `β_j` that step `j+1` would use); returning
            `True` ends the iteration. Defaults to `None`.

    Returns:
        A tuple `(basis, alpha, beta, b)`: the basis `Q` (steps × n), the
        diagonal and off-diagonal of the tridiagonal matrix `T = QᵀHQ`, and
        the norm of the last residual (`0` when `Q` spans all of `Rⁿ`).

    Example:

    ```python
    basis, alpha, beta, _ = lanczos(lambda v: a @ v, np.ones(10), num_steps=5)
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
    b = 0.0
    for j in range(num_steps):
        basis[j] = q
        w = np.asarray(matvec(q)).astype(dtype)
        alpha.append(float(q @ w))
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(np.linalg.norm(w)) if j + 1 < n else 0.0
        scale = max(abs(a) for a in alpha) + (max(beta) if beta else 0.0)
        breakdown = b <= 100 * eps * max(scale, 1e-30) * math.sqrt(n)
        if j + 1 < n and not breakdown and stop is not None and stop(alpha, beta, b):
            break
        if j == num_steps - 1:
            break
        if breakdown:
            w = rng.standard_normal(n).astype(dtype)
            for _ in range(2):
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta.append(0.0)
            q = w / np.linalg.norm(w)
        else:
            beta.append(b)
            q = w / b
    steps = len(alpha)
    return basis[:steps], np.asarray(alpha), np.asarray(beta), b


def tridiagonal_eigh(alpha, beta):
    """Eigenvalues (ascending) and eigenvectors of `tridiag(β, α, β)`."""
    matrix = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    return np.linalg.eigh(matrix)


def select(theta, k, which):
    """Indices of the `k` values of `theta` at the `which` end, in order."""
    if which == "largest":
        order = np.argsort(theta)[::-1]
    elif which == "smallest":
        order = np.argsort(theta)
    else:
        order = np.argsort(np.abs(theta), kind="stable")[::-1]
    return order[:k]


def check_start(start):
    """`start` as a NumPy vector, checked: one axis, finite, not zero.

    Raises:
        ValueError: naming `start`, its shape and its norm.
    """
    start = np.asarray(start)
    norm = float(np.linalg.norm(start)) if start.size else 0.0
    if start.ndim != 1 or not (math.isfinite(norm) and norm > 0):
        raise ValueError(
            "`start` must be a non-zero, finite vector (one axis): Lanczos "
            f"normalises it. Received: start of shape {start.shape} and norm {norm}"
        )
    return start


def lanczos_eigenpairs(
    matvec, start, k, num_matvecs, rng=None, dtype=np.float64, which="largest", tol=None
):
    """`k` extreme eigenpairs from at most `num_matvecs` Lanczos steps.

    ```
    T = tridiag(β, α, β) = S Θ Sᵀ;   eigvals = k of Θ at the `which` end;
    eigvecs = Q S[:, those];         residual_j = ‖H y_j − θ_j y_j‖ = b·|S_mj|
    ```

    With full reorthogonalisation Lanczos needs far fewer products than
    power iteration with deflation (measurements in `benchmarks/hessian.md`),
    and finds the largest or smallest *algebraic* eigenvalues (or the
    largest in magnitude) alike. With `tol` it stops as soon as every wanted
    Ritz pair has `residual_j ≤ tol · max|Θ|`, checked after every step
    from step `k` on (the residual is free: `b` is the norm of the next
    Lanczos vector before normalisation).

    Args:
        matvec: Function `flat vector -> H · flat vector` (NumPy arrays).
        start: Start vector (NumPy array of length `n`), not zero.
        k: Number of eigenpairs, 1 <= k <= min(num_matvecs, n).
        num_matvecs: The most Lanczos steps (products), >= `k`; capped at `n`.
        rng: `np.random.Generator` for restarts. Defaults to `None`.
        dtype: Dtype of the basis. Defaults to `np.float64`.
        which: `"largest"`, `"smallest"` or `"magnitude"`. Defaults to
            `"largest"`.
        tol: Relative residual tolerance, > 0, or `None` to run all
            `num_matvecs` steps. Defaults to `None`.

    Returns:
        A tuple `(eigvals, eigvecs, residuals)`: a float64 array of shape
        `(k,)` ordered from the `which` end (decreasing, increasing, or
        decreasing in magnitude), an array `(k, n)` of unit Ritz vectors,
        and the residual norms `‖H y_j − θ_j y_j‖` (float64, `(k,)`).

    Raises:
        ValueError: if `k` < 1 or `k` > `n`, `num_matvecs` < `k`, `which`
            is unknown, `tol` <= 0, or `start` is zero or not finite.
        TypeError: if `matvec` is not callable or `rng` not a generator.

    Example:

    ```python
    eigvals, eigvecs, _ = lanczos_eigenpairs(lambda v: a @ v, start, k=3, num_matvecs=20)
    ```

    Reference:
        - [Golub & Van Loan, Matrix Computations, §10.1](
          https://jhupbooks.press.jhu.edu/title/matrix-computations)
        - [Parlett, The Symmetric Eigenvalue Problem, §13.2](
          https://doi.org/10.1137/1.9781611971163)
    """
    validation.check_callable("matvec", matvec, "a function `flat vector -> H · flat vector`")
    start = check_start(start)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            "`rng` must be a `np.random.Generator` or None. "
            f"Received: rng={rng!r} (of type {type(rng).__name__})"
        )
    k = validation.check_int("k", k, minimum=1)
    num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
    which = validation.check_choice("which", which, WHICH)
    if tol is not None:
        tol = validation.check_number("tol", tol, minimum=0.0, strict=True)
    if num_matvecs < k:
        raise ValueError(
            "`num_matvecs` must be at least `k`: m Lanczos steps give at most m "
            f"eigenpairs. Received: num_matvecs={num_matvecs}, k={k}"
        )
    if k > start.shape[0]:
        raise ValueError(
            "`k` must be at most the dimension `n` of the operator (the length "
            f"of `start`). Received: k={k}, n={start.shape[0]}"
        )

    def residuals(theta, s, b, chosen):
        return b * np.abs(s[-1, chosen])

    def converged(alpha, beta, b):
        if tol is None or len(alpha) < k:
            return False
        theta, s = tridiagonal_eigh(np.asarray(alpha), np.asarray(beta))
        chosen = select(theta, k, which)
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
        return bool(np.all(residuals(theta, s, b, chosen) <= tol * scale))

    basis, alpha, beta, b = lanczos(matvec, start, num_matvecs, rng, dtype, converged)
    theta, s = tridiagonal_eigh(alpha, beta)
    chosen = select(theta, k, which)
    vectors = []
    for j in chosen:
        ritz = s[:, j] @ basis
        vectors.append(ritz / np.linalg.norm(ritz))
    return (
        theta[chosen].astype(np.float64),
        np.stack(vectors),
        residuals(theta, s, b, chosen).astype(np.float64),
    )


def lanczos_top_eigenpair(
    matvec, v0, num_matvecs, unit_start=False, basis_dtype="float32"
):
    """Largest (algebraic) Ritz pair after `num_matvecs` Lanczos steps from `v0`.

    Lanczos with full reorthogonalisation (twice, classical Gram-Schmidt)
    builds an orthonormal basis `Q` of the Krylov space
    `span{v0, Hv0, …, H^(m−1) v0}` and the tridiagonal `T = QᵀHQ`; the
    largest eigenvalue θ of `T` and `v = Q y` (its eigenvector `y`) are the
    best estimate of `(λ_max, v_max)` that the space holds, never worse than
    the Rayleigh quotient of `v0`. The loop is unrolled in Python (no
    `while_loop`, so `matvec` may all-reduce through `merge_call`), and the
    basis is kept as `m` flattened vectors, reorthogonalised against one at
    a time (never stacked into an `(m, n)` copy). Flat, not lists shaped
    like the variables: XLA compiles the per-variable form of the
    reorthogonalisation far more slowly (ResNet-18's refresh phase 146 s
    against 71 s; 12 steps on a 4-variable MLP 154 s against 4 s), for at
    most two parameter-sized copies saved (the product's input and output).
    On breakdown (an invariant subspace) later basis vectors are zero and
    their spurious Ritz values are ignored.

    Args:
        matvec: Function `vectors -> H·vectors` (lists of tensors).
        v0: Start vector (list of tensors), not zero.
        num_matvecs: Number of products, a Python int >= 1.
        unit_start: Whether `v0` has unit norm already (then it is not
            normalised again). Defaults to `False`.
        basis_dtype: `"float32"`, or `"bfloat16"`: the basis vectors are
            kept between products rounded to bfloat16 (8 significant bits),
            half their memory (at the last product, `m − 1` stored vectors
            take the room of `(m − 1)/2`), while the product in progress,
            the coefficients, `T` and the Ritz vector's sum are float32.
            The rounding (relative 2⁻⁹ per entry) perturbs the basis's
            orthogonality and the Ritz vector: on a 2000×2000 indefinite
            matrix, 30 products, the Ritz value moved by 1e-5 relative and
            the vector's |cos| to the eigenvector by 4e-7.
            Defaults to `"float32"`.

    Returns:
        `(eigenvalue, eigenvector)`: a scalar tensor and a unit-norm list of
        tensors, signed so that `<eigenvector, v0> >= 0`.
    """
    basis_dtype = validation.check_choice("basis_dtype", basis_dtype, BASIS_DTYPES)
    like = list(v0)
    start = like if unit_start else linalg.normalize(like)[0]
    q = _flat(start)
    def store(vector):
        return vector if basis_dtype == "float32" else ops.cast(vector, basis_dtype)

    basis, alphas, betas, valid = [store(q)], [], [], [ops.convert_to_tensor(True)]
    w = _flat(matvec(start))
    for j in range(num_matvecs):
        alphas.append(ops.sum(q * w))
        if j == num_matvecs - 1:
            break
        for _ in range(2):
            # Classical Gram-Schmidt against each basis vector in turn, not
            # one stacked (j, n) matrix: a stack would copy the basis at
            # every step (5 copies of the parameters for ResNet-18).
            coefficients, ready = [], w
            for b in basis:
                coefficients.append(ops.sum(_float32(b, ready) * w))
                ready = coefficients[-1]
            w = w - _sum_scaled(basis, coefficients)
        beta = linalg.global_norm([w])
        scale = ops.max(ops.abs(ops.stack(alphas))) + (
            ops.max(ops.stack(betas)) if betas else 0.0
        )
        ok = beta > 1e-6 * scale
        q = w * ops.where(ok, 1.0 / ops.where(ok, beta, 1.0), 0.0)
        betas.append(ops.where(ok, beta, 0.0))
        valid.append(ok)
        basis.append(store(q))
        w = _flat(matvec(_unflat(q, like)))
    alpha = ops.stack(alphas)
    tridiagonal = ops.diag(alpha)
    if betas:
        off = ops.pad(ops.diag(ops.stack(betas)), [[0, 1], [1, 0]])
        tridiagonal = tridiagonal + off + ops.transpose(off)
    # eigh raises on a non-finite matrix (a NaN product): decompose zeros
    # instead and report a NaN eigenvalue, which the caller rejects.
    finite = ops.all(ops.isfinite(tridiagonal))
    theta, y = ops.eigh(ops.where(finite, tridiagonal, ops.zeros_like(tridiagonal)))
    # A Ritz vector that lives on zero basis vectors (after a breakdown) is
    # spurious: its Ritz value is 0 whatever H is.
    mass = ops.matmul(ops.cast(ops.stack(valid), y.dtype), ops.square(y))
    score = ops.where(mass > 0.5, theta, ops.full_like(theta, -float("inf")))
    index = ops.argmax(score)
    coefficients = ops.take(y, index, axis=1)
    # `eigh` returns either sign (LAPACK and XLA differ): take the one along
    # the start vector, so that a warm-started estimate keeps its sign and
    # every backend finds the same vector.
    coefficients = coefficients * ops.where(coefficients[0] < 0, -1.0, 1.0)
    vector = _sum_scaled(basis[: len(alphas)], [coefficients[i] for i in range(len(alphas))])
    vector, _ = linalg.normalize([vector])
    eigenvalue = ops.where(finite, ops.take(theta, index), float("nan"))
    return eigenvalue, _unflat(vector[0], like)


def _sum_scaled(vectors, coefficients):
    """`Σ coefficients[i] · vectors[i]` of flat tensors, one at a time, in
    float32."""
    total = coefficients[0] * _float32(vectors[0], coefficients[0])
    for c, v in zip(coefficients[1:], vectors[1:]):
        total = total + c * _float32(v, total)
    return total


def _float32(tensor, ready):
    """`tensor` in float32. A bfloat16 basis vector is cast once `ready` is
    computed: a graph would otherwise cast every stored vector as soon as it
    is stored and keep the float32 copies alive through the products (more
    memory than a float32 basis, measured), and cast them all at once."""
    if keras.backend.standardize_dtype(tensor.dtype) == "float32":
        return tensor
    return ops.cast(tracing.after([ready], [tensor])[0], "float32")


def _flat(tensors):
    return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors])


def _unflat(flat, like):
    sizes = [int(np.prod(t.shape)) for t in like]
    pieces = ops.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(like) > 1 else [flat]
    return [ops.reshape(p, t.shape) for p, t in zip(pieces, like)]
