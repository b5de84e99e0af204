"""Tests of `keras_eigensam.hessian` against exact references.

Every numerical claim is checked on a tiny problem whose Hessian is known in
closed form (½wᵀAw) or is built in full by float64 central differences of
exact first-order gradients (one plain `tf.GradientTape` through
`model.stateless_call`), a code path that shares no second-order code with
the HVP routines under test.
"""

from math import erf
from math import sqrt

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam.backend import distribute
from keras_eigensam import hessian
from keras_eigensam import linalg

MODES = hessian.HVP_MODES


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


# ---------------------------------------------------------------- helpers


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


LOSS = "sparse_categorical_crossentropy"


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


def logits_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------ 1. quadratic form


@pytest.mark.parametrize("mode", MODES)
def test_matvec_of_quadratic_form_is_a_times_v(float64, mode):
    model, a, data = quadratic_model()
    op = hessian.HessianOperator(model, pass_through, data, hvp_mode=mode)
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = rng.standard_normal(a.shape[0])
        (hv,) = op.matvec([v])
        np.testing.assert_allclose(hv.numpy(), a @ v, rtol=1e-12, atol=1e-12)
    eigvals, eigvecs = op.top_eigenpairs(k=3, method="lanczos", seed=0)
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(a)[::-1][:3], rtol=1e-10, atol=1e-12)


def quadratic_model_with(a):
    model = keras.Sequential([keras.Input((1,)), Quadratic(a)])
    return model, (np.zeros((4, 1)), np.zeros((4, 1)))


def test_trace_of_diagonal_hessian_is_exact_with_rademacher_probes(float64):
    # zᵀAz = Σ A_jj z_j² = tr(A) for every ±1 probe z when A is diagonal.
    a = np.diag([3.0, -1.0, 0.5, 2.0, 7.0, -0.25])
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    for num_samples, seed in [(1, 0), (3, 1)]:
        np.testing.assert_allclose(
            op.trace(num_samples=num_samples, seed=seed), np.trace(a), rtol=1e-12, atol=0
        )
    assert op.num_hvps == 4


def test_trace_is_within_the_standard_error_of_hutchinson(float64):
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a = (q * np.linspace(0.5, 4.0, 10)) @ q.T  # trace 22.5, off-diagonal mass
    model, data = quadratic_model_with(a)
    op = hessian.HessianOperator(model, pass_through, data)
    num_samples = 400
    # Variance of one Rademacher probe: 2 (‖A‖_F² − Σ A_jj²).
    std_err = np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / num_samples)
    assert 5 * std_err < 0.2 * np.trace(a)  # the bound excludes 0 and ±20 % errors
    for seed in range(3):
        estimate = op.trace(num_samples=num_samples, seed=seed)
        assert abs(estimate - np.trace(a)) <= 5 * std_err, (seed, estimate)


def test_functional_hvp_on_plain_tf_variable_and_persistent_tape(float64):
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    w = tf.Variable([0.5, -1.0], dtype=tf.float64)
    loss_fn = lambda: 0.5 * tf.tensordot(w, tf.linalg.matvec(a, w), 1)  # noqa: E731
    v = [tf.constant([1.0, 2.0], tf.float64)]
    expected = a @ np.array([1.0, 2.0])
    for mode in MODES:
        once = hessian.hvp(loss_fn, [w], v, mode)[0]
        reused = hessian.make_hvp(loss_fn, [w], mode)(v)[0]
        np.testing.assert_allclose(once, expected, rtol=1e-12, atol=0)
        np.testing.assert_allclose(reused, expected, rtol=1e-12, atol=0)


# ----------------------------------------- 2. small networks vs numpy.eigh


