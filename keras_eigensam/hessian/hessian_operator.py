"""`HessianOperator`: the Hessian of a Keras model's loss as a `CurvatureOperator`."""

from keras_eigensam import validation
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.hvp import hvp
from keras_eigensam.hessian.operator import CurvatureOperator


class HessianOperator(CurvatureOperator):
    """The Hessian of a Keras model's mean loss over a batch or a data set.

    `M = ∇²L(w)`, the Hessian with respect to the trainable weights of the
    mean loss over `data` plus `model.losses` (weight and activity
    regularisers); see `CurvatureOperator` for the data, the distribution
    and the estimators. Every product is exact, also for embeddings and
    normalization layers (see `hvp`); `training` chooses the operator, and
    the two can differ by orders of magnitude (`benchmarks/hessian.md`), so
    report it with every figure.

    Args and errors: as `CurvatureOperator`'s, plus

        hvp_mode: `"reverse_over_reverse"` or `"forward_over_backward"`; see
            `hvp`. Defaults to `"reverse_over_reverse"`, the faster in this
            project's measurements (`benchmarks/hessian.md`). An unknown
            mode raises a `ValueError`.

    Example:

    ```python
    op = hessian.HessianOperator(model, "sparse_categorical_crossentropy",
                                 (x_batch, y_batch), training=False)
    eigvals, eigvecs = op.top_eigenpairs(k=5, num_matvecs=30)
    trace, std_error = op.trace(num_matvecs=99, method="hutch++", seed=0)
    grid, density = op.density(num_matvecs=200, num_probes=4, seed=0)
    ```

    Reference:
        - [Ghorbani et al., 2019](https://arxiv.org/abs/1901.10159)
        - [Yao et al., PyHessian, 2020](https://arxiv.org/abs/1912.07145)
    """

    kind = "Hessian"

    def __init__(
        self,
        model,
        loss,
        data,
        training=False,
        batch_size=None,
        hvp_mode=DEFAULT_HVP_MODE,
        jit_compile=False,
        check_deterministic=True,
    ):
        self.hvp_mode = validation.check_choice("hvp_mode", hvp_mode, HVP_MODES)
        super().__init__(
            model, loss, data, training, batch_size, jit_compile, check_deterministic
        )

    def _batch_product(self, batch, vectors):
        return hvp(
            lambda: self._probe.batch_loss(batch), self.variables, vectors, self.hvp_mode
        )
