"""`HessianOperator`: the Hessian of a Keras model's loss as a linear operator."""

import keras
import numpy as np
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import distribute
from keras_eigensam.backend import replicas
from keras_eigensam.backend import tracing
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.density import spectral_density
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.hvp import hvp
from keras_eigensam.hessian.lanczos import lanczos_eigenpairs
from keras_eigensam.hessian.power_iteration import deflated_power_iteration
from keras_eigensam.hessian.trace import hutchinson_trace

#: The eigen-solvers of `HessianOperator.top_eigenpairs`.
EIGEN_METHODS = ("power", "lanczos")


class HessianOperator:
    """The Hessian of a Keras model's loss as a linear operator.

    The operator is `H = ∇²L(w)`, the Hessian with respect to the model's
    trainable weights `w` of the mean loss over the examples in `data`, plus
    `model.losses` (weight and activity regularisers):

    ```
    L(w) = Σ_b n_b · L_b(w) / Σ_b n_b + Σ model.losses
    H·v  = Σ_b n_b · H_b·v / Σ_b n_b        # batch-size-weighted average
    ```

    where `L_b` is the (sample-weighted) mean loss on batch `b` of `n_b`
    examples (`keras_eigensam.hessian.probe.ProbeLoss`). The batches are
    read once, at construction, and kept: power iteration and Lanczos need
    the same linear map at every product, and a shuffled or augmented
    dataset would change it between products. Every product is exact, also
    for embeddings and normalization layers (see `hvp`).

    `training` chooses the operator, and the two can differ by orders of
    magnitude (`benchmarks/hessian.md`), so report it with every figure.
    `training=False` uses BatchNormalization's moving statistics and
    disables dropout; `training=True` uses batch statistics and draws
    dropout masks from the layers' current seed state, the same masks for
    every product (the operator stays linear and symmetric). Neither changes
    the model: the forward passes run in a `keras.StatelessScope`, so moving
    statistics and seed states are never written, and the model's
    `trainable` flags are not touched.

    Under a `tf.distribute` strategy (the model was built under its scope,
    or the operator is created inside one) every batch is split into one
    shard per replica; each replica computes `n_r · H_r·v` on its shard and
    both it and `n_r` are all-reduced (mean), so the result is the Hessian of
    the global batch's loss whatever the shard sizes, and is identical on all
    replicas. With `training=True`, BatchNormalization then uses each
    shard's statistics, as it does in a distributed training step.

    The estimators are free functions over a `matvec`
    (`power_iteration.deflated_power_iteration`,
    `lanczos.lanczos_eigenpairs`, `trace.hutchinson_trace`,
    `density.spectral_density`); the methods here run them on this
    operator. Eigenvalues come back as NumPy arrays, eigenvectors as lists
    of tensors shaped like `model.trainable_variables`, with unit global
    norm. `num_parameters`, `num_examples` and `num_hvps` (products computed
    so far, each over all of `data`) help to budget a computation;
    `loss_value()` gives `L(w)` itself.

    Args:
        model: A built Keras model (or layer) with trainable weights. An
            unbuilt model is built by calling it once on the first batch in
            inference mode.
        loss: A Keras loss: a `keras.losses.Loss`, its name (e.g.
            `"sparse_categorical_crossentropy"`) or a callable
            `loss(y_true, y_pred)` returning per-example losses or a scalar.
            Per-example losses are averaged with the loss's reduction
            (`"sum_over_batch_size"` for names and callables), weighted by
            `sample_weight` when the data has one. `None` uses `model.loss`.
        data: One batch `(x, y)` or `(x, y, sample_weight)` (a tuple), or a
            `tf.data.Dataset` or other iterable of such batches.
        training: Whether to run the model in training mode (batch
            statistics, dropout). Defaults to `False`.
        hvp_mode: `"reverse_over_reverse"` or `"forward_over_backward"`; see
            `hvp`. Defaults to `"reverse_over_reverse"`, the faster in this
            project's measurements (`benchmarks/hessian.md`).
        jit_compile: Whether to compile the per-batch HVP with XLA. Defaults
            to `False`.

    Raises:
        TypeError: if `model` is not a Keras model or layer, `loss` is not a
            loss, `data` is neither a batch nor an iterable of batches, or
            `training`/`jit_compile` is not a bool.
        ValueError: if `model` has no trainable weights, `data` has no
            batches or a batch without targets or examples, `hvp_mode` is
            unknown, or, under a strategy, a batch has fewer examples than
            replicas.
        RuntimeError: if created inside `strategy.run` (use `hvp` there).

    Example:

    ```python
    op = hessian.HessianOperator(model, "sparse_categorical_crossentropy",
                                 (x_batch, y_batch), training=False)
    eigvals, eigvecs = op.top_eigenpairs(k=5, method="lanczos", num_steps=30)
    trace = op.trace(num_samples=100, seed=0)
    grid, density = op.density(num_steps=50, num_probes=4, seed=0)
    ```

    Reference:
        - [Ghorbani et al., 2019](https://arxiv.org/abs/1901.10159)
        - [Yao et al., PyHessian, 2020](https://arxiv.org/abs/1912.07145)
    """

    def __init__(
        self,
        model,
        loss,
        data,
        training=False,
        hvp_mode=DEFAULT_HVP_MODE,
        jit_compile=False,
    ):
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                "`model` must be a Keras model or layer. Received: "
                f"model={model!r} (of type {type(model).__name__})"
            )
        self.training = validation.check_bool("training", training)
        self.jit_compile = validation.check_bool("jit_compile", jit_compile)
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if replicas.in_replica_context():
            raise RuntimeError(
                "HessianOperator must be created outside `strategy.run`; "
                "inside a replica context use `hessian.hvp` and all-reduce "
                "the result."
            )
        self.model = model
        self._strategy = replicas.strategy_of(model)
        self._probe = probe.ProbeLoss(model, loss, data, training=self.training)
        self.variables = self._probe.variables
        self.loss = self._probe.loss
        self.num_parameters = int(sum(int(np.prod(v.shape)) for v in self.variables))
        self.num_examples = self._probe.num_examples
        #: Number of Hessian-vector products computed so far (each over all
        #: of `data`).
        self.num_hvps = 0
        self._dtype = np.dtype(self.variables[0].dtype)
        # A fresh function per operator: tracing it is expected, so TF's
        # retracing warning (keyed on the Python function) stays quiet.
        self._batch_hvp = tracing.function(
            lambda batch, vectors: self._weighted_batch_hvp(batch, vectors),
            self.jit_compile,
        )
        if self._strategy.num_replicas_in_sync > 1:
            self._distributed_batches = [
                replicas.split_batch(self._strategy, batch, probe.batch_size(batch["x"]))
                for batch in self._probe.batches
            ]
            self._distributed_hvp = replicas.run_replicated(
                self._strategy, self._replica_hvp
            )

    # ----------------------------------------------------------- the operator

    def matvec(self, vectors):
        """Hessian-vector product `H·v` over all of `data`.

        Args:
            vectors: List of tensors (or arrays) shaped like
                `model.trainable_variables`.

        Returns:
            List of tensors `H·v`, shaped like `model.trainable_variables`.

        Raises:
            ValueError: if `vectors` does not match the trainable variables
                in length or shapes.

        Example:

        ```python
        v = [keras.ops.ones_like(w) for w in model.trainable_variables]
        hv = op.matvec(v)
        ```
        """
        vectors = probe.check_vectors(vectors, self.variables, "vectors")
        self.num_hvps += 1
        if self._strategy.num_replicas_in_sync > 1:
            batches, batch_hvp = self._distributed_batches, self._distributed_hvp
        else:
            batches, batch_hvp = self._probe.batches, self._batch_hvp
        total, count = None, None
        for batch in batches:
            hv, n = batch_hvp(batch, vectors)
            total = hv if total is None else linalg.add(total, hv)
            count = n if count is None else count + n
        # A tensor of the weights' dtype: a Python float would be rounded
        # to float32 on its way to a float64 model.
        return linalg.scale(total, 1.0 / count)

    def loss_value(self):
        """The mean loss `L(w)` over `data`, including `model.losses`.

        Returns:
            A Python float.
        """
        return self._probe.value()

    def _weighted_batch_hvp(self, batch, vectors):
        """`(n · H_b·v, n)` for one batch (or one replica's shard)."""
        hv = hvp(
            lambda: self._probe.batch_loss(batch), self.variables, vectors, self.hvp_mode
        )
        n = ops.cast(ops.shape(keras.tree.flatten(batch["x"])[0])[0], self.variables[0].dtype)
        return linalg.scale(hv, n), n

    def _replica_hvp(self, shard, vectors):
        hv, n = self._batch_hvp(shard, vectors)
        # Mean of n_r·H_r·v over mean of n_r is the global-batch Hessian for
        # any shard sizes.
        return distribute.all_reduce_mean(hv), distribute.all_reduce_mean(n)

    def _flat_matvec(self, flat):
        return probe.flatten(self.matvec(probe.unflatten(flat, self.variables)))

    # ---------------------------------------------------------- estimators

    def top_eigenpairs(
        self,
        k=1,
        method="power",
        max_iterations=100,
        tol=1e-4,
        initial=None,
        num_steps=None,
        seed=None,
    ):
        """The `k` top eigenvalues of the Hessian and their eigenvectors.

        `method="power"` runs power iteration with deflation
        (`power_iteration.deflated_power_iteration`): the `k` eigenvalues
        of largest *absolute* value, up to `max_iterations` products each.
        `method="lanczos"` runs `num_steps` Lanczos steps with full
        reorthogonalisation from one start vector
        (`lanczos.lanczos_eigenpairs`): the `k` largest *algebraic*
        eigenvalues, from `num_steps` products in all, usually far fewer
        than power iteration needs; it keeps `num_steps` vectors of the size
        of the model in host memory.

        Args:
            k: Number of eigenpairs, an integer >= 1. Defaults to `1`.
            method: `"power"` or `"lanczos"`. Defaults to `"power"`.
            max_iterations: Power iteration: the maximum number of products
                per eigenpair. Defaults to `100`.
            tol: Power iteration: relative tolerance on the change of the
                eigenvalue and on the residual `‖Hv − λv‖/|λ|` (both must
                hold), or `None` to always run `max_iterations`. A warning
                reports eigenpairs that did not converge. Defaults to `1e-4`.
            initial: Start vector (list of tensors shaped like the trainable
                variables): of the first power iteration, or of Lanczos.
                `None` draws a Gaussian vector. Defaults to `None`.
            num_steps: Lanczos: number of steps (products), >= `k`; capped
                at the number of parameters. `None` uses `max(30, 2k)`.
                Defaults to `None`.
            seed: Seed of the random start vectors. Defaults to `None`.

        Returns:
            A tuple `(eigvals, eigvecs)`: a NumPy array of shape `(k,)` and a
            list of `k` eigenvectors, each a list of tensors shaped like the
            trainable variables with unit global norm. Lanczos sorts the
            eigenvalues in decreasing order; power iteration returns them in
            the order found (decreasing absolute value).

        Raises:
            ValueError: if `k` < 1 or exceeds the number of parameters,
                `method` is unknown, `num_steps` < `k`, `max_iterations` < 1,
                `tol` <= 0, or `initial` does not match the variables.

        Example:

        ```python
        eigvals, eigvecs = op.top_eigenpairs(k=5, method="lanczos", num_steps=30)
        lam_max, v = eigvals[0], eigvecs[0]
        ```
        """
        k = validation.check_int("k", k, minimum=1)
        if k > self.num_parameters:
            raise ValueError(
                f"`k` must be at most the number of parameters "
                f"({self.num_parameters}). Received: k={k}"
            )
        method = validation.check_choice("method", method, EIGEN_METHODS)
        max_iterations = validation.check_int("max_iterations", max_iterations, minimum=1)
        if tol is not None:
            tol = validation.check_number("tol", tol, minimum=0.0, strict=True)
        if num_steps is None:
            num_steps = max(30, 2 * k)
        num_steps = validation.check_int("num_steps", num_steps, minimum=1)
        if num_steps < k:
            raise ValueError(
                "`num_steps` must be at least `k`: m Lanczos steps give at "
                f"most m eigenpairs. Received: num_steps={num_steps}, k={k}"
            )
        if initial is not None:
            initial = probe.check_vectors(initial, self.variables, "initial")
        rng = np.random.default_rng(seed)
        if method == "lanczos":
            if initial is not None:
                start = probe.flatten(initial)
            else:
                start = rng.standard_normal(self.num_parameters)
            eigvals, vectors = lanczos_eigenpairs(
                self._flat_matvec, start, k, num_steps, rng, self._dtype
            )
            return eigvals, [probe.unflatten(v, self.variables) for v in vectors]

        def start(index):
            if index == 0 and initial is not None:
                return initial
            return probe.unflatten(rng.standard_normal(self.num_parameters), self.variables)

        return deflated_power_iteration(
            self.matvec, k, start, max_iterations, tol
        )

    def trace(self, num_samples=100, seed=None):
        """Hutchinson estimate of the Hessian's trace (`trace.hutchinson_trace`).

        ```
        tr(H) ≈ (1/m) Σ_i z_iᵀ H z_i,    z_i with independent ±1 entries
        ```

        Args:
            num_samples: Number of probes `m` (one product each), >= 1.
                Defaults to `100`.
            seed: Seed of the probes. Defaults to `None`.

        Returns:
            The estimate, a Python float.

        Raises:
            ValueError: if `num_samples` < 1.

        Example:

        ```python
        trace = op.trace(num_samples=200, seed=0)
        ```
        """
        return hutchinson_trace(
            self._flat_matvec, self.num_parameters, num_samples, seed
        )

    def density(self, num_steps=50, num_probes=4, num_points=1024, sigma=None, seed=None):
        """Spectral density by stochastic Lanczos quadrature.

        See `density.spectral_density`: `num_steps × num_probes` products,
        a density of the eigenvalues that integrates to 1 over the grid.

        Args:
            num_steps: Lanczos steps per probe (products), >= 1; capped at the
                number of parameters. Defaults to `50`.
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
        grid, density = op.density(num_steps=50, num_probes=4, seed=0)
        plt.semilogy(grid, density + 1e-7)
        ```
        """
        return spectral_density(
            self._flat_matvec,
            self.num_parameters,
            num_steps=num_steps,
            num_probes=num_probes,
            num_points=num_points,
            sigma=sigma,
            seed=seed,
            dtype=self._dtype,
        )
