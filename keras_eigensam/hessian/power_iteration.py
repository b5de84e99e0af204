"""Power iteration for the dominant eigenpair, and its deflated variant.

`power_iteration` runs over any symmetric `matvec` on lists of tensors; it
is `tf.function`- and XLA-safe and is what the train step's eigenvector
refresh uses. `deflated_power_iteration` finds several eigenpairs one after
the other, for `HessianOperator.top_eigenpairs(method="power")`.
"""

import warnings

import numpy as np
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation


def power_iteration(matvec, v0, num_matvecs, tol=None, final_update=False):
    """Dominant eigenpair of a symmetric operator by power iteration.

    Converges to the eigenvalue of largest absolute value, at the rate
    `|λ2/λ1|` per iteration; warm-starting `v0` from the previous estimate
    (as Eigen-SAM does between refreshes) makes a few iterations enough.

    ```
    v ← v0 / ‖v0‖
    repeat:  Hv = matvec(v);  λ = <v, Hv>;  v ← Hv / ‖Hv‖
    ```

    Every call of `matvec` is counted: the returned `v` is the last vector
    that was multiplied, and the eigenvalue is its Rayleigh quotient
    `λ = <v, Hv>`, so `(λ, v)` always belong together (the last product is
    spent on λ and on the residual, not on one more update of `v`).

    With `tol=None` exactly `num_matvecs` products are computed, by a
    Python-unrolled loop: it needs no while loop, so it also runs in a
    replica context where `matvec` all-reduces through `merge_call`
    (MirroredStrategy on CPUs), and under XLA. With `tol` set the loop is a
    `keras.ops.while_loop` (XLA-compatible) that stops after the first
    iteration where both the relative change of the eigenvalue and the
    relative residual are below `tol`:

    ```
    |λ_k − λ_(k−1)| / |λ_k| < tol   and   ‖H v_k − λ_k v_k‖ / |λ_k| < tol
    ```

    The change alone stops too early when `λ1 ≈ λ2`; the residual does not.
    A data-dependent loop cannot contain a `merge_call`, so under
    MirroredStrategy on CPUs use `tol=None` inside `strategy.run`.

    A product that is zero (then `v` is an eigenvector with λ = 0) or has a
    NaN or infinite entry (an overflow) does not replace the vector: `v`
    stays the last usable unit vector, and the returned eigenvalue, the
    Rayleigh quotient of the last product, is then 0 or not finite, which
    tells the caller what happened. A finite product is normalised after
    scaling by its largest entry, so an overflowing norm does not zero it.

    Args:
        matvec: Function `vectors -> H·vectors` (lists of tensors), e.g.
            from `make_hvp` or `HessianOperator.matvec`. Under a strategy it
            must return the same (all-reduced) result on every replica.
        v0: Starting vector (list of tensors), normalised inside; it must
            not be zero.
        num_matvecs: Number of products (`tol=None`) or the maximum
            number (`tol` set), a Python integer >= 1.
        tol: Relative tolerance of the stopping rule, or `None` to always
            run `num_matvecs`. Defaults to `None`.
        final_update: If `True`, spend the last product on one more update
            too: the returned vector is `Hv/‖Hv‖` for the last `v` multiplied,
            and the eigenvalue is the Rayleigh quotient of that `v`. Then
            every product moves the vector, as in the Eigen-SAM reference
            (5 iterations, 5 updates), which matters for warm-started
            refreshes with 1 or 2 products. Defaults to `False`.

    Returns:
        A tuple `(eigenvalue, eigenvector)`: a scalar tensor (the Rayleigh
        quotient) and a list of tensors with unit global norm.

    Raises:
        TypeError: if `matvec` is not callable, `num_matvecs` not an
            integer, `tol` not a number or `final_update` not a bool.
        ValueError: if `num_matvecs` < 1 or `tol` <= 0.

    Example:

    ```python
    lam, v = hessian.power_iteration(
        lambda v: hessian.hvp(loss_fn, variables, v), v0, num_matvecs=20)
    ```

    Reference:
        - [Golub & Van Loan, Matrix Computations, §8.2](
          https://jhupbooks.press.jhu.edu/title/matrix-computations)
    """
    eigenvalue, eigenvector, _ = power_iteration_with_info(
        matvec, v0, num_matvecs, tol, final_update=final_update
    )
    return eigenvalue, eigenvector


