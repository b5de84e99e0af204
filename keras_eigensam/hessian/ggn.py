"""`GGNOperator`: the generalized Gauss-Newton matrix of a Keras model's loss."""

from keras_eigensam.backend import autodiff
from keras_eigensam.hessian import probe
from keras_eigensam.hessian.operator import CurvatureOperator


class GGNOperator(CurvatureOperator):
    """The generalized Gauss-Newton matrix of a model's mean loss over data.

    With `f(x; w)` the model's output (what the loss receives) and `J_b` its
    Jacobian with respect to the trainable weights on batch `b`,

    ```
    G_b = J_bᵀ · ∇²_f L_b(f) · J_b          L_b = mean loss of the batch
    G·v = J_bᵀ (∇²_f L_b (J_b v))           one forward-mode JVP, one VJP
    ```

    averaged over the batches as `CurvatureOperator` says. `∇²_f L_b` is
    computed by automatic differentiation of the loss in the outputs, so the
    product is exact for any loss twice differentiable in the model's
    output (mean squared error: `2/(n·d)·I`; cross-entropy on logits:
    `(diag(p) − ppᵀ)/n`). `G` is positive semi-definite when the loss is
    convex in the output, equals the Hessian for a model linear in its
    weights, and drops the Hessian's term `Σ ∂L/∂f · ∇²f` that carries its
    negative curvature.

    The split point is the model's output: with a softmax inside the model
    and `from_logits=False`, `f` is the probabilities and `G` is the GGN of
    cross-entropy in the probabilities, not the usual one in the logits
    (curvlinops, BackPACK); end the model with logits and use
    `from_logits=True` for that. `model.losses` (regularisers) are not part
    of `G` (their Hessian is not a Gauss-Newton term); add, e.g., `2λI` for
    an L2 penalty `λ‖w‖²` yourself.

    Args and errors: as `CurvatureOperator`'s (`loss` must give
    per-example values for the Fisher, or the first product raises a
    `ValueError`).

    Example:

    ```python
    ggn = hessian.GGNOperator(model, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), (x, y), batch_size=128)
    eigvals, eigvecs = ggn.top_eigenpairs(k=3)
    ```

    Reference:
        - [Schraudolph, 2002](https://doi.org/10.1162/08997660260028683)
        - [Martens, New insights and perspectives on the natural gradient
          method, 2020](https://arxiv.org/abs/1412.1193)
    """

    kind = "GGN"

    def _batch_product(self, batch, vectors):
        primals = autodiff.primals(self.variables)

        def outputs():
            y_pred, _ = probe.model_outputs(self.model, batch, self.training)
            return y_pred, None

        def loss_hessian_product(y_pred, _, u):
            return autodiff.output_hvp(
                lambda f: probe.mean_loss(self.loss, batch["y"], f, batch.get("sample_weight")),
                y_pred,
                u,
            )

        return autodiff.jacobian_sandwich(
            outputs, primals, autodiff.tangents(vectors, primals), loss_hessian_product
        )
