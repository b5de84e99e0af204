"""Models, data and independent references for the Hessian tests.

Every numerical claim is checked on a tiny problem whose Hessian is known in
closed form (½wᵀAw) or is built in full by float64 central differences of
exact first-order gradients (one plain `tf.GradientTape` through
`model.stateless_call`), a code path that shares no second-order code with
the HVP routines under test.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_eigensam import hessian
from tests import numpy_reference as ref

MODES = hessian.HVP_MODES
LOSS = "sparse_categorical_crossentropy"


class Quadratic(keras.layers.Layer):
    """`f(w) = ½ wᵀAw`, returned once per example so a pass-through loss is f."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix)

    def build(self, input_shape):
        n = self.matrix.shape[0]
        self.w = self.add_weight(shape=(n,), initializer="random_normal", name="w")

    def call(self, x):
        a = keras.ops.convert_to_tensor(self.matrix, dtype=self.w.dtype)
        value = 0.5 * keras.ops.sum(self.w * keras.ops.matmul(a, self.w))
        return keras.ops.zeros_like(x[:, :1]) + value


def pass_through(y_true, y_pred):
    return y_pred


def quadratic_model(n=6, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, n))
    a = (b + b.T) / 2
    model = keras.Sequential([keras.Input((1,)), Quadratic(a)])
    data = (np.zeros((4, 1)), np.zeros((4, 1)))
    return model, a, data


def quadratic_model_with(a):
    model = keras.Sequential([keras.Input((1,)), Quadratic(a)])
    return model, (np.zeros((4, 1)), np.zeros((4, 1)))


def mlp(activation="tanh", batchnorm=False, dropout=0.0, seed=0):
    """A 6-16-8-3 classifier (275 weights, 307 with BatchNormalization)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,)), keras.layers.Dense(16, activation=activation)]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers += [
        keras.layers.Dense(
            8, activation=activation, kernel_regularizer=keras.regularizers.L2(1e-2)
        ),
        keras.layers.Dense(3),
    ]
    model = keras.Sequential(layers)
    if batchnorm:
        # Moving statistics far from (0, 1), so inference mode matters.
        bn = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
        rng = np.random.default_rng(seed + 1)
        bn.moving_mean.assign(rng.normal(size=16))
        bn.moving_variance.assign(rng.uniform(0.3, 2.0, size=16))
    return model


def classification_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(keras.config.floatx())
    y = rng.integers(0, 3, size=(n,))
    return x, y


def logits_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def exact_gradient(model, x, y, training=False, loss=None):
    """`values -> ∇L(values)` by one plain `tf.GradientTape` (first order).

    `L` is the mean loss plus `model.losses`, with the model run on the given
    weight values by `model.stateless_call` (no variable is written).
    Embedding gradients are densified. First derivatives are exact for every
    layer, so finite differences of this function are an independent
    reference for the Hessian: no second-order code of the library is used.
    """
    loss = loss or logits_loss()
    non_trainable = [v.value for v in model.non_trainable_variables]

    @tf.function
    def gradient(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y_pred, _, losses = model.stateless_call(
                values, non_trainable, x, training=training, return_losses=True
            )
            total = loss(y, y_pred)
            for extra in losses:
                total = total + tf.cast(extra, total.dtype)
        grads = tape.gradient(total, values, unconnected_gradients="zero")
        return [tf.convert_to_tensor(g) for g in grads]

    return gradient


def fd_hvp(gradient, weights, vector, step=1e-5):
    """`H·v` by central differences of `gradient` along `v` (flat, float64)."""
    plus = gradient([w + step * u for w, u in zip(weights, vector)])
    minus = gradient([w - step * u for w, u in zip(weights, vector)])
    return (flatten(plus) - flatten(minus)) / (2 * step)


def full_hessian(model, x, y, training=False, loss=None, step=1e-5):
    """The full Hessian, column by column, by float64 central differences of
    exact first-order gradients (`exact_gradient`); symmetrised. The model
    must be float64 (truncation and round-off errors about 1e-9)."""
    variables = model.trainable_variables
    assert all(v.dtype == "float64" for v in variables), "use the float64 fixture"
    gradient = exact_gradient(model, x, y, training, loss)
    weights = [v.value for v in variables]
    n = sum(int(np.prod(v.shape)) for v in variables)
    columns = []
    for j in range(n):
        basis = np.zeros(n)
        basis[j] = 1.0
        columns.append(fd_hvp(gradient, weights, unflatten(basis, variables), step))
    h = np.stack(columns, axis=1)
    return (h + h.T) / 2


def flatten(vectors):
    return np.concatenate([np.asarray(v).reshape(-1) for v in vectors])


def unflatten(flat, variables):
    out, offset = [], 0
    for v in variables:
        size = int(np.prod(v.shape))
        out.append(tf.constant(flat[offset : offset + size].reshape(v.shape), dtype=v.dtype))
        offset += size
    return out


def random_vectors(variables, seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.standard_normal(v.shape), dtype=v.dtype) for v in variables]


def model_loss_fn(model, x, y, training=False):
    """A zero-argument loss as a train step would write it for `hvp`: the
    trainable variables map to their own values, so the tapes see them and
    weight regularisers find a value; every state write is discarded."""
    variables = model.trainable_variables
    loss = logits_loss()

    def loss_fn():
        mapping = [(v, v.value) for v in variables]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            total = loss(y, model(x, training=training))
            for extra in model.losses:
                total = total + keras.ops.cast(extra, total.dtype)
            return total

    return loss_fn


def embedding_model():
    """Embedding → Flatten → Dense: the embedding's gradient is sparse."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int32"),
            keras.layers.Embedding(6, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    # Repeated indices in a batch make repeated rows in IndexedSlices.
    x = np.array([[0, 1], [1, 2], [0, 0], [2, 1], [0, 2], [1, 1]], "int32")
    y = np.array([0, 1, 2, 1, 0, 2])
    return model, x, y


def normalized_model(kind):
    """Dense → normalization → tanh → Dense (63 weights with BN, LN or GN)."""
    keras.utils.set_random_seed(3)
    norm = {
        "batch": lambda: keras.layers.BatchNormalization(),
        "layer": lambda: keras.layers.LayerNormalization(),
        "group": lambda: keras.layers.GroupNormalization(groups=1, axis=-1),
    }[kind]()
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5),
            norm,
            keras.layers.Activation("tanh"),
            keras.layers.Dense(3),
        ]
    )
    if kind == "batch":
        norm.moving_mean.assign(np.full(5, 0.3))
        norm.moving_variance.assign(np.full(5, 2.0))
    return model


