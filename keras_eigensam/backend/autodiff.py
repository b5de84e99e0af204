"""TensorFlow automatic differentiation for the Hessian code.

Gradients and Hessian-vector products with `tf.GradientTape` and
`tf.autodiff.ForwardAccumulator`, densifying `tf.IndexedSlices`, and a
context in which normalization layers compute moments whose second
derivatives are exact. `keras_eigensam.hessian` validates arguments and
documents the API; this module does the TensorFlow work.
"""

import contextlib
import threading
import warnings

import keras
import tensorflow as tf

from keras_eigensam import linalg

try:  # Keras's TensorFlow backend; private, hence guarded.
    from keras.src.backend.tensorflow import nn as _keras_tf_nn
except ImportError:  # pragma: no cover - depends on the Keras version
    _keras_tf_nn = None

_ZERO = tf.UnconnectedGradients.ZERO


def densify(values):
    """`values` (a list) with every `tf.IndexedSlices` made a dense tensor.

    Embedding gradients, and the JVPs of their gradients, come back as
    `IndexedSlices` whose indices repeat; the vector algebra of
    `keras_eigensam.linalg` and the outer differentiation need dense tensors.
    `None` entries are kept.
    """
    return [
        tf.convert_to_tensor(value) if isinstance(value, tf.IndexedSlices) else value
        for value in values
    ]


# ------------------------------------------------------------ exact moments


def _exact_moments(x, axes, keepdims):
    """`tf.nn.moments` without its `stop_gradient` on the mean.

    The same forward values (the same operations), but the variance
    `mean((x − mean(x))²)` depends on `x` through the mean too, so its second
    derivatives are exact.
    """
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axes)
        variance = tf.squeeze(variance, axes)
    return mean, variance


_lock = threading.Lock()
_depth = 0
_original = None
_warned = False


@contextlib.contextmanager
def exact_moments():
    """Context in which Keras computes exact moments, for second derivatives.

    Keras's BatchNormalization (training mode), LayerNormalization and
    GroupNormalization compute their statistics with `tf.nn.moments`
    (through `keras.src.backend.tensorflow.nn._compute_moments`), which stops
    the gradient through the mean inside the variance:

    ```
    variance = mean((x − stop_gradient(mean(x)))²)
    ```

    First derivatives are unchanged by the stop (the derivative of the
    variance with respect to the mean is `−2·mean(x − mean(x)) = 0`), second
    derivatives are not. While this context is active (on any thread),
    `_compute_moments` is replaced by the same computation without the stop;
    forward values and first derivatives are the same, and Hessians recorded
    (or traced) inside the context are exact. Contexts nest; the original is
    restored when the outermost one exits. Synchronized BatchNormalization
    computes `E[x²] − E[x]²`, which is already exact.

    If the installed Keras has no `_compute_moments`, a `RuntimeWarning`
    says so (once) and nothing is replaced.
    """
    global _depth, _original, _warned
    with _lock:
        patchable = _keras_tf_nn is not None and hasattr(
            _keras_tf_nn, "_compute_moments"
        )
        if patchable:
            if _depth == 0:
                _original = _keras_tf_nn._compute_moments
                _keras_tf_nn._compute_moments = _exact_moments
            _depth += 1
        elif not _warned:
            _warned = True
            warnings.warn(
                "keras_eigensam could not find Keras's "
                "`keras.src.backend.tensorflow.nn._compute_moments`; Hessians "
                "of models with BatchNormalization (training mode), "
                "LayerNormalization or GroupNormalization may be inexact with "
                "this Keras version.",
                RuntimeWarning,
                stacklevel=3,
            )
    try:
        yield
    finally:
        if patchable:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _keras_tf_nn._compute_moments = _original
                    _original = None


# ------------------------------------------------- gradients and products


def primals(variables):
    """The backing `tf.Variable`s of `variables`, what the tapes watch.

    Keras 3 variables wrap a `tf.Variable`; a `ForwardAccumulator` only sees
    reads of that backing variable, so it is the primal.

    Raises:
        ValueError: if `variables` is empty or a value is not a
            `tf.Variable` (read inside a `keras.StatelessScope` or an
            autocast scope).
    """
    if isinstance(variables, (tf.Variable, keras.Variable)):
        variables = [variables]
    result = []
    for variable in variables:
        value = variable.value if isinstance(variable, keras.Variable) else variable
        if not isinstance(value, tf.Variable):
            raise ValueError(
                "`variables` must be Keras variables backed by a `tf.Variable` "
                "(or `tf.Variable`s) whose value is read by `loss_fn`. "
                f"Received: variable {variable.name!r} whose value is a "
                f"{type(value).__name__}; compute the HVP outside any "
                "`keras.StatelessScope` or autocast scope."
            )
        result.append(value)
    if not result:
        raise ValueError("`variables` must not be empty. Received: variables=[]")
    return result