@pytest.mark.parametrize(
    "activation,batchnorm", [("tanh", False), ("relu", True)], ids=["tanh", "relu_bn"]
)
def test_eigenpairs_trace_and_density_match_full_hessian(float64, activation, batchnorm):
    model = mlp(activation, batchnorm)
    x, y = classification_data()
    h = full_hessian(model, x, y)
    evals, evecs = np.linalg.eigh(h)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=False)
    assert op.num_parameters == h.shape[0]

    # The operator is the Hessian: one product against the dense matrix.
    v = np.random.default_rng(0).standard_normal(h.shape[0])
    hv = flatten(op.matvec(unflatten(v, model.trainable_variables)))
    np.testing.assert_allclose(hv, h @ v, rtol=1e-9, atol=1e-10)

    # Power iteration: the eigenvalue of largest magnitude.
    top = np.argmax(np.abs(evals))
    lam, (vec,) = op.top_eigenpairs(k=1, method="power", max_iterations=300, tol=1e-6, seed=0)
    np.testing.assert_allclose(lam[0], evals[top], rtol=1e-3, atol=0)
    np.testing.assert_allclose(float(linalg.global_norm(vec)), 1.0, rtol=1e-10, atol=0)
    magnitudes = np.sort(np.abs(evals))[::-1]
    if magnitudes[1] / magnitudes[0] < 0.95:  # the gap allows a vector check
        assert abs(flatten(vec) @ evecs[:, top]) >= 0.999

    # Lanczos: the five largest eigenvalues.
    lams, vecs = op.top_eigenpairs(k=5, method="lanczos", num_steps=40, seed=0)
    np.testing.assert_allclose(lams, evals[::-1][:5], rtol=1e-3, atol=0)
    assert abs(flatten(vecs[0]) @ evecs[:, -1]) >= 0.999
    for u in vecs:  # Rayleigh quotients are the returned eigenvalues
        np.testing.assert_allclose(float(linalg.global_norm(u)), 1.0, rtol=1e-10, atol=0)

    # Hutchinson: within 5 % at 200 probes (seed 0), and within 4 standard
    # errors of the Rademacher estimator. That standard error is itself
    # 4.7 % of the trace for both models, so 5 % does not hold for every seed.
    trace = op.trace(num_samples=200, seed=0)
    exact = np.trace(h)
    std_err = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 200)
    np.testing.assert_allclose(trace, exact, rtol=0.05, atol=0)
    assert abs(trace - exact) <= 4 * std_err

    # Density: integrates to 1, and its distribution matches the eigenvalues'
    # (broadened by the same sigma) in Kolmogorov-Smirnov distance.
    sigma = 0.01 * (evals[-1] - evals[0])
    grid, density = op.density(num_steps=50, num_probes=4, sigma=sigma, seed=0)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-9, atol=0)
    assert np.all(density >= 0)
    assert grid[0] <= evals[0] and grid[-1] >= evals[-1]
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    normal_cdf = np.vectorize(lambda t: 0.5 * (1 + erf(t / sqrt(2))))
    exact_cdf = normal_cdf((grid[:, None] - evals[None, :]) / sigma).mean(axis=1)
    assert np.max(np.abs(cdf - exact_cdf)) < 0.05


def test_dataset_hvp_is_the_hessian_of_the_mean_loss(float64):
    """Batches of 7 and 5 examples give the Hessian of the 12-example mean."""
    model = mlp("tanh")
    x, y = classification_data(12)
    single = hessian.HessianOperator(model, logits_loss(), (x, y))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    batched = hessian.HessianOperator(model, logits_loss(), dataset)
    assert batched.num_examples == 12
    keras_loss = float(logits_loss()(y, model(x))) + float(sum(model.losses))
    np.testing.assert_allclose(batched.loss_value(), keras_loss, rtol=1e-10, atol=0)
    v = random_vectors(model.trainable_variables)
    np.testing.assert_allclose(
        flatten(batched.matvec(v)), flatten(single.matvec(v)), rtol=1e-10, atol=1e-12
    )
    # Sample weights scale the data term; the L2 term (2 · 1e-2 on one
    # kernel) is not weighted. Keras rounds the L2 factor to float32, hence
    # the atol.
    weighted = hessian.HessianOperator(model, logits_loss(), (x, y, 3 * np.ones(12)))
    reg = [tf.zeros_like(t) for t in v]
    reg[2] = 2e-2 * v[2]
    expected = 3 * (flatten(single.matvec(v)) - flatten(reg)) + flatten(reg)
    np.testing.assert_allclose(flatten(weighted.matvec(v)), expected, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
    ],
    ids=["sum_over_batch_size", "sum", "mean_with_sample_weight"],
)
def test_batch_loss_is_reduced_like_keras(loss):
    """Outside a replica context the operator's loss is Keras's own."""
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.standard_normal((5, 3)), tf.float32)
    labels = tf.constant([0, 2, 1, 1, 0])
    weights = tf.constant([1.0, 0.5, 0.0, 2.0, 1.0])
    for sample_weight in (None, weights):
        np.testing.assert_allclose(
            hessian._mean_loss(loss, labels, logits, sample_weight),
            loss(labels, logits, sample_weight=sample_weight),
            rtol=1e-6,
            atol=0,
        )