def numpy_sharpness(
    w, x, y, rho, num_samples, seed, ascent_steps, step_size, sample_weight=None, l2=0.0
):
    """The three sharpness notions in float64, written out independently."""
    base, g = ref.mlp_loss_and_grad(w, x, y, sample_weight, l2)

    def loss_at(e):
        w_e = ref.unflatten(ref.flatten(w) + e, w)
        return ref.mlp_loss_and_grad(w_e, x, y, sample_weight, l2)

    g = ref.flatten(g)
    e = rho * g / (np.linalg.norm(g) + 1e-12)
    ascent_loss, grad_e = loss_at(e)
    best = ascent_loss
    for _ in range(ascent_steps):
        grad_e = ref.flatten(grad_e)
        e = e + step_size * grad_e / (np.linalg.norm(grad_e) + 1e-12)
        norm = np.linalg.norm(e)
        if norm > rho:
            e = e * rho / norm
        loss, grad_e = loss_at(e)
        best = max(best, loss)
    rng = np.random.default_rng(seed)
    d = ref.flatten(w).size
    average = 0.0
    for _ in range(num_samples):
        z = rng.standard_normal(d)
        average += loss_at(rho * z / np.linalg.norm(z))[0] / num_samples
    return {
        "sharpness_ascent": ascent_loss - base,
        "sharpness_average": average - base,
        "sharpness_worst_case": best - base,
    }


# ------------------------------------------- GGN and empirical Fisher, dense
#
# Built from first-order Jacobians only (one `tf.GradientTape.jacobian`
# through `model.stateless_call`) and the loss's second derivatives in the
# model output written out in closed form, so no second-order code and no
# code of `keras_eigensam.hessian` is involved.

LOSS_KINDS = ("mse", "sparse_ce")


def make_loss(loss_kind, reduction="sum_over_batch_size"):
    """The Keras loss a reference below describes: MSE or CE from logits."""
    if loss_kind == "mse":
        return keras.losses.MeanSquaredError(reduction=reduction)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)


