"""`EmpiricalFisherOperator`: the empirical Fisher of a Keras model's loss."""

from keras import ops

from keras_eigensam.backend import autodiff
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.operator import CurvatureOperator


class EmpiricalFisherOperator(CurvatureOperator):
    """The empirical Fisher matrix of a model's mean loss over data.

    With `ℓ_i` the loss of example `i` and `L = Σ_i c_i ℓ_i` the mean loss
    (`c_i = 1/n` unweighted; see `probe.example_losses` for sample weights
    and the `"sum"` reduction),

    ```
    F·v = Σ_i c_i ∇ℓ_i (∇ℓ_iᵀ v) = Jᵀ (c ⊙ (J v))      J = ∂(ℓ_1 … ℓ_n)/∂w
    ```

    one forward-mode JVP of the per-example losses and one VJP, with no
    per-example gradient stored; averaged over batches as
    `CurvatureOperator` says. It is positive semi-definite and of rank at
    most the number of examples. It is not the (true) Fisher, whose
    labels are drawn from the model (Kunstner et al., 2019), and it is the
    "Fisher" of many SAM-family papers. `model.losses` are not part of it.
    A loss whose values have trailing axes (sequences) uses `ℓ_i` = their
    mean per example.

    Args and errors: as `CurvatureOperator`'s (`loss` must give
    per-example values for the Fisher, or the first product raises a
    `ValueError`).

    Example:

    ```python
    fisher = hessian.EmpiricalFisherOperator(model, "mse", (x, y))
    trace, std_error = fisher.trace(num_matvecs=60, method="hutch++", seed=0)
    ```

    Reference:
        - [Kunstner, Balles & Hennig, Limitations of the empirical Fisher
          approximation, 2019](https://arxiv.org/abs/1905.12558)
    """

    kind = "empirical Fisher"

    def _batch_product(self, batch, vectors):
        primals = autodiff.primals(self.variables)

        def losses():
            y_pred, _ = probe.model_outputs(self.model, batch, self.training)
            return probe.example_losses(
                self.loss, batch["y"], y_pred, batch.get("sample_weight")
            )

        def weighted(per_example, coefficients, directional):
            return ops.cast(coefficients, per_example.dtype) * directional

        return autodiff.jacobian_sandwich(
            losses, primals, autodiff.tangents(vectors, primals), weighted
        )