# ------------------------- 2b. sparse gradients and normalization layers


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


@pytest.mark.parametrize("mode", MODES)
def test_embedding_hessian_matches_finite_differences(float64, mode):
    model, x, y = embedding_model()
    variables = model.trainable_variables
    h = full_hessian(model, x, y)
    evals = np.linalg.eigh(h)[0]
    v = random_vectors(variables)
    expected = h @ flatten(v)
    tolerance = dict(rtol=1e-7, atol=1e-7 * np.max(np.abs(expected)))
    loss_fn = model_loss_fn(model, x, y)
    # Every HVP path returns dense tensors equal to H·v.
    products = {
        "hvp": hessian.hvp(loss_fn, variables, v, mode),
        "make_hvp": hessian.make_hvp(loss_fn, variables, mode)(v),
        "hvp_traced": tf.function(lambda v: hessian.hvp(loss_fn, variables, v, mode))(v),
    }
    op = hessian.HessianOperator(model, logits_loss(), (x, y), hvp_mode=mode)
    products["operator"] = op.matvec(v)
    for name, product in products.items():
        assert all(isinstance(t, tf.Tensor) for t in product), name
        np.testing.assert_allclose(flatten(product), expected, err_msg=name, **tolerance)
    # The eigen-solvers see the same operator.
    lam, _ = op.top_eigenpairs(k=1, method="power", max_iterations=300, tol=1e-8, seed=0)
    np.testing.assert_allclose(lam[0], evals[np.argmax(np.abs(evals))], rtol=1e-6, atol=0)
    lams, _ = op.top_eigenpairs(k=2, method="lanczos", seed=0)
    np.testing.assert_allclose(lams, evals[::-1][:2], rtol=1e-6, atol=0)


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


NORMALIZED = [("batch", True), ("batch", False), ("layer", False), ("group", True)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind,training", NORMALIZED, ids=["bn_training", "bn_inference", "ln", "gn"]
)
def test_normalization_hessian_matches_finite_differences(float64, kind, training, mode):
    """`tf.nn.moments` stops the gradient through the mean inside the
    variance; the Hessian must be that of the function the layer computes,
    i.e. the finite difference of its (exact) training-mode gradient."""
    model = normalized_model(kind)
    variables = model.trainable_variables
    x, y = classification_data(12)
    gradient = exact_gradient(model, x, y, training)
    weights = [w.value for w in variables]
    loss_fn = model_loss_fn(model, x, y, training)
    for seed in range(2):
        v = random_vectors(variables, seed)
        expected = fd_hvp(gradient, weights, v)
        # Central differences in float64 with step 1e-5: error about 1e-9
        # of the largest entry; the stop_gradient errs by 9-22 %.
        tolerance = dict(rtol=1e-6, atol=1e-6 * np.max(np.abs(expected)))
        # `make_hvp` traced once in a function, as the train step's
        # eigenvector refresh calls it.
        traced = tf.function(lambda v: hessian.make_hvp(loss_fn, variables, mode)(v))
        for name, product in {
            "hvp": hessian.hvp(loss_fn, variables, v, mode),
            "make_hvp": hessian.make_hvp(loss_fn, variables, mode)(v),
            "make_hvp_traced": traced(v),
        }.items():
            np.testing.assert_allclose(flatten(product), expected, err_msg=name, **tolerance)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=training, hvp_mode=mode)
    np.testing.assert_allclose(flatten(op.matvec(v)), expected, **tolerance)
    h = full_hessian(model, x, y, training)
    lams, _ = op.top_eigenpairs(k=2, method="lanczos", seed=0)
    np.testing.assert_allclose(lams, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-6, atol=0)


