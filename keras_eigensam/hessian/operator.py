"""Curvature matrices of a Keras model's loss as linear operators.

`CurvatureOperator` holds what every curvature matrix shares: the data
(`CurvatureData`, in memory or streamed), the batch-size-weighted sum over
batches and replicas, and the estimators (eigenpairs, trace, diagonal,
spectral density, SciPy export). `HessianOperator` (`hessian_operator.py`),
`GGNOperator` (`ggn.py`) and `EmpiricalFisherOperator` (`fisher.py`)
differ only in the product on one batch.

Cost model (every estimator takes `num_matvecs`, the number of products
it computes; `matvec_count` counts them): one product is one pass over all
of `data`, and costs, measured on CPU without XLA in
`benchmarks/curvature_operators.md` (MLP, two CNNs of 65k and 1.1M weights,
batch 128):

```
Hessian            1.7–2.5 gradients   (reverse over reverse)
GGN                1.2–1.5 gradients   (a forward-mode JVP, then a VJP)
empirical Fisher   1.2–2.1 gradients   (a forward-mode JVP, then a VJP)
```

with the activations of one batch (of one shard per replica) in memory at a
time: the Hessian's peak is about 1.7× a gradient's on the 1.1M-weight CNN,
the GGN's and Fisher's 1.1–1.2×. Lanczos keeps its `num_matvecs` basis
vectors (each of `num_parameters` entries, in the weights' dtype) in host
memory; at the default `tol` it stopped after 6–14 products where
`tol=None` spends 30.
"""

import keras
import numpy as np
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import distribute
from keras_eigensam.backend import replicas
from keras_eigensam.backend import tracing
from keras_eigensam.hessian import data as data_lib
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.data import CurvatureData
from keras_eigensam.hessian.estimators import CurvatureEstimators