def tangents(vectors, primals):
    """`vectors` as tensors of the primals' dtypes, checked against shapes.

    Raises:
        ValueError: if `vectors` is not a list of one tensor per primal, or
            a shape differs.
    """
    if not isinstance(vectors, (list, tuple)):
        raise ValueError(
            "`vectors` must be a list of tensors, one per variable. "
            f"Received: vectors of type {type(vectors).__name__}"
        )
    if len(vectors) != len(primals):
        raise ValueError(
            f"`vectors` must have one tensor per variable ({len(primals)}). "
            f"Received: {len(vectors)} tensors"
        )
    result = []
    for index, (vector, primal) in enumerate(zip(vectors, primals)):
        tangent = tf.cast(tf.convert_to_tensor(vector), primal.dtype)
        if not tangent.shape.is_compatible_with(primal.shape):
            raise ValueError(
                f"`vectors[{index}]` must have the shape of variable "
                f"{primal.name!r}, {tuple(primal.shape)}. Received: "
                f"shape {tuple(tangent.shape)}"
            )
        result.append(tangent)
    return result


def gradient(loss_fn, primals):
    """Dense `∇ loss_fn()` with respect to `primals` (zeros if unconnected).

    Raises:
        ValueError: if `loss_fn` does not return a scalar.
    """
    with tf.GradientTape() as tape:
        tape.watch(primals)
        loss = loss_fn()
    if loss.shape.rank not in (None, 0):
        raise ValueError(
            "`loss_fn` must return a scalar loss. Received: a tensor of "
            f"shape {tuple(loss.shape)}"
        )
    # The outer differentiation and the vector math need dense tensors.
    return densify(tape.gradient(loss, primals, unconnected_gradients=_ZERO))


def hvp(loss_fn, primals, tangents, mode):
    """`H·tangents` of `loss_fn` at `primals`, by `mode` (dense, exact moments).

    ```
    forward_over_backward:  JVP of the gradient (a ForwardAccumulator
                            around a GradientTape)
    reverse_over_reverse:   gradient of <∇L, v> (a tape over the gradient)
    ```

    In a graph, the passes wait for `tangents`: the forward pass does not
    depend on them (only later operations do), and without the wait the
    executor starts the passes of the next product of an iteration (power,
    Lanczos) while this one runs, which keeps the activations of several
    products alive at once.
    """
    with exact_moments(), tf.control_dependencies(tangents):
        if mode == "forward_over_backward":
            with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
                grads = gradient(loss_fn, primals)
            # The JVP of a densified embedding gradient is IndexedSlices again.
            return densify(
                [accumulator.jvp(g, unconnected_gradients=_ZERO) for g in grads]
            )
        with tf.GradientTape() as outer:
            outer.watch(primals)
            grads = gradient(loss_fn, primals)
            directional = linalg.inner(grads, tangents)
        return densify(outer.gradient(directional, primals, unconnected_gradients=_ZERO))


def persistent_hvp(loss_fn, primals):
    """`matvec(tangents)` replaying one recorded forward and backward pass.

    The gradient is recorded once on a persistent tape (with exact moments);
    every product is one more backward pass through it,
    `outer.gradient(g, w, output_gradients=v)`. In a graph, each pass waits
    for its `tangents`, as in `hvp`: the parts of a pass that do not depend
    on them would otherwise run for every product of an iteration at once,
    ahead of the products themselves (measured on ResNet-18, batch 32, five
    products: 690–720 MiB of tensors alive at the peak against 810–850).
    """
    with exact_moments(), tf.GradientTape(persistent=True) as outer:
        outer.watch(primals)
        grads = gradient(loss_fn, primals)

    def matvec(tangents):
        with tf.control_dependencies(tangents):
            return densify(
                outer.gradient(
                    grads, primals, output_gradients=tangents, unconnected_gradients=_ZERO
                )
            )

    return matvec