def test_exact_moments_keep_values_and_first_derivatives(float64):
    """Inside `exact_moments` the loss and its gradient are unchanged; only
    second derivatives change. Keras's function is restored on exit."""
    from keras.src.backend.tensorflow import nn as keras_tf_nn

    from keras_eigensam.backend import autodiff

    model = normalized_model("batch")
    x, y = classification_data(12)
    gradient = exact_gradient(model, x, y, training=True)
    weights = [w.value for w in model.trainable_variables]
    original = keras_tf_nn._compute_moments
    plain = flatten(gradient.python_function(weights))
    with autodiff.exact_moments():
        with autodiff.exact_moments():  # nests
            assert keras_tf_nn._compute_moments is not original
        assert keras_tf_nn._compute_moments is not original
        exact = flatten(gradient.python_function(weights))
        inputs = tf.constant(np.random.default_rng(0).standard_normal((7, 5)))
        patched = keras.ops.moments(inputs, axes=[0])
    assert keras_tf_nn._compute_moments is original
    np.testing.assert_allclose(exact, plain, rtol=1e-12, atol=1e-15)
    for a, b in zip(patched, keras.ops.moments(inputs, axes=[0])):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


# -------------------------------------------- 3. modes agree, under XLA


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


@pytest.mark.parametrize(
    "activation,batchnorm,dropout,training",
    [
        ("tanh", False, 0.0, False),
        ("relu", True, 0.0, False),
        ("tanh", True, 0.0, True),
        ("relu", True, 0.3, True),
    ],
    ids=["tanh", "relu_bn", "tanh_bn_training", "relu_bn_dropout_training"],
)
def test_modes_agree_on_every_model(activation, batchnorm, dropout, training):
    model = mlp(activation, batchnorm, dropout)
    x, y = classification_data()
    loss_fn = model_loss_fn(model, x, y, training)
    v = random_vectors(model.trainable_variables)
    results = [
        flatten(hessian.hvp(loss_fn, model.trainable_variables, v, mode)) for mode in MODES
    ]
    scale = np.max(np.abs(results[0]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-5 * scale)


def test_modes_agree_on_quadratic_form():
    model, _, (x, y) = quadratic_model()
    variables = model.trainable_variables
    loss_fn = lambda: keras.ops.mean(model(x))  # noqa: E731
    v = random_vectors(variables)
    fob, ror = (flatten(hessian.hvp(loss_fn, variables, v, mode)) for mode in MODES)
    np.testing.assert_allclose(ror, fob, rtol=1e-5, atol=1e-6)


def test_hvp_compiles_with_xla():
    model = mlp("tanh", batchnorm=True)
    x, y = classification_data()
    variables = model.trainable_variables
    loss_fn = model_loss_fn(model, x, y)
    v = random_vectors(variables)
    reference = flatten(hessian.hvp(loss_fn, variables, v, "forward_over_backward"))
    tolerance = dict(rtol=1e-5, atol=1e-5 * np.max(np.abs(reference)))
    for mode in MODES:
        compiled = tf.function(
            lambda v, mode=mode: hessian.hvp(loss_fn, variables, v, mode), jit_compile=True
        )
        np.testing.assert_allclose(flatten(compiled(v)), reference, **tolerance)
    # Two products from one recorded pass (persistent tape), under XLA.
    persistent = tf.function(
        lambda v: [hessian.make_hvp(loss_fn, variables)(u) for u in (v, linalg.scale(v, 2.0))],
        jit_compile=True,
    )
    once, twice = persistent(v)
    np.testing.assert_allclose(flatten(once), reference, **tolerance)
    np.testing.assert_allclose(flatten(twice), 2 * reference, **tolerance)
    op = hessian.HessianOperator(model, logits_loss(), (x, y), jit_compile=True)
    np.testing.assert_allclose(flatten(op.matvec(v)), reference, **tolerance)


def test_power_iteration_matches_numpy_under_xla(float64):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a = (q * np.array([5.0, -3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0])) @ q.T
    matvec = lambda v: [tf.linalg.matvec(tf.constant(a), v[0])]  # noqa: E731
    start = rng.standard_normal(8)
    v0 = [tf.constant(start)]

    # NumPy reference: 12 products, the last one spent on the Rayleigh
    # quotient of the returned vector.
    ref = start / np.linalg.norm(start)
    for _ in range(11):
        ref = a @ ref / np.linalg.norm(a @ ref)
    fixed = tf.function(lambda v: hessian.power_iteration(matvec, v, 12), jit_compile=True)
    lam, vec = fixed(v0)
    np.testing.assert_allclose(vec[0], ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lam, ref @ a @ ref, rtol=1e-10, atol=0)

    calls = []

    def counting(v):
        calls.append(1)
        return matvec(v)

    hessian.power_iteration(counting, v0, 7)
    assert len(calls) == 7  # tol=None: exactly num_iterations products

    tolerant = tf.function(
        lambda v: hessian._power_iteration(matvec, v, 500, 1e-8), jit_compile=True
    )
    lam, vec, info = tolerant(v0)
    np.testing.assert_allclose(lam, 5.0, rtol=1e-8, atol=0)
    np.testing.assert_allclose(abs(float(tf.tensordot(vec[0], q[:, 0], 1))), 1.0, rtol=0, atol=1e-6)
    assert 10 < int(info["iterations"]) < 500  # stopped early, on the rule
    assert float(info["residual"]) < 1e-8 and float(info["change"]) < 1e-8


# ------------------------------------------------ 4. MirroredStrategy


def test_mirrored_strategy_matches_one_device(mirrored_strategy):
    x, y = classification_data(13)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)  # 7 + 6
    single = mlp("tanh", batchnorm=True)
    with mirrored_strategy.scope():
        mirrored = mlp("tanh", batchnorm=True)
    mirrored.set_weights(single.get_weights())
    op_single = hessian.HessianOperator(single, logits_loss(), dataset)
    op_mirrored = hessian.HessianOperator(mirrored, logits_loss(), dataset)

    v = random_vectors(single.trainable_variables)
    np.testing.assert_allclose(
        flatten(op_mirrored.matvec(v)), flatten(op_single.matvec(v)), rtol=1e-5, atol=1e-6
    )
    lam_single, _ = op_single.top_eigenpairs(k=1, method="lanczos", num_steps=12, seed=0)
    lam_mirrored, _ = op_mirrored.top_eigenpairs(k=1, method="lanczos", num_steps=12, seed=0)
    np.testing.assert_allclose(lam_mirrored, lam_single, rtol=1e-5, atol=0)