class CurvatureOperator(CurvatureEstimators):
    """A curvature matrix `M` of a model's mean loss over a data set.

    ```
    L(w)  = Σ_b n_b · L_b(w) / Σ_b n_b          (mean loss over the data set)
    M·v   = Σ_b n_b · M_b·v / Σ_b n_b           (batch-size-weighted average)
    ```

    `L_b` is the (sample-weighted) mean loss of batch `b` of `n_b` examples,
    the last partial batch included, and `M_b` that batch's matrix: the
    Hessian (`HessianOperator`), the generalized Gauss-Newton matrix
    (`GGNOperator`) or the empirical Fisher (`EmpiricalFisherOperator`).
    Subclasses implement `_batch_product(batch, vectors) -> M_b·v`.

    Data (`CurvatureData`): one batch, in-memory arrays split by
    `batch_size`, a list of batches, or a `tf.data.Dataset` streamed anew
    at every product, which must yield the same batches every time (checked
    at construction; a reshuffling data set is refused).

    `training=False` runs the model in inference mode (moving statistics,
    no dropout); `training=True` uses batch statistics and draws dropout
    masks from the layers' current seed state, the same at every product.
    Neither writes any variable: the forward passes run in a
    `keras.StatelessScope`.

    Under a `tf.distribute` strategy (the model was built under its scope,
    or the operator is created inside one) every batch is split into one
    shard per replica; each replica computes `n_r · M_r·v` on its shard and
    both it and `n_r` are all-reduced (mean), so the product is that of the
    whole batch whatever the shard sizes, identical on all replicas.

    Estimators: `top_eigenpairs` (Lanczos with full reorthogonalisation or
    deflated power iteration; largest, smallest or largest-magnitude
    eigenvalues), `trace` (Hutchinson or Hutch++, with a standard error),
    `diagonal` (Hutchinson), `density` (stochastic Lanczos quadrature) and
    `to_scipy` (a `scipy.sparse.linalg.LinearOperator`). Each takes
    `num_matvecs`, the number of products it may compute. Vectors are lists
    of tensors shaped like `model.trainable_variables`.

    Args:
        model: A built Keras model (or layer) with trainable weights and one
            output tensor. An unbuilt model is built by calling it once on
            the first batch in inference mode.
        loss: A Keras loss: a `keras.losses.Loss`, its name (e.g.
            `"sparse_categorical_crossentropy"`) or a callable
            `loss(y_true, y_pred)` returning per-example losses or a scalar.
            Per-example losses are averaged with the loss's reduction
            (`"sum_over_batch_size"` for names and callables), weighted by
            `sample_weight` when the data has one. `None` uses `model.loss`.
        data: One batch `(x, y)` or `(x, y, sample_weight)` (a tuple), a
            list of batches, a `tf.data.Dataset` (streamed at every product;
            it must not reshuffle), or a `CurvatureData`.
        training: Whether to run the model in training mode (batch
            statistics, dropout). Defaults to `False`.
        batch_size: Split an in-memory `(x, y[, sample_weight])` into
            batches of this size (the last one partial). `None` keeps one
            batch. Defaults to `None`.
        jit_compile: Whether to compile the per-batch product with XLA.
            Defaults to `False`.
        check_deterministic: Whether to check that a streamed data set
            yields the same batches twice. Defaults to `True`.

    Raises:
        TypeError: if `model` is not a Keras model or layer, `loss` is not a
            loss, `data` is neither a batch nor an iterable of batches, or
            `training`/`jit_compile` is not a bool.
        ValueError: if `model` has no trainable weights, `data` has no
            batches or a batch without targets or examples, a streamed data
            set reshuffles, or, under a strategy, a batch has fewer examples
            than replicas.
        RuntimeError: if created inside `strategy.run` (use `hvp` there).
    """

    #: What the operator is, for messages and logs ("Hessian", "GGN", ...).
    kind = "curvature"

    def __init__(
        self,
        model,
        loss,
        data,
        training=False,
        batch_size=None,
        jit_compile=False,
        check_deterministic=True,
    ):
        probe.check_model(model)
        self.training = validation.check_bool("training", training)
        self.jit_compile = validation.check_bool("jit_compile", jit_compile)
        if replicas.in_replica_context():
            raise RuntimeError(
                f"{type(self).__name__} must be created outside `strategy.run`; "
                "inside a replica context use `hessian.hvp` and all-reduce "
                "the result."
            )
        self.model = model
        if isinstance(data, CurvatureData):
            self.data = data
        else:
            self.data = CurvatureData(data, batch_size, check_deterministic)
        self._strategy = replicas.strategy_of(model)
        # ProbeLoss builds the model, resolves the loss and gives L(w).
        self._probe = probe.ProbeLoss(model, loss, self.data, training=self.training)
        self.variables = self._probe.variables
        self.loss = self._probe.loss
        self.num_parameters = int(sum(int(np.prod(v.shape)) for v in self.variables))
        self.num_examples = self.data.num_examples
        #: Number of products computed so far (each over all of `data`).
        self.matvec_count = 0
        self._dtype = np.dtype(self.variables[0].dtype)
        # A fresh function per operator: tracing it is expected, so TF's
        # retracing warning (keyed on the Python function) stays quiet.
        self._batch_matvec = tracing.function(
            lambda batch, vectors: self._weighted_product(batch, vectors),
            self.jit_compile,
        )
        self._shards = None
        if self._strategy.num_replicas_in_sync > 1:
            self._replicated_matvec = replicas.run_replicated(
                self._strategy, self._replica_product
            )
            if not self.data.streamed:  # split once, not at every product
                self._shards = [self._split(batch) for batch in self.data]

    # ----------------------------------------------------------- the operator

    def _batch_product(self, batch, vectors):
        """`M_b·v` on one batch (or one replica's shard)."""
        raise NotImplementedError

    def matvec(self, vectors):
        """The product `M·v` over all of `data`.

        Args:
            vectors: List of tensors (or arrays) shaped like
                `model.trainable_variables`.

        Returns:
            List of tensors `M·v`, shaped like `model.trainable_variables`.

        Raises:
            ValueError: if `vectors` does not match the trainable variables
                in length or shapes.

        Example:

        ```python
        v = [keras.ops.ones_like(w) for w in model.trainable_variables]
        mv = op.matvec(v)
        ```
        """
        vectors = probe.check_vectors(vectors, self.variables, "vectors")
        self.matvec_count += 1
        if self._strategy.num_replicas_in_sync == 1:
            batches, batch_matvec = self.data, self._batch_matvec
        else:
            batches = self._shards or (self._split(batch) for batch in self.data)
            batch_matvec = self._replicated_matvec
        total, count = None, None
        for batch in batches:
            mv, n = batch_matvec(batch, vectors)
            total = mv if total is None else linalg.add(total, mv)
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

    def to_scipy(self):
        """The operator as a `scipy.sparse.linalg.LinearOperator`.

        It acts on flat float64 vectors of length `num_parameters` (the
        trainable variables flattened in C order and concatenated in the
        order of `model.trainable_variables`), and is symmetric, so SciPy's
        solvers apply: `scipy.sparse.linalg.eigsh(op.to_scipy(), k=5)`.
        Every product goes through `matvec` (and counts in
        `matvec_count`); the products are computed in the weights' dtype.

        Returns:
            A `scipy.sparse.linalg.LinearOperator` of shape
            `(num_parameters, num_parameters)` and dtype float64.

        Raises:
            ImportError: if SciPy is not installed.

        Example:

        ```python
        from scipy.sparse.linalg import eigsh
        eigvals = eigsh(op.to_scipy(), k=5, which="LA", return_eigenvectors=False)
        ```
        """
        try:
            from scipy.sparse.linalg import LinearOperator
        except ImportError as error:  # pragma: no cover - scipy is a test dep
            raise ImportError(
                "`to_scipy` needs SciPy: `pip install scipy`."
            ) from error
        n = self.num_parameters

        def matvec(flat):
            flat = np.asarray(flat, dtype=np.float64).reshape(-1)
            return self._flat_matvec(flat)

        return LinearOperator(
            (n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64
        )

    def _split(self, batch):
        """`batch` as one shard per replica (a distributed value)."""
        return replicas.split_batch(self._strategy, batch, data_lib.num_examples(batch["x"]))

    def _weighted_product(self, batch, vectors):
        """`(n · M_b·v, n)` for one batch (or one replica's shard)."""
        mv = self._batch_product(batch, vectors)
        n = ops.cast(ops.shape(keras.tree.flatten(batch["x"])[0])[0], self.variables[0].dtype)
        return linalg.scale(mv, n), n

    def _replica_product(self, shard, vectors):
        mv, n = self._batch_matvec(shard, vectors)
        # Mean of n_r·M_r·v over mean of n_r is the global batch's product
        # for any shard sizes.
        return distribute.all_reduce_mean(mv), distribute.all_reduce_mean(n)

    def _flat_matvec(self, flat):
        return probe.flatten(self.matvec(probe.unflatten(flat, self.variables)))
