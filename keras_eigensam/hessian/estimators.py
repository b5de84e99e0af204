"""The estimators every curvature operator has: eigenpairs, trace,
diagonal, spectral density.

`CurvatureEstimators` is the half of `CurvatureOperator` (`operator.py`)
that only uses its products: each estimator here runs an algorithm of this
package (`lanczos.py`, `eigenpairs.py`, `trace.py`, `density.py`) on the
operator's `matvec` (lists of tensors shaped like `variables`) or its flat
form `_flat_matvec`, and counts on `num_parameters`, `matvec_count` and
`_dtype`. The operator owns the data and the sum over batches and
replicas.
"""

import numpy as np

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.hessian import eigenpairs
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.density import spectral_density
from keras_eigensam.hessian.lanczos import lanczos_eigenpairs
from keras_eigensam.hessian.trace import TRACE_METHODS
from keras_eigensam.hessian.trace import Estimate
from keras_eigensam.hessian.trace import hutchinson_diagonal
from keras_eigensam.hessian.trace import hutchinson_trace
from keras_eigensam.hessian.trace import hutchpp_trace


class CurvatureEstimators:
    """Estimators on a curvature operator's products (mixed into
    `CurvatureOperator`, which documents them as its own)."""

    def top_eigenpairs(
        self,
        k=1,
        method="lanczos",
        which="largest",
        num_matvecs=None,
        tol=1e-4,
        initial=None,
        seed=None,
    ):
        """`k` eigenpairs at one end of the spectrum.

        `which` chooses the end: `"largest"` (the largest algebraic
        eigenvalues, what "top eigenvalue" means in the SAM papers),
        `"smallest"` (the most negative: negative curvature) or
        `"magnitude"` (the largest `|λ|`).

        `method="lanczos"` (the default) runs Lanczos with full
        reorthogonalisation from one start vector and stops when every
        wanted Ritz pair has a residual `‖Mv − θv‖ ≤ tol · max|θ|` (the
        residual comes free from the tridiagonal matrix: `|β_m s_mj|`), or
        after `num_matvecs` products; it keeps `num_matvecs` vectors of the
        size of the model in host memory. `method="power"` runs power
        iteration with deflation (`P M P`, `P` projecting out the pairs
        found): `"magnitude"` directly, `"largest"` and `"smallest"` on the
        shifted operator `±M + |λ_d| I` (positive semi-definite, so
        dominance order is algebraic order), after one run for the
        dominant eigenvalue `λ_d` (skipped for `"largest"`, `k=1` when
        `λ_d ≥ 0`: then it is the answer). The runs share `num_matvecs`
        equally and each stops when the relative change of its eigenvalue
        and its relative residual are below `tol`; `k` more products give
        the residuals `‖Mv − λv‖` of the pairs found. Lanczos usually needs
        far fewer products (`benchmarks/hessian.md`), and its residuals
        come free.

        Args:
            k: Number of eigenpairs, an integer >= 1. Defaults to `1`.
            method: `"lanczos"` or `"power"`. Defaults to `"lanczos"`.
            which: `"largest"`, `"smallest"` or `"magnitude"`. Defaults to
                `"largest"`.
            num_matvecs: The most products the call computes, >= `k`
                (power iteration: plus `k` for the residuals).
                `None` uses `max(30, 2k)` for Lanczos (capped at the number
                of parameters) and 100 per power run. Defaults to `None`.
            tol: Relative tolerance of the stopping rule, > 0, or `None` to
                spend all `num_matvecs`. A `UserWarning` reports power runs
                that did not converge. Defaults to `1e-4`.
            initial: Start vector (list of tensors shaped like the trainable
                variables) of Lanczos or of the first power run. `None`
                draws a Gaussian vector. Defaults to `None`.
            seed: Seed of the random start vectors. Defaults to `None`.

        Returns:
            An `Eigenpairs` pair `(eigenvalues, eigenvectors)`: a NumPy
            array of shape `(k,)` sorted from the chosen end (decreasing for
            `"largest"`, increasing for `"smallest"`, decreasing `|λ|` for
            `"magnitude"`) and `k` eigenvectors (lists of tensors with unit
            global norm); its attributes `num_matvecs` and `residuals` give
            the products spent and the residual norms `‖Mv − λv‖`.

        Raises:
            ValueError: if `k` < 1 or exceeds the number of parameters,
                `method` or `which` is unknown, `num_matvecs` < `k` (< `k + 1`
                for power iteration with `"largest"` or `"smallest"`),
                `tol` <= 0, `seed` < 0, or `initial` does not match the
                variables or is zero.

        Example:

        ```python
        eigvals, eigvecs = op.top_eigenpairs(k=5)
        lam_min = op.top_eigenpairs(which="smallest").eigenvalues[0]
        ```
        """
        k, method, which, num_matvecs, tol = eigenpairs.check_arguments(
            k, self.num_parameters, method, which, num_matvecs, tol
        )
        if initial is not None:
            initial = probe.check_vectors(initial, self.variables, "initial")
            norm = float(linalg.global_norm(initial))
            if not (np.isfinite(norm) and norm > 0):
                raise ValueError(
                    "`initial` must be a non-zero, finite vector: it is "
                    f"normalised. Received: initial with norm {norm}"
                )
        rng = np.random.default_rng(validation.check_seed("seed", seed))
        start_count = self.matvec_count
        if method == "lanczos":
            if num_matvecs is None:
                num_matvecs = max(30, 2 * k)
            start = (
                probe.flatten(initial)
                if initial is not None
                else rng.standard_normal(self.num_parameters)
            )
            eigvals, vectors, residuals = lanczos_eigenpairs(
                self._flat_matvec, start, k, num_matvecs, rng, self._dtype, which, tol
            )
            eigvecs = [probe.unflatten(v, self.variables) for v in vectors]
        else:

            def start(index):
                if index == 0 and initial is not None:
                    return initial
                return probe.unflatten(rng.standard_normal(self.num_parameters), self.variables)

            eigvals, eigvecs = eigenpairs.power_eigenpairs(
                self.matvec, k, which, start, num_matvecs, tol
            )
            residuals = None
        if residuals is None:
            residuals = np.asarray(
                [
                    float(linalg.global_norm(linalg.add_scaled(self.matvec(v), v, -lam)))
                    for lam, v in zip(eigvals, eigvecs)
                ]
            )
        return eigenpairs.Eigenpairs(
            eigvals, eigvecs, self.matvec_count - start_count, residuals
        )

    def trace(self, num_matvecs=100, method="hutchinson", seed=None):
        """Estimate of the trace `tr(M)`, with its standard error.

        `"hutchinson"`: `tr(M) ≈ mean_i z_iᵀ M z_i` over `num_matvecs`
        Rademacher probes. `"hutch++"`: the same number of products spent
        as a third on a sketch `Q` of the top of the spectrum, a third on
        `tr(QᵀMQ)` (exact), and a third on Hutchinson for the rest,
        `(I − QQᵀ) M (I − QQᵀ)`: much lower variance when the spectrum
        decays, as a Hessian's does (`trace.hutchpp_trace`).

        Args:
            num_matvecs: Number of products, >= 1 (>= 3 for `"hutch++"`).
                Defaults to `100`.
            method: `"hutchinson"` or `"hutch++"`. Defaults to
                `"hutchinson"`.
            seed: Seed of the probes. Defaults to `None`.

        Returns:
            An `Estimate(value, std_error)` named tuple of Python floats; the
            standard error is that of the random part, `nan` from one probe.

        Raises:
            ValueError: if `num_matvecs` is too small or `method` unknown.

        Example:

        ```python
        value, std_error = op.trace(num_matvecs=99, method="hutch++", seed=0)
        ```
        """
        method = validation.check_choice("method", method, TRACE_METHODS)
        estimator = hutchinson_trace if method == "hutchinson" else hutchpp_trace
        return estimator(self._flat_matvec, self.num_parameters, num_matvecs, seed)

    def diagonal(self, num_matvecs=100, seed=None):
        """Hutchinson estimate of the diagonal of `M`, with standard errors.

        ```
        diag(M) ≈ mean_i z_i ⊙ M z_i,    z_i with independent ±1 entries
        ```

        Args:
            num_matvecs: Number of probes (products), >= 1. Defaults to
                `100`.
            seed: Seed of the probes. Defaults to `None`.

        Returns:
            An `Estimate(value, std_error)` named tuple of two lists of
            NumPy arrays shaped like the trainable variables.

        Raises:
            ValueError: if `num_matvecs` < 1.

        Example:

        ```python
        diag, std_error = op.diagonal(num_matvecs=200, seed=0)
        ```
        """
        value, std_error = hutchinson_diagonal(
            self._flat_matvec, self.num_parameters, num_matvecs, seed
        )
        def shaped(flat):
            return [np.asarray(t) for t in probe.unflatten(flat, self.variables)]

        return Estimate(shaped(value), shaped(std_error))

    def density(self, num_matvecs=200, num_probes=4, num_points=1024, sigma=None, seed=None):
        """Spectral density by stochastic Lanczos quadrature.

        See `density.spectral_density`: `num_probes` Gaussian start vectors,
        `num_matvecs // num_probes` Lanczos steps each, a Gaussian-broadened
        density of the eigenvalues that integrates to 1 over the grid. Draw
        it with `keras_eigensam.experiments.plotting.plot_density` (log
        scale, as the papers do).

        Args:
            num_matvecs: Number of products in all, >= `num_probes`.
                Defaults to `200`.
            num_probes: Number of random start vectors, >= 1. Defaults to `4`.
            num_points: Number of grid points, >= 2. Defaults to `1024`.
            sigma: Width of the Gaussian broadening, > 0, or `None` for 1 %
                of the range of the nodes. Defaults to `None`.
            seed: Seed of the probes. Defaults to `None`.

        Returns:
            A tuple `(grid, density)` of NumPy arrays of shape `(num_points,)`.

        Raises:
            ValueError: if an argument is out of range.

        Example:

        ```python
        grid, density = op.density(num_matvecs=200, num_probes=4, seed=0)
        ```
        """
        return spectral_density(
            self._flat_matvec,
            self.num_parameters,
            num_matvecs=num_matvecs,
            num_probes=num_probes,
            num_points=num_points,
            sigma=sigma,
            seed=seed,
            dtype=self._dtype,
        )