def test_power_iteration_inside_replica_context(mirrored_strategy):
    """The train-step use: per-replica HVPs, all-reduced, unrolled iterations."""
    x, y = classification_data(8)
    with mirrored_strategy.scope():
        model = mlp("tanh")
    variables = model.trainable_variables
    loss = logits_loss()
    v0 = random_vectors(variables)

    def replica_fn(v0):
        context = tf.distribute.get_replica_context()
        shard = 4 * context.replica_id_in_sync_group
        xs = tf.gather(x, tf.range(shard, shard + 4))
        ys = tf.gather(y, tf.range(shard, shard + 4))

        def loss_fn():
            mapping = [(v, v.value) for v in variables]
            with keras.StatelessScope(state_mapping=mapping):
                # Keras losses divide by the replica count in a replica
                # context; undo it to get this shard's mean loss.
                data_loss = loss(ys, model(xs)) * distribute.num_replicas_in_sync()
                return data_loss + keras.ops.sum(model.losses)

        def matvec(v):
            return distribute.all_reduce_mean(hessian.hvp(loss_fn, variables, v))

        return hessian.power_iteration(matvec, v0, num_iterations=3)

    lam, _ = tf.function(lambda v0: mirrored_strategy.run(replica_fn, args=(v0,)))(v0)
    lams = [float(t) for t in mirrored_strategy.experimental_local_results(lam)]
    single = mlp("tanh")
    single.set_weights(model.get_weights())
    op = hessian.HessianOperator(single, loss, (x, y))
    expected, _ = hessian.power_iteration(op.matvec, v0, num_iterations=3)
    np.testing.assert_allclose(lams, [float(expected)] * 2, rtol=1e-5, atol=0)