def coefficients(n, sample_weight=None, reduction="sum_over_batch_size"):
    """`c_i` with `L = Σ_i c_i ℓ_i` for Keras's reductions, in NumPy."""
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if reduction == "sum":
        return w
    if reduction == "mean_with_sample_weight":
        return w / w.sum()
    return w / n


def _weights_and_state(model):
    variables = model.trainable_variables
    assert all(v.dtype == "float64" for v in variables), "use the float64 fixture"
    values = [tf.convert_to_tensor(v.value) for v in variables]
    non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    return values, non_trainable


def _flat_jacobian(tape, target, values, rows):
    """`∂ target / ∂ values` as a `(rows, num_parameters)` NumPy matrix."""
    blocks = tape.jacobian(target, values, unconnected_gradients="zero")
    return np.concatenate(
        [np.asarray(tf.convert_to_tensor(b)).reshape(rows, -1) for b in blocks], axis=1
    )


def full_ggn(model, x, y, loss_kind, sample_weight=None, reduction="sum_over_batch_size",
             training=False):
    """The dense GGN `Jᵀ H J` of the (sample-weighted) loss of one batch.

    `J` is the Jacobian of the model outputs `f` (n × d) w.r.t. the trainable
    weights (flattened as `flatten`); `H = ∇²_f L` is block diagonal with
    blocks `c_i · h_i`, `h_i = 2/d · I` for MSE (`ℓ_i = mean_d (f_i − y_i)²`)
    and `h_i = diag(p_i) − p_i p_iᵀ` for cross-entropy from logits.
    `model.losses` are not part of it.
    """
    values, non_trainable = _weights_and_state(model)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        f, _ = model.stateless_call(values, non_trainable, x, training=training)
    n, d = f.shape
    jac = _flat_jacobian(tape, f, values, n * d).reshape(n, d, -1)
    c = coefficients(n, sample_weight, reduction)
    f = np.asarray(f, np.float64)
    g = np.zeros((jac.shape[-1],) * 2)
    for i in range(n):
        if loss_kind == "mse":
            h = 2.0 / d * np.eye(d)
        else:
            p = np.exp(f[i] - f[i].max())
            p /= p.sum()
            h = np.diag(p) - np.outer(p, p)
        g += c[i] * jac[i].T @ h @ jac[i]
    return g


def example_gradients(model, x, y, loss_kind, training=False):
    """`(n, num_parameters)`: the gradient of every example's loss `ℓ_i`."""
    values, non_trainable = _weights_and_state(model)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        f, _ = model.stateless_call(values, non_trainable, x, training=training)
        if loss_kind == "mse":
            per_example = tf.reduce_mean((f - tf.cast(y, f.dtype)) ** 2, axis=-1)
        else:
            per_example = keras.losses.sparse_categorical_crossentropy(y, f, from_logits=True)
    return _flat_jacobian(tape, per_example, values, f.shape[0])


def full_empirical_fisher(model, x, y, loss_kind, sample_weight=None,
                          reduction="sum_over_batch_size", training=False):
    """The dense empirical Fisher `Σ_i c_i g_i g_iᵀ` of one batch."""
    g = example_gradients(model, x, y, loss_kind, training)
    c = coefficients(g.shape[0], sample_weight, reduction)
    return (g * c[:, None]).T @ g


def dense_matrix(op):
    """The operator's full matrix, one product per column (`to_scipy`)."""
    return op.to_scipy() @ np.eye(op.num_parameters)


def small_mlp(outputs=3, seed=0):
    """A 4-6-3 tanh network (51 weights) without regularisers."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(outputs)]
    )


def small_data(n, loss_kind, outputs=3, seed=0):
    """`(x, y)` for `small_mlp`: class labels for CE, targets for MSE."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    if loss_kind == "mse":
        return x, rng.standard_normal((n, outputs))
    return x, rng.integers(0, outputs, size=(n,))


def spectrum_matrix(eigenvalues, seed=0):
    """A dense symmetric matrix with the given eigenvalues (random basis)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * np.asarray(eigenvalues, float)) @ q.T


def counting(a):
    """`(matvec, calls)`: `v -> a @ v`, appending to `calls` at every product."""
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    return matvec, calls