def microbatched_sum(product, batch, size):
    """`matvec(tangents)` summing a product over micro-batches, one at a time.

    `batch` is a structure of tensors (or `None`s) sharing a leading axis of
    `n` examples, and `product(part, tangents)` a curvature product (a list
    of tensors) of the mean loss on a part of it. The batch is cut into
    `m = ceil(n / size)` micro-batches, the first of `n − (m − 1)·size`
    examples and the others of `size`, and

    ```
    matvec(v) = Σ_c (n_c / n) · product(part c, v)
    ```

    which is the whole batch's product (Hessian, Gauss-Newton) when the loss
    is a mean over examples plus terms that do not depend on them (weight
    regularisers). The micro-batches are visited by a `tf.while_loop` with
    `parallel_iterations=1`, each product recorded and freed in turn, so the
    activations alive are one micro-batch's; every micro-batch after the
    first has the static size `size`, and the first is computed before the
    loop, as XLA needs static shapes.
    """
    batch = tf.nest.map_structure(
        lambda t: None if t is None else tf.convert_to_tensor(t), batch
    )
    leaves = [t for t in tf.nest.flatten(batch) if t is not None]
    n = tf.shape(leaves[0])[0]
    # A micro-batch larger than the batch is the batch (a constant of the
    # shapes, so XLA still sees a static size).
    size = tf.minimum(size, n)
    count = (n + size - 1) // size
    first = n - (count - 1) * size

    def rows(start, length):
        return tf.nest.map_structure(lambda t: _rows(t, start, length), batch)

    def weighted(part_batch, examples, tangents):
        products = product(part_batch, tangents)
        weight = tf.cast(examples, tangents[0].dtype) / tf.cast(n, tangents[0].dtype)
        return [weight * p for p in products]

    def matvec(tangents):
        initial = weighted(rows(0, first), first, tangents)

        def body(index, accumulated):
            # Waits for the previous micro-batch: without the wait the
            # executor starts this forward pass (it depends only on `index`)
            # while the previous one runs, and two micro-batches' activations
            # are alive at once (measured: more than the whole batch's).
            with tf.control_dependencies(accumulated):
                products = weighted(rows(first + index * size, size), size, tangents)
            return index + 1, [a + p for a, p in zip(accumulated, products)]

        _, result = tf.while_loop(
            lambda index, _: index < count - 1,
            body,
            (tf.constant(0), initial),
            parallel_iterations=1,
        )
        return result

    return matvec


def _rows(tensor, start, size):
    """`size` rows of `tensor` from `start` (`size` a constant of the shapes
    under XLA: a dynamic slice of static size); `None` stays `None`."""
    if tensor is None:
        return None
    rest = tensor.shape.rank - 1
    return tf.slice(
        tensor, tf.stack([start] + [0] * rest), tf.stack([size] + [-1] * rest)
    )


def value_and_gradient(fn, values):
    """`fn(values)` and its dense gradient with respect to the tensors `values`."""
    with tf.GradientTape() as tape:
        tape.watch(values)
        value = fn(values)
    return value, densify(tape.gradient(value, values, unconnected_gradients=_ZERO))


def value_aux_and_gradient(fn, sources, watch=False):
    """Runs `fn()` on a tape and differentiates its first output.

    `fn` returns `(value, aux)`: `value` is the scalar to differentiate,
    `aux` anything else the caller needs back. `sources` are variables (or
    tensors, with `watch=True`). Returns `(value, aux, grads)`, dense, with
    zeros for unconnected sources. The train step's passes use it.
    """
    with tf.GradientTape() as tape:
        if watch:
            tape.watch(sources)
        value, aux = fn()
    grads = tape.gradient(value, sources, unconnected_gradients=_ZERO)
    return value, aux, densify(grads)


def jacobian_sandwich(fn, primals, tangents, middle):
    """`Jᵀ · middle(J·v)`, with `J` the Jacobian of `fn()`'s output.

    `fn()` returns `(outputs, aux)`; `outputs` (one tensor) is
    differentiated with respect to `primals`, `aux` is passed through. One
    forward pass records `outputs` on a tape and, on a forward accumulator,
    its directional derivative `u = J·v` (`v` = `tangents`); `middle(outputs,
    aux, u)` returns the cotangent `r`, and one backward pass gives `Jᵀ·r`:

    ```
    GGN:              middle = H_ℓ(outputs) · u      (loss Hessian in outputs)
    empirical Fisher: middle = c ⊙ u                 (outputs = per-example losses)
    ```

    Only first derivatives of `fn` are taken, so normalization layers need no
    exact moments. Returns dense tensors shaped like `primals`. In a graph
    the passes wait for `tangents`, as in `hvp`.
    """
    with tf.control_dependencies(tangents), tf.GradientTape() as tape:
        tape.watch(primals)
        with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
            outputs, aux = fn()
    directional = accumulator.jvp(outputs, unconnected_gradients=_ZERO)
    cotangent = middle(outputs, aux, directional)
    return densify(
        tape.gradient(outputs, primals, output_gradients=cotangent, unconnected_gradients=_ZERO)
    )


def output_hvp(loss_fn, outputs, vector):
    """`∇²_o loss_fn(o) · vector` at `o = outputs` (the weights held fixed)."""
    outputs = tf.stop_gradient(outputs)
    with tf.GradientTape() as outer:
        outer.watch(outputs)
        with tf.GradientTape() as inner:
            inner.watch(outputs)
            loss = loss_fn(outputs)
        grad = inner.gradient(loss, outputs, unconnected_gradients=_ZERO)
    return outer.gradient(grad, outputs, output_gradients=vector, unconnected_gradients=_ZERO)
