"""The probe set and the loss measured on it.

What the Hessian tools and the curvature callbacks share (the batches
themselves are read by `keras_eigensam.hessian.data`): resolving the loss to
measure (`resolve_loss`),
reducing it like Keras (`mean_loss`), evaluating it at any weight values
without writing a variable (`model_loss`), lists of tensors shaped like
the weights (`check_vectors`, and flat NumPy views: `flatten`, `unflatten`),
and `ProbeLoss`, the mean loss of a model on a fixed probe set with its
gradient.
"""

import keras
import numpy as np
from keras import ops

from keras_eigensam import linalg
from keras_eigensam import validation
from keras_eigensam.backend import autodiff
from keras_eigensam.backend import replicas
from keras_eigensam.backend import tracing
from keras_eigensam.hessian import data as data_lib

#: Loss reductions whose result is a scalar.
REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")


# ------------------------------------------------------------------- loss


class _FunctionLoss(keras.losses.Loss):
    """A callable `fn(y_true, y_pred)` as a `Loss` with a mean reduction."""

    def __init__(self, fn, dtype):
        super().__init__(name=getattr(fn, "__name__", None), dtype=dtype)
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def check_model(model):
    """Returns `model` after checking it is a Keras model or layer.

    Raises:
        TypeError: naming `model` and its type.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "`model` must be a Keras model or layer. Received: "
            f"model={model!r} (of type {type(model).__name__})"
        )
    return model


def check_loss(loss):
    """Returns `loss` after the checks that need no model (`resolve_loss`
    does the rest when the model is known): `None`, or one Keras loss, the
    name of one, or a callable.

    Raises:
        TypeError, ValueError: as `resolve_loss`.
    """
    if loss is not None:
        _loss_function(loss, "loss")
    return loss


def _loss_function(loss, source):
    """The Keras loss or callable that `loss` (not None) names."""
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "The Hessian tools and curvature callbacks measure a model with "
            f"one loss; pass the loss to measure as `loss=`. Received: {source}={loss!r}"
        )
    message = (
        "`loss` must be a Keras loss, the name of one, or a callable "
        f"`loss(y_true, y_pred)`. Received: {source}={loss!r}"
    )
    if isinstance(loss, str):
        try:
            return keras.losses.get(loss)
        except ValueError:  # Keras's message names the value only
            raise ValueError(message) from None
    if not callable(loss):
        raise TypeError(message)
    return loss


def resolve_loss(loss, model):
    """The `keras.losses.Loss` to measure: `loss`, else `model.loss`.

    A callable `fn(y_true, y_pred)` becomes a loss with the
    `"sum_over_batch_size"` reduction, computed in the wider of floatx and
    the weights' dtype (a float64 model gets a float64 loss).

    Raises:
        TypeError: if the loss is neither a Keras loss, its name nor a
            callable; ValueError if it is a string that names no loss.
        ValueError: if `loss` is None and the model has no compiled loss,
            the model has several losses, or the loss does not reduce to a
            scalar.
    """
    source = "loss"
    if loss is None:
        loss, source = getattr(model, "loss", None), "model.loss"
        if loss is None:
            raise ValueError(
                "`loss` is None and the model has no compiled loss. Compile "
                "the model with a loss or pass `loss=`. Received: loss=None, "
                "model.loss=None"
            )
    fn = _loss_function(loss, source)
    if not isinstance(fn, keras.losses.Loss):
        weights = model.trainable_variables
        dtype = keras.config.floatx()
        if weights:
            dtype = keras.backend.result_type(dtype, weights[0].dtype)
        fn = _FunctionLoss(fn, dtype=dtype)
    if fn.reduction not in REDUCTIONS:
        raise ValueError(
            "The loss must reduce to a scalar; its reduction must be one of "
            f"{sorted(REDUCTIONS)}. Received: {source} with "
            f"reduction={fn.reduction!r}"
        )
    return fn


def loss_values(loss, y_true, y_pred):
    """`loss.call(y_true, y_pred)` in the loss's dtype: unreduced values.

    Raises:
        NotImplementedError: if `y_pred` carries a Keras mask.
    """
    if getattr(y_pred, "_keras_mask", None) is not None:
        raise NotImplementedError(
            "The Hessian tools do not support models with masked outputs. "
            "Compute the loss yourself and use `hessian.hvp`."
        )
    convert = lambda t: ops.convert_to_tensor(t, dtype=loss.dtype)  # noqa: E731
    y_pred = keras.tree.map_structure(convert, y_pred)
    y_true = keras.tree.map_structure(convert, y_true)
    return ops.convert_to_tensor(loss.call(y_true, y_pred), dtype=loss.dtype)


def mean_loss(loss, y_true, y_pred, sample_weight=None):
    """The loss of one batch, reduced like Keras's `Loss.__call__`.

    `Loss.__call__` divides the loss by the number of replicas when called in
    a replica context (so that summing gradients gives the mean), which would
    divide this replica's Hessian too; the reduction is done here instead.

    Raises:
        NotImplementedError: if `y_pred` carries a Keras mask.
    """
    values = loss_values(loss, y_true, y_pred)
    if len(values.shape) == 0:
        # The loss reduced itself (Keras leaves such values alone too).
        return values
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, values.dtype)
        # Per-example weights broadcast over any trailing loss axes.
        while len(sample_weight.shape) < len(values.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        while len(sample_weight.shape) > len(values.shape) and sample_weight.shape[-1] == 1:
            sample_weight = ops.squeeze(sample_weight, -1)
        values = values * sample_weight
    total = ops.sum(values)
    if loss.reduction == "sum":
        return total
    if loss.reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.sum(sample_weight * ops.ones_like(values))
    else:
        divisor = ops.cast(ops.size(values), values.dtype)
    return ops.divide_no_nan(total, divisor)


def example_losses(loss, y_true, y_pred, sample_weight=None):
    """Per-example losses `ℓ_i` and coefficients `c_i` with `L = Σ_i c_i ℓ_i`.

    `L` is `mean_loss(loss, y_true, y_pred, sample_weight)`. A loss whose
    per-example values have trailing axes (a sequence loss, shape `(n, t)`)
    gives `ℓ_i` = the mean over those axes. The empirical Fisher is
    `Σ_i c_i ∇ℓ_i ∇ℓ_iᵀ`: `c_i = w_i/n` for the mean reductions (`1/n`
    unweighted, as in curvlinops), `w_i` for `"sum"`, and `w_i / Σ w` for
    `"mean_with_sample_weight"` (a sample weight counts as a frequency).

    Raises:
        ValueError: if the loss reduces its values itself (no per-example
            values), or `sample_weight` is not one weight per example.
        NotImplementedError: if `y_pred` carries a Keras mask.
    """
    values = loss_values(loss, y_true, y_pred)
    if len(values.shape) == 0:
        raise ValueError(
            "The empirical Fisher needs per-example losses, but the loss "
            f"{loss.name!r} returns a scalar. Use a loss whose `call` returns "
            "one value per example."
        )
    n = ops.shape(values)[0]
    per_example = values
    if len(values.shape) > 1:
        per_example = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    trailing = ops.cast(ops.size(values) // n, values.dtype)
    if sample_weight is None:
        weights = ops.ones_like(per_example)
    else:
        weights = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
        if weights.shape[0] is not None and values.shape[0] is not None and (
            weights.shape[0] != values.shape[0]
        ):
            raise ValueError(
                "The empirical Fisher needs one sample weight per example. "
                f"Received: sample_weight of shape {tuple(sample_weight.shape)} "
                f"for {values.shape[0]} examples"
            )
    if loss.reduction == "sum":
        coefficients = weights * trailing
    elif loss.reduction == "mean_with_sample_weight" and sample_weight is not None:
        coefficients = ops.divide_no_nan(weights, ops.sum(weights))
    else:
        coefficients = weights / ops.cast(n, values.dtype)
    return per_example, coefficients


def model_outputs(model, batch, training=False, values=None):
    """`(y_pred, losses)` of `model` on `batch["x"]`; writes nothing.

    The model runs in a `keras.StatelessScope` that maps each trainable
    variable to `values` (default: the variable's own backing value, so that
    tapes and forward accumulators watching the variables see it and weight
    regularisers find a value); every state write (BatchNormalization
    statistics, seed states) lands in the scope and is dropped with it.
    `losses` is `model.losses` of that call (regularisers).
    """
    variables = model.trainable_variables
    if values is None:
        values = [v.value for v in variables]
    with keras.StatelessScope(state_mapping=list(zip(variables, values)), collect_losses=True):
        y_pred = model(batch["x"], training=training)
        losses = list(model.losses)
    return y_pred, losses


def model_loss(model, loss, batch, training=False, values=None):
    """`mean_loss` of `model` on `batch` plus `model.losses`; writes nothing.

    See `model_outputs`.
    """
    y_pred, losses = model_outputs(model, batch, training, values)
    result = mean_loss(loss, batch["y"], y_pred, batch.get("sample_weight"))
    extra = [ops.sum(ops.cast(t, result.dtype)) for t in losses]
    if extra:
        result = result + ops.sum(ops.stack(extra))
    return result


# ----------------------------------------------------------- flat vectors


def flatten(tensors):
    """A list of tensors as one float64 NumPy vector (C order, in list order)."""
    return np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in tensors])


def unflatten(flat, like):
    """`flatten`'s inverse: tensors shaped and typed like `like`'s entries."""
    tensors, offset = [], 0
    for reference in like:
        shape = tuple(reference.shape)
        size = int(np.prod(shape))
        tensors.append(
            ops.convert_to_tensor(
                np.reshape(flat[offset : offset + size], shape), dtype=reference.dtype
            )
        )
        offset += size
    return tensors


def check_vectors(vectors, variables, name):
    """`vectors` as tensors of the variables' dtypes, checked against them.

    Raises:
        ValueError: naming `name`, if `vectors` is not a list of one tensor
            per variable, shaped like it.
    """
    if not isinstance(vectors, (list, tuple)) or len(vectors) != len(variables):
        length = f" with {len(vectors)} entries" if isinstance(vectors, (list, tuple)) else ""
        raise ValueError(
            f"`{name}` must be a list of {len(variables)} tensors shaped like "
            f"`model.trainable_variables`. Received: {name} of type "
            f"{type(vectors).__name__}{length}"
        )
    checked = []
    for index, (vector, variable) in enumerate(zip(vectors, variables)):
        tensor = ops.convert_to_tensor(vector, dtype=variable.dtype)
        if tuple(tensor.shape) != tuple(variable.shape):
            raise ValueError(
                f"`{name}[{index}]` must have the shape of variable "
                f"{variable.path!r}, {tuple(variable.shape)}. Received: "
                f"shape {tuple(tensor.shape)}"
            )
        checked.append(tensor)
    return checked


# -------------------------------------------------------------- the loss


class ProbeLoss:
    """The mean loss of a model on a fixed probe set, at any weight values.

    ```
    L(w) = Σ_b n_b · L_b(w) / Σ_b n_b + Σ model.losses
    ```

    where `L_b` is the (sample-weighted) mean loss on batch `b` of `n_b`
    examples. `data` is read once; the model runs on weight *values* in a
    `keras.StatelessScope`, so no variable (weights, BatchNormalization
    statistics, seed states) is ever written. An unbuilt model is built by
    calling it once on the first batch in inference mode.

    Args:
        model: A Keras model (or layer) with trainable weights.
        loss: A Keras loss, its name, or a callable `loss(y_true, y_pred)`;
            `None` uses `model.loss`.
        data: One batch `(x, y)` or `(x, y, sample_weight)` (a tuple), or a
            `tf.data.Dataset` or iterable of such batches.
        training: Whether to run the model in training mode (batch
            statistics, dropout). Defaults to `False`.

    Raises:
        TypeError: if `data` or `loss` has the wrong type.
        ValueError: as `data.read_batches` and `resolve_loss`, or if the model
            has no trainable weights.

    Example:

    ```python
    objective = ProbeLoss(model, "mse", (x[:128], y[:128]))
    loss, grads = objective.value_and_gradient()
    ```
    """

    def __init__(self, model, loss, data, training=False):
        self.model = check_model(model)
        self.training = validation.check_bool("training", training)
        if hasattr(data, "first") and hasattr(data, "num_examples"):
            self.batches = data  # a `CurvatureData`, maybe streamed
            first = data.first()
        else:
            self.batches = data_lib.read_batches(data)
            first = self.batches[0]
        if not model.built:
            # Building creates the weights; inference mode writes no state.
            with replicas.strategy_of(model).scope():
                model(first["x"], training=False)
        self.variables = list(model.trainable_variables)
        if not self.variables:
            raise ValueError(
                "`model` has no trainable weights, so its Hessian is empty. "
                f"Received: model={model.name!r} with {len(model.weights)} "
                "weights, none trainable."
            )
        self.loss = resolve_loss(loss, model)
        self.num_examples = getattr(data, "num_examples", None) or sum(
            data_lib.num_examples(b["x"]) for b in self.batches
        )
        self._value_fn = None
        self._gradient_fn = None

    def batch_loss(self, batch, values=None):
        """The loss on one batch (a tensor), see `model_loss`."""
        return model_loss(self.model, self.loss, batch, self.training, values)

    def weights(self):
        """The current values of the trainable weights (tensors)."""
        return [ops.convert_to_tensor(v.value) for v in self.variables]

    def value(self, values=None):
        """`L(values)` (default: the current weights), a Python float."""
        if self._value_fn is None:
            self._value_fn = tracing.function(
                lambda values, batch: self.batch_loss(batch, values)
            )
        values = self.weights() if values is None else values
        total = 0.0
        for batch in self.batches:
            total += data_lib.num_examples(batch["x"]) * float(self._value_fn(values, batch))
        return total / self.num_examples

    def value_and_gradient(self, values=None):
        """`L(values)` (a float) and `∇L(values)` (tensors shaped like the weights)."""
        if self._gradient_fn is None:
            self._gradient_fn = tracing.function(
                lambda values, batch: autodiff.value_and_gradient(
                    lambda v: self.batch_loss(batch, v), values
                )
            )
        values = self.weights() if values is None else values
        total, grads = 0.0, None
        for batch in self.batches:
            n = data_lib.num_examples(batch["x"])
            loss, batch_grads = self._gradient_fn(values, batch)
            total += n * float(loss)
            # np.float64: a Python float would be rounded to float32 first.
            batch_grads = linalg.scale(batch_grads, np.float64(n / self.num_examples))
            grads = batch_grads if grads is None else linalg.add(grads, batch_grads)
        return total / self.num_examples, grads