def power_iteration_with_info(matvec, v0, num_matvecs, tol=None, final_update=False):
    """`power_iteration` plus a dict with `iterations`, `change`, `residual`.

    `iterations` counts the products, `change` and `residual` are the two
    quantities of the stopping rule at the returned eigenvalue.
    """
    validation.check_callable("matvec", matvec, "a function `vectors -> H·vectors`")
    validation.check_bool("final_update", final_update)
    num_matvecs = validation.check_int("num_matvecs", num_matvecs, minimum=1)
    if tol is not None:
        tol = validation.check_number("tol", tol, minimum=0.0, strict=True)
    v, _ = linalg.normalize(list(v0))
    hv = matvec(v)
    lam = linalg.inner(v, hv)

    def step(v, hv, lam):
        new_v = _next_vector(hv, v)
        new_hv = matvec(new_v)
        new_lam = linalg.inner(new_v, new_hv)
        change = ops.abs(new_lam - lam) / ops.abs(new_lam)
        return new_v, new_hv, new_lam, change

    change = ops.cast(float("inf"), lam.dtype)
    if tol is None:
        for _ in range(num_matvecs - 1):
            v, hv, lam, change = step(v, hv, lam)
        iterations = num_matvecs
    else:

        def cond(i, v, hv, lam, change, converged):
            return ops.logical_not(converged)

        def body(i, v, hv, lam, change, converged):
            v, hv, lam, change = step(v, hv, lam)
            converged = ops.logical_and(
                change < tol, _relative_residual(v, hv, lam) < tol
            )
            return i + 1, v, hv, lam, change, converged

        start = (ops.convert_to_tensor(1), v, hv, lam, change, ops.convert_to_tensor(False))
        iterations, v, hv, lam, change, _ = ops.while_loop(
            cond, body, start, maximum_iterations=num_matvecs - 1
        )
    info = {
        "iterations": iterations,
        "change": change,
        "residual": _relative_residual(v, hv, lam),
    }
    if final_update:
        v = _next_vector(hv, v)
    return lam, v, info


def _next_vector(hv, v):
    """`Hv / ‖Hv‖`, or `v` itself when `Hv` is unusable.

    `Hv = 0` means `v` is an exact eigenvector (λ = 0), and a product with a
    NaN or infinite entry has no direction: either would replace `v` by a
    vector that is not unit-norm and never recovers, so `v` is kept. A
    finite `Hv` is scaled by its largest entry before it is normalised, so
    one whose norm overflows still gives its direction.
    """
    largest = ops.max(ops.stack([ops.max(ops.abs(h)) for h in hv]))
    usable = ops.logical_and(linalg.all_finite(hv), largest > 0)
    safe = ops.where(usable, largest, ops.ones_like(largest))
    # Divided, not multiplied by 1/largest, which is subnormal (flushed to
    # zero) for largest > ~1e38 in float32.
    scaled = [ops.divide(h, ops.cast(safe, h.dtype)) for h in hv]
    candidate, _ = linalg.normalize(scaled)
    return [ops.where(usable, c, old) for c, old in zip(candidate, v)]


def _relative_residual(v, hv, lam):
    return linalg.global_norm(linalg.add_scaled(hv, v, -lam)) / ops.abs(lam)


def deflated_power_iteration(matvec, k, start, num_matvecs=100, tol=1e-4):
    """The `k` eigenpairs of largest |λ|, by power iteration with deflation.

    Eigenpair `i` is the dominant eigenpair of `H` projected onto the
    complement of the eigenvectors already found,

    ```
    P_i H P_i,   P_i = I − Σ_(j<i) u_j u_jᵀ
    ```

    so the eigenvalues come in the order of decreasing absolute value. Each
    costs up to `num_matvecs` products, many when eigenvalues are close;
    a `UserWarning` names every eigenpair that did not meet `tol`.

    Args:
        matvec: Function `vectors -> H·vectors` (lists of tensors).
        k: Number of eigenpairs, >= 1.
        start: Function `index -> v0` giving the start vector of eigenpair
            `index` (a list of tensors), called in order.
        num_matvecs: Maximum number of products per eigenpair. Defaults
            to `100`.
        tol: Tolerance of `power_iteration`'s stopping rule, or `None` to
            always run `num_matvecs`. Defaults to `1e-4`.

    Returns:
        A tuple `(eigvals, eigvecs)`: a float64 NumPy array of shape `(k,)`
        and a list of `k` unit vectors (lists of tensors).

    Example:

    ```python
    eigvals, eigvecs = deflated_power_iteration(op.matvec, 2, lambda i: v0[i])
    ```
    """
    validation.check_callable("matvec", matvec, "a function `vectors -> H·vectors`")
    validation.check_callable("start", start, "a function `index -> v0`")
    k = validation.check_int("k", k, minimum=1)
    validation.check_int("num_matvecs", num_matvecs, minimum=1)
    eigvals, eigvecs = [], []
    for index in range(k):
        found = list(eigvecs)

        def project(vectors, found=found):
            for u in found:
                vectors = linalg.add_scaled(vectors, u, -linalg.inner(u, vectors))
            return vectors

        lam, v, info = power_iteration_with_info(
            lambda v, project=project: project(matvec(project(v))),
            project(start(index)),
            num_matvecs,
            tol,
        )
        if tol is not None and not (
            float(info["change"]) < tol and float(info["residual"]) < tol
        ):
            warnings.warn(
                f"Power iteration for eigenpair {index} did not reach "
                f"tol={tol} in num_matvecs={num_matvecs} products "
                f"(relative change {float(info['change']):.2e}, relative "
                f"residual {float(info['residual']):.2e}). Increase "
                "`num_matvecs` or use `method='lanczos'`.",
                stacklevel=3,
            )
        eigvals.append(float(lam))
        eigvecs.append(v)
    return np.asarray(eigvals, dtype=np.float64), eigvecs
