"""Hessian-vector products of a zero-argument loss function.

The functional core a compiled training step calls, in replica context,
under `jit_compile=True`: `hvp` (one product) and `make_hvp` (a `matvec`
for many products at the same point). Nothing here all-reduces; the caller
does. Vectors are lists of tensors shaped like the variables (see
`keras_eigensam.linalg`), never one concatenated vector.
"""

import keras

from keras_eigensam import validation
from keras_eigensam.backend import autodiff

#: The two ways of computing `H·v`.
HVP_MODES = ("forward_over_backward", "reverse_over_reverse")

#: The default mode of every function and class that takes `hvp_mode`: the
#: faster in this project's measurements (`benchmarks/hessian.md`).
DEFAULT_HVP_MODE = "reverse_over_reverse"


def hvp(loss_fn, variables, vectors, mode=DEFAULT_HVP_MODE):
    """Hessian-vector product `H·v` of a scalar loss with respect to variables.

    `loss_fn` is differentiated twice with respect to `variables` at their
    current values. Both modes compute `H·v` exactly (up to round-off); an
    HVP costs a few gradients (2–3 on CPU in `benchmarks/hessian.md`), and
    cost and memory of the two modes depend on the model and the device:

    ```
    forward_over_backward:  H·v = d/dε ∇L(w + ε v) |ε=0   (JVP of the gradient)
    reverse_over_reverse:   H·v = ∇_w <∇L(w), v>           (gradient of <g, v>)
    ```

    Both modes differentiate the function the model computes: the loss is
    recorded inside `keras_eigensam.backend.autodiff.exact_moments()`, so
    normalization layers whose moments come from `tf.nn.moments`
    (BatchNormalization in training mode, LayerNormalization,
    GroupNormalization) have exact second derivatives; `tf.nn.moments`
    stops the gradient through the mean inside the variance, which leaves
    first derivatives exact but not second ones. Gradients and products
    that come back as `IndexedSlices` (embeddings) are densified.

    The function is pure: it works eagerly, inside `tf.function` (also with
    `jit_compile=True`) and inside a `tf.distribute` replica context. It does
    not all-reduce: under a strategy it returns this replica's `H_r·v`, and
    the caller averages (`keras_eigensam.backend.distribute.all_reduce_mean`).

    `loss_fn` must read `variables` themselves. A Keras variable read through
    a `keras.StatelessScope` that maps it to another tensor is not connected
    to the variable (its products come out as zeros), and in a scope without
    a mapping Keras cannot compute weight regularisers (`model.losses` fails
    on the unmapped variable). To discard state writes such as
    BatchNormalization updates, as `HessianOperator` does, map each variable
    to its own value (`keras_eigensam.hessian.probe.model_loss` does this):

    ```python
    def loss_fn():
        mapping = [(v, v.value) for v in model.trainable_variables]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            return loss(y, model(x, training=False)) + keras.ops.sum(model.losses)
    ```

    Args:
        loss_fn: Zero-argument callable returning the scalar loss computed
            from the current values of `variables`.
        variables: List of Keras variables (or `tf.Variable`s), e.g.
            `model.trainable_variables`.
        vectors: List of tensors `v`, one per variable and of the same shape.
        mode: `"reverse_over_reverse"` (a tape over the gradient) or
            `"forward_over_backward"` (a forward accumulator around a
            tape). Forward-over-backward fails inside `tf.function` for
            some layers; reverse-over-reverse is the fallback. Defaults to
            `"reverse_over_reverse"`, the faster in this project's
            measurements (`benchmarks/hessian.md`).

    Returns:
        List of dense tensors `H·v`, shaped like `variables`. Parameters that
        do not influence the loss get zeros.

    Raises:
        ValueError: if `mode` is unknown, `vectors` does not match
            `variables` in length or shapes, the loss is not a scalar, or a
            variable's value is not a `tf.Variable` (read inside a
            `keras.StatelessScope` or an autocast scope).
        TypeError: if `loss_fn` is not callable.

    Example:

    ```python
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    x, y = np.ones((8, 4)), np.zeros((8, 1))
    loss_fn = lambda: keras.ops.mean((model(x) - y) ** 2)
    v = [keras.ops.ones_like(w) for w in model.trainable_variables]
    hv = hessian.hvp(loss_fn, model.trainable_variables, v)
    ```

    Reference:
        - [Pearlmutter, 1994](https://doi.org/10.1162/neco.1994.6.1.147)
    """
    validation.check_callable("loss_fn", loss_fn, "a zero-argument function returning the loss")
    validation.check_choice("mode", mode, HVP_MODES)
    primals = autodiff.primals(variables)
    tangents = autodiff.tangents(vectors, primals)
    return autodiff.hvp(loss_fn, primals, tangents, mode)


