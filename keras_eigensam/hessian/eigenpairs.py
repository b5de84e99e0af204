"""What `CurvatureOperator.top_eigenpairs` returns, checks and runs for power iteration.

`Eigenpairs` is the result (a pair with attributes), `check_arguments`
validates a request, and `power_eigenpairs` reaches either algebraic end of
the spectrum with deflated power iteration on a shifted operator. Lanczos
lives in `lanczos.py`, the power iteration itself in `power_iteration.py`.
"""

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.hessian.lanczos import WHICH
from keras_eigensam.hessian.power_iteration import deflated_power_iteration

#: The eigen-solvers of `CurvatureOperator.top_eigenpairs`.
EIGEN_METHODS = ("lanczos", "power")


class Eigenpairs(tuple):
    """`(eigenvalues, eigenvectors)`, with the cost and residuals as attributes.

    Unpacks as a pair, `eigvals, eigvecs = op.top_eigenpairs(k=3)`; the
    attributes `eigenvalues` (NumPy, shape `(k,)`), `eigenvectors` (`k`
    lists of tensors), `num_matvecs` (products spent) and `residuals`
    (`‖Mv − λv‖` of each pair, NumPy) name its parts.
    """

    def __new__(cls, eigenvalues, eigenvectors, num_matvecs, residuals):
        pair = super().__new__(cls, (eigenvalues, eigenvectors))
        pair.eigenvalues = eigenvalues
        pair.eigenvectors = eigenvectors
        pair.num_matvecs = num_matvecs
        pair.residuals = residuals
        return pair


def check_arguments(k, num_parameters, method, which, num_matvecs, tol):
    """Validates a `top_eigenpairs` request; returns `(k, method, which, num_matvecs, tol)`.

    Raises:
        ValueError: if `k` < 1 or exceeds `num_parameters`, `method` or
            `which` is unknown, `num_matvecs` < `k` (< `k + 1` for power
            iteration with `"largest"` or `"smallest"`), or `tol` <= 0.
        TypeError: if an argument has the wrong type.
    """
    k = validation.check_int("k", k, minimum=1)
    if k > num_parameters:
        raise ValueError(
            f"`k` must be at most the number of parameters "
            f"({num_parameters}). Received: k={k}"
        )
    method = validation.check_choice("method", method, EIGEN_METHODS)
    which = validation.check_choice("which", which, WHICH)
    if tol is not None:
        tol = validation.check_number("tol", tol, minimum=0.0, strict=True)
    if num_matvecs is not None:
        num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
        if num_matvecs < k:
            raise ValueError(
                "`num_matvecs` must be at least `k`: every eigenpair "
                f"needs a product. Received: num_matvecs={num_matvecs}, k={k}"
            )
        runs = k if which == "magnitude" else k + 1
        if method == "power" and num_matvecs < runs:
            # One run for the dominant eigenvalue, then one per pair:
            # fewer products than runs cannot be shared among them.
            raise ValueError(
                "`num_matvecs` must be at least `k + 1` for power iteration "
                "with which='largest' or 'smallest' (a run for the dominant "
                f"eigenvalue, then one per eigenpair). Received: "
                f"num_matvecs={num_matvecs}, k={k}, which={which!r}"
            )
    return k, method, which, num_matvecs, tol


def power_eigenpairs(matvec, k, which, start, num_matvecs, tol):
    """`k` eigenpairs at one end of the spectrum by deflated power iteration.

    `"magnitude"` runs on `M` directly; `"largest"` and `"smallest"` run on
    the shifted operator `±M + |λ_d| I` (positive semi-definite, so
    dominance order is algebraic order) after one run for the dominant
    eigenvalue `λ_d` of `±M`, which is itself the answer for `k=1` when
    `λ_d ≥ 0`. The runs share `num_matvecs` equally (`None`: 100 each).

    Args:
        matvec: `v -> M·v` on lists of tensors.
        k: Number of eigenpairs.
        which: `"largest"`, `"smallest"` or `"magnitude"`.
        start: `index -> start vector` of the `index`-th run.
        num_matvecs: Products for all runs, or `None`.
        tol: Stopping tolerance of each run, or `None`.

    Returns:
        `(eigenvalues, eigenvectors)`, sorted from the chosen end.
    """
    runs = k if which == "magnitude" else k + 1
    per_run = 100 if num_matvecs is None else max(1, num_matvecs // runs)
    if which == "magnitude":
        return deflated_power_iteration(matvec, k, start, per_run, tol)
    sign = 1.0 if which == "largest" else -1.0

    def signed(vectors):
        return linalg.scale(matvec(vectors), sign)

    dominant, vectors = deflated_power_iteration(signed, 1, start, per_run, tol)
    if k == 1 and dominant[0] >= 0:
        return sign * dominant, vectors
    shift = abs(float(dominant[0]))

    def shifted(vectors):
        return linalg.add_scaled(signed(vectors), vectors, shift)

    def restart(index):
        return vectors[0] if index == 0 and dominant[0] >= 0 else start(index + 1)

    mu, eigvecs = deflated_power_iteration(shifted, k, restart, per_run, tol)
    return sign * (mu - shift), eigvecs
