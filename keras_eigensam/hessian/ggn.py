"""The generalized Gauss-Newton matrix of a Keras model's loss: `GGNOperator`
over data sets, `make_ggn_product` for products inside a compiled step."""

from keras_eigensam import validation
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
        matvec = make_ggn_product(
            lambda: probe.model_outputs(self.model, batch, self.training)[0],
            lambda f: probe.mean_loss(self.loss, batch["y"], f, batch.get("sample_weight")),
            self.variables,
        )
        return matvec(vectors)


def make_ggn_product(outputs_fn, loss_fn, variables):
    """Returns a `matvec` of the generalized Gauss-Newton matrix at one point.

    ```
    f = outputs_fn()                   the model's output (one tensor)
    matvec(v) = Jᵀ (∇²_f loss_fn(f) · (J v))     J = ∂f/∂w
    ```

    Each product is one forward pass carrying a forward-mode JVP (`J v`),
    the loss Hessian in the outputs times it, and one backward pass
    (`Jᵀ r`): first derivatives of the model only, so no activations of a
    backward pass are kept, unlike a Hessian-vector product, and nothing is
    kept between products. Call it and the returned `matvec` in the same
    function (the same `tf.function` trace); it never all-reduces.

    Args:
        outputs_fn: Zero-argument callable returning the model's output, one
            floating tensor, computed from the current values of `variables`
            (read inside the call).
        loss_fn: Callable `loss_fn(outputs) -> scalar`, the loss in the
            outputs (twice differentiable there).
        variables: List of Keras variables (or `tf.Variable`s).

    Returns:
        A function `matvec(vectors) -> G·vectors` (lists of tensors shaped
        like `variables`).

    Raises:
        ValueError: as `keras_eigensam.hessian.hvp` for `variables` and
            `vectors`.

    Example:

    ```python
    matvec = hessian.make_ggn_product(
        lambda: model(x),
        lambda f: keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, f, from_logits=True)),
        model.trainable_variables,
    )
    ```
    """
    validation.check_callable("outputs_fn", outputs_fn, "a zero-argument function returning the outputs")
    validation.check_callable("loss_fn", loss_fn, "a function of the outputs returning the loss")
    primals = autodiff.primals(variables)

    def middle(outputs, _, directional):
        return autodiff.output_hvp(loss_fn, outputs, directional)

    def matvec(vectors):
        return autodiff.jacobian_sandwich(
            lambda: (outputs_fn(), None), primals, autodiff.tangents(vectors, primals), middle
        )

    return matvec