# --------------------------------------------- 5. the model is untouched


def test_model_state_and_mode_are_unchanged():
    model = mlp("relu", batchnorm=True, dropout=0.3)
    x, y = classification_data()
    before = [np.array(v) for v in model.variables]
    trainable = [layer.trainable for layer in model.layers]
    op = hessian.HessianOperator(model, logits_loss(), (x, y), training=True)
    v = random_vectors(model.trainable_variables)
    hv = flatten(op.matvec(v))
    # Dropout masks come from the unchanged seed state: the same operator at
    # every product.
    np.testing.assert_allclose(flatten(op.matvec(v)), hv, rtol=1e-6, atol=1e-7)
    op.top_eigenpairs(k=1, max_iterations=3, tol=None, seed=0)
    op.trace(num_samples=2, seed=0)
    op.density(num_steps=3, num_probes=1, seed=0)
    inference = hessian.HessianOperator(model, logits_loss(), (x, y), training=False)
    assert not np.allclose(flatten(inference.matvec(v)), hv, rtol=1e-3)
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, np.array(new))
    assert [layer.trainable for layer in model.layers] == trainable
    assert model.trainable


# ------------------------------------------------------- 6. bad input


@pytest.fixture
def small_op():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = (np.ones((4, 3), "float32"), np.zeros((4,), "int32"))
    return hessian.HessianOperator(model, logits_loss(), data)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda op: op.top_eigenpairs(k=0), ValueError, "`k` must be an integer >= 1"),
        (lambda op: op.top_eigenpairs(k=9), ValueError, r"`k` must be at most .*Received: k=9"),
        (
            lambda op: op.top_eigenpairs(k=3, method="lanczos", num_steps=2),
            ValueError,
            "num_steps=2, k=3",
        ),
        (lambda op: op.top_eigenpairs(method="arnoldi"), ValueError, "method='arnoldi'"),
        (lambda op: op.top_eigenpairs(tol=-1.0), ValueError, "`tol`"),
        (lambda op: op.matvec([np.ones((3, 2))]), ValueError, "`vectors` must be a list of 2"),
        (
            lambda op: op.matvec([np.ones((2, 3)), np.ones(2)]),
            ValueError,
            r"`vectors\[0\]` must have the shape",
        ),
        (lambda op: op.matvec(np.ones(8)), ValueError, "`vectors` must be a list"),
        (lambda op: op.top_eigenpairs(initial=[np.ones(3)]), ValueError, "`initial`"),
        (lambda op: op.trace(num_samples=0), ValueError, "num_samples=0"),
        (lambda op: op.density(num_steps=0), ValueError, "num_steps=0"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(small_op, call, error, match):
    with pytest.raises(error, match=match):
        call(small_op)


def test_bad_constructor_arguments_raise_naming_the_argument():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = (np.ones((4, 3), "float32"), np.zeros((4,), "int32"))
    with pytest.raises(ValueError, match="hvp_mode='exact'"):
        hessian.HessianOperator(model, LOSS, data, hvp_mode="exact")
    with pytest.raises(TypeError, match="`training` must be a bool"):
        hessian.HessianOperator(model, LOSS, data, training="yes")
    with pytest.raises(TypeError, match="`loss`"):
        hessian.HessianOperator(model, 3, data)
    with pytest.raises(TypeError, match="`model`"):
        hessian.HessianOperator("resnet", LOSS, data)
    empty = tf.data.Dataset.from_tensor_slices(data).batch(2).take(0)
    with pytest.raises(ValueError, match="`data` must not be empty.*0 batches"):
        hessian.HessianOperator(model, LOSS, empty)
    with pytest.raises(ValueError, match="needs targets"):
        hessian.HessianOperator(model, LOSS, [(data[0], None)])
    with pytest.raises(TypeError, match="`data`"):
        hessian.HessianOperator(model, LOSS, data[0])
    model.trainable = False
    with pytest.raises(ValueError, match="`model` has no trainable weights"):
        hessian.HessianOperator(model, LOSS, data)


def test_bad_functional_arguments_raise_naming_the_argument():
    w = tf.Variable([1.0, 2.0])
    loss_fn = lambda: tf.reduce_sum(w**2)  # noqa: E731
    with pytest.raises(ValueError, match="mode='exact'"):
        hessian.hvp(loss_fn, [w], [tf.ones(2)], mode="exact")
    with pytest.raises(ValueError, match=r"`vectors\[0\]` must have the shape"):
        hessian.hvp(loss_fn, [w], [tf.ones(3)])
    with pytest.raises(ValueError, match="one tensor per variable"):
        hessian.hvp(loss_fn, [w], [tf.ones(2), tf.ones(2)])
    with pytest.raises(ValueError, match="scalar loss"):
        hessian.hvp(lambda: w**2, [w], [tf.ones(2)])
    with pytest.raises(ValueError, match="num_iterations=0"):
        hessian.power_iteration(lambda v: v, [tf.ones(2)], 0)
    with pytest.raises(ValueError, match="`tol`"):
        hessian.power_iteration(lambda v: v, [tf.ones(2)], 3, tol=0.0)


@pytest.mark.parametrize("tol", [None, 1e-6], ids=["unrolled", "while_loop"])
@pytest.mark.parametrize("final_update", [False, True])
@pytest.mark.parametrize("bad", ["inf", "nan", "zero"])
def test_power_iteration_keeps_the_vector_when_a_product_is_unusable(bad, final_update, tol):
    """A product with a non-finite entry, or a zero one, does not replace v."""
    start = np.arange(1.0, 5.0, dtype="float32")
    calls = []

    def matvec(v):
        calls.append(1)
        value = {"inf": np.inf, "nan": np.nan, "zero": 0.0}[bad]
        return [v[0] * 0.0 + value]

    lam, v = hessian.power_iteration(
        matvec, [tf.constant(start)], 4, tol=tol, final_update=final_update
    )
    np.testing.assert_allclose(np.array(v[0]), start / np.linalg.norm(start), rtol=1e-6)
    assert len(calls) == 4
    if bad == "zero":
        assert float(lam) == 0.0
    else:
        assert not np.isfinite(float(lam))  # the eigenvalue says what happened


@pytest.mark.parametrize("final_update", [False, True])
def test_power_iteration_survives_a_product_whose_norm_overflows(final_update):
    """Every entry of H·v is finite but ‖H·v‖ exceeds float32's range.

    `A = 1e38 · 11ᵀ` (top eigenvector 1/√8, eigenvalue 8e38, not
    representable): `A v` has entries about 2.5e38 and norm 7e38. Scaled
    before it is normalised, it still gives the right direction; divided by
    its overflowed norm it would give the zero vector, which would stay zero.
    """
    start = np.arange(1.0, 9.0, dtype="float32")
    matvec = lambda v: [tf.fill([8], 1e38 * tf.reduce_sum(v[0]))]  # noqa: E731
    lam, v = hessian.power_iteration(matvec, [tf.constant(start)], 3, final_update=final_update)
    np.testing.assert_allclose(np.array(v[0]), np.full(8, 8**-0.5), rtol=1e-6)
    assert float(lam) == np.inf


def test_power_iteration_final_update_moves_the_vector_with_every_product():
    a = np.diag([3.0, 1.0, 0.5]).astype("float32")
    v0 = [tf.constant([1.0, 1.0, 1.0])]
    matvec = lambda v: [tf.linalg.matvec(a, v[0])]  # noqa: E731
    lam, v = hessian.power_iteration(matvec, v0, num_iterations=1, final_update=True)
    u = np.ones(3) / np.sqrt(3)
    np.testing.assert_allclose(float(lam), u @ a @ u, rtol=1e-6)
    np.testing.assert_allclose(np.array(v[0]), a @ u / np.linalg.norm(a @ u), rtol=1e-6)
    lam_plain, v_plain = hessian.power_iteration(matvec, v0, num_iterations=1)
    np.testing.assert_allclose(np.array(v_plain[0]), u, rtol=1e-6)  # no update without it
    np.testing.assert_allclose(float(lam_plain), float(lam), rtol=1e-6)