def make_hvp(loss_fn, variables, mode=DEFAULT_HVP_MODE):
    """Returns a `matvec` for many Hessian-vector products at the same point.

    With `mode="reverse_over_reverse"` the forward pass and the first
    backward pass are recorded once, on a persistent tape, and every call of
    the returned `matvec` is one more backward pass through them:

    ```
    g = ∇L(w)                      # once, recorded on a persistent tape
    matvec(v) = ∂g/∂w · v          # outer.gradient(g, w, output_gradients=v)
    ```

    This is the TensorFlow counterpart of PyTorch's `retain_graph=True`: `k`
    power iterations cost about one gradient plus `k` backward passes instead
    of `k` full HVPs, at the price of keeping the activations of the first
    two passes alive until `matvec` is garbage collected. A forward
    accumulator is tied to one tangent, so `mode="forward_over_backward"`
    cannot reuse anything: it returns `lambda v: hvp(loss_fn, variables, v,
    mode)`.

    Call `make_hvp` and the returned `matvec` in the same function (the same
    `tf.function` trace); like `hvp` it never all-reduces. The recorded pass
    uses exact moments for normalization layers and the products are
    dense, as in `hvp`.

    Args:
        loss_fn: Zero-argument callable returning the scalar loss computed
            from the current values of `variables`.
        variables: List of Keras variables (or `tf.Variable`s).
        mode: `"reverse_over_reverse"` (reuses the recorded passes) or
            `"forward_over_backward"` (recomputes everything per product).
            Defaults to `"reverse_over_reverse"`, the faster in this
            project's measurements (`benchmarks/hessian.md`).

    Returns:
        A function `matvec(vectors) -> H·vectors` (lists of tensors shaped
        like `variables`).

    Raises:
        ValueError, TypeError: as `hvp`.

    Example:

    ```python
    @tf.function(jit_compile=True)
    def top_eigenvalue(v0):
        matvec = hessian.make_hvp(loss_fn, model.trainable_variables)
        return hessian.power_iteration(matvec, v0, num_matvecs=5)
    ```

    Reference:
        - [Pearlmutter, 1994](https://doi.org/10.1162/neco.1994.6.1.147)
    """
    validation.check_callable("loss_fn", loss_fn, "a zero-argument function returning the loss")
    validation.check_choice("mode", mode, HVP_MODES)
    primals = autodiff.primals(variables)
    if mode == "forward_over_backward":
        return lambda vectors: autodiff.hvp(
            loss_fn, primals, autodiff.tangents(vectors, primals), mode
        )
    matvec = autodiff.persistent_hvp(loss_fn, primals)
    return lambda vectors: matvec(autodiff.tangents(vectors, primals))


def make_microbatched_hvp(
    loss_fn, batch, variables, microbatch_size, mode=DEFAULT_HVP_MODE
):
    """A `matvec` of a batch's Hessian, accumulated over micro-batches.

    The memory-bounded counterpart of `make_hvp`: every product is summed
    over micro-batches of at most `microbatch_size` examples, visited one
    after the other (a `tf.while_loop` that runs one iteration at a time),
    so the activations alive during a product are one micro-batch's instead
    of the whole batch's; nothing is kept between products, so each product
    recomputes its forward and backward passes. With `n` examples cut into
    `m = ceil(n / microbatch_size)` micro-batches (the first holding the
    remainder, `n − (m − 1)·microbatch_size` examples):

    ```
    matvec(v) = Σ_c (n_c / n) · H_c·v      H_c = ∇² loss_fn(micro-batch c)
    ```

    This is exactly `H·v` of `loss_fn(batch)` when that loss is a mean over
    examples (Keras's default `"sum_over_batch_size"` reduction, sample
    weights included) plus terms that do not depend on the examples (weight
    regularisers). It is not when examples interact: BatchNormalization in
    training mode (statistics per micro-batch, as with gradient
    accumulation), a `"sum"` reduction, or an activity regulariser summed
    over the batch.

    Works inside `tf.function`, under `jit_compile=True` and in a replica
    context (it never all-reduces).

    Args:
        loss_fn: Callable `loss_fn(part) -> scalar`, the mean loss on `part`,
            a structure like `batch` holding some of its examples.
        batch: Structure (tuple, dict, list) of tensors with the same
            leading dimension, or `None`s (a missing sample weight).
        variables: List of Keras variables (or `tf.Variable`s).
        microbatch_size: Examples per micro-batch, a Python int >= 1.
        mode: As in `hvp`. Defaults to `"reverse_over_reverse"`.

    Returns:
        A function `matvec(vectors) -> H·vectors`.

    Raises:
        ValueError, TypeError: as `hvp`, or if `microbatch_size` is not an
            integer >= 1 or `batch` holds no tensor with a leading axis.

    Example:

    ```python
    def loss_fn(part):
        x, y = part
        return keras.ops.mean((model(x) - y) ** 2)

    matvec = hessian.make_microbatched_hvp(
        loss_fn, (x, y), model.trainable_variables, microbatch_size=32
    )
    ```
    """
    validation.check_callable("loss_fn", loss_fn, "a function of a part of the batch returning its loss")
    validation.check_choice("mode", mode, HVP_MODES)
    microbatch_size = validation.check_int("microbatch_size", microbatch_size, minimum=1)
    leaves = [t for t in keras.tree.flatten(batch) if t is not None]
    if not leaves or any(len(getattr(t, "shape", ())) == 0 for t in leaves):
        raise ValueError(
            "`batch` must be a structure of tensors (or `None`s) with a leading "
            "axis of examples, at least one of them a tensor. Received: "
            f"batch={batch!r}"
        )
    primals = autodiff.primals(variables)
    matvec = autodiff.microbatched_sum(
        lambda part, tangents: autodiff.hvp(lambda: loss_fn(part), primals, tangents, mode),
        batch,
        microbatch_size,
    )
    return lambda vectors: matvec(autodiff.tangents(vectors, primals))
