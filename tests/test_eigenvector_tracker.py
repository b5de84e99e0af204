"""Tests of `EigenvectorTracker`: what it finds, and that nothing corrupts it.

References are independent of the code under test: `numpy.linalg.eigh` of an
analytic Hessian, or of a float64 finite-difference Hessian of the tiny MLP.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_eigensam as ks
from keras_eigensam.hessian.lanczos import lanczos_top_eigenpair
from tests import numpy_reference as ref
from tests.hessian import reference as href
from tests import tiny


class Quadratic(keras.layers.Layer):
    """Outputs `½ Σ c_i w_i²` per example, so `mean(output)` has Hessian diag(c)."""

    def __init__(self, curvatures, start, **kwargs):
        super().__init__(**kwargs)
        self.curvatures = np.asarray(curvatures, "float32")
        self.start = np.asarray(start, "float32")

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=self.curvatures.shape,
            initializer=keras.initializers.Constant(self.start),
        )

    def call(self, inputs):
        value = 0.5 * ops.sum(self.curvatures * ops.square(self.w))
        return ops.zeros_like(inputs[:, :1]) + value


def _mean_output(y_true, y_pred):
    return ops.mean(y_pred, axis=-1)


def _quadratic_model(method, curvatures=(-4.0, 1.0), start=(0.3, 0.2)):
    net = keras.Sequential([keras.Input((1,)), Quadratic(curvatures, start)])
    model = ks.SharpnessAwareModel(net, method=method)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=_mean_output)
    return model


def _unit(model):
    return ref.flatten([np.array(v, "float64") for v in model.method.tracker.values()])


# ------------------------------------------------ which eigenvalue is "top"


@pytest.mark.parametrize(
    "which, eigenvalue, axis", [("largest", 1.0, 1), ("magnitude", -4.0, 0)]
)
def test_saddle_top_eigenvalue_is_the_largest_not_the_largest_magnitude(which, eigenvalue, axis):
    model = _quadratic_model(ks.EigenSAM(rho=0.1, refresh_every=1, num_matvecs=20, which=which, seed=0))
    x = np.ones((4, 1), "float32")
    for _ in range(3):
        logs = model.train_on_batch(x, x, return_dict=True)
    np.testing.assert_allclose(logs["top_eigenvalue"], eigenvalue, rtol=1e-4)
    v = _unit(model)
    np.testing.assert_allclose(abs(v[axis]), 1.0, rtol=1e-4)


def test_lanczos_matches_eigh_on_an_indefinite_matrix():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    spectrum = np.concatenate([[-9.0, -7.5], np.linspace(-1, 2, 27), [3.0]])
    a = (q * spectrum) @ q.T
    matvec = lambda v: [ops.matmul(ops.convert_to_tensor(a, "float32"), v[0])]
    v0 = [ops.convert_to_tensor(rng.normal(size=30), "float32")]
    lam, v = lanczos_top_eigenpair(matvec, v0, 30)
    np.testing.assert_allclose(float(lam), 3.0, rtol=1e-4)
    np.testing.assert_allclose(abs(np.asarray(v[0]) @ q[:, -1]), 1.0, rtol=1e-4)
    # Few steps still give the best estimate in the Krylov space: a Rayleigh
    # quotient at least that of the start vector, below λ_max.
    lam5, v5 = lanczos_top_eigenpair(matvec, v0, 5)
    start = np.asarray(v0[0]) / np.linalg.norm(v0[0])
    assert start @ a @ start <= float(lam5) <= 3.0 + 1e-5
    np.testing.assert_allclose(np.linalg.norm(np.asarray(v5[0])), 1.0, rtol=1e-5)


def test_lanczos_with_a_bfloat16_basis_matches_eigh():
    # A 400×400 indefinite matrix with a separated top eigenvalue: the basis
    # rounded to bfloat16 between products (2⁻⁹ relative per entry) still
    # gives λ_max and its eigenvector to about 1e-4, where a float32 basis
    # gives them to float32 round-off.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(400, 400)))
    spectrum = np.concatenate([[-6.0], np.linspace(-1, 2, 398), [4.0]])
    a = (q * spectrum) @ q.T
    matvec = lambda v: [ops.matmul(ops.convert_to_tensor(a, "float32"), v[0])]
    v0 = [ops.convert_to_tensor(rng.normal(size=400), "float32")]
    found = {}
    for dtype in ("float32", "bfloat16"):
        lam, v = lanczos_top_eigenpair(matvec, v0, 40, basis_dtype=dtype)
        found[dtype] = np.asarray(v[0], "float64")
        np.testing.assert_allclose(float(lam), 4.0, rtol=1e-4)
        np.testing.assert_allclose(abs(found[dtype] @ q[:, -1]), 1.0, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(found[dtype]), 1.0, rtol=1e-5)
    # The option is applied: the rounding shows, at its own scale.
    difference = np.linalg.norm(found["bfloat16"] - found["float32"])
    assert 1e-6 < difference < 1e-2
    with pytest.raises(ValueError, match=r"`basis_dtype` must be one of .*Received: basis_dtype='float16'"):
        lanczos_top_eigenpair(matvec, v0, 3, basis_dtype="float16")


def test_lanczos_breakdown_on_an_invariant_start():
    a = np.diag([5.0, -2.0, 1.0]).astype("float32")
    matvec = lambda v: [ops.matmul(ops.convert_to_tensor(a), v[0])]
    lam, v = lanczos_top_eigenpair(matvec, [ops.convert_to_tensor([0.0, 0.0, 1.0])], 3)
    # The start is an eigenvector: the Krylov space is one-dimensional, and
    # the spurious Ritz values of the zero basis vectors must not win.
    np.testing.assert_allclose(float(lam), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.asarray(v[0])), [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("basis_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_tracker_finds_lambda_max_of_the_mlp_hessian(basis_dtype, jit_compile):
    x, y = tiny.data()
    model = ks.SharpnessAwareModel(
        tiny.mlp(),
        method=ks.SAM(
            rho=0.05, track_eigen=True, refresh_every=1, num_matvecs=8, seed=0,
            lanczos_basis_dtype=basis_dtype,
        ),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", jit_compile=jit_compile)
    w0 = tiny.weights_of(model)
    eigvals, eigvecs = np.linalg.eigh(ref.mlp_hessian(w0, x.astype(float), y.astype(float)))
    for _ in range(4):  # warm-started refreshes converge
        logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["top_eigenvalue"], eigvals[-1], rtol=1e-3)
    np.testing.assert_allclose(abs(_unit(model) @ eigvecs[:, -1]), 1.0, atol=1e-3)


@pytest.mark.parametrize("microbatch_size", [None, 5])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_ggn_tracker_finds_the_top_eigenpair_of_jt_h_j(jit_compile, microbatch_size):
    # Reference: the dense GGN of tests/hessian/reference.py, from a
    # first-order Jacobian and the cross-entropy Hessian in closed form, in
    # float64 (no code of keras_eigensam involved), decomposed by eigh.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        net64 = href.small_mlp()
        x, y = href.small_data(16, "sparse_ce")
        ggn = href.full_ggn(net64, x, y, "sparse_ce")
        hessian_matrix = href.full_hessian(net64, x, y, loss=href.make_loss("sparse_ce"))
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    eigvals, eigvecs = np.linalg.eigh(ggn)
    net = href.small_mlp()
    net.set_weights(net64.get_weights())
    model = ks.SharpnessAwareModel(
        net,
        method=ks.SAM(
            rho=0.05, track_eigen=True, refresh_every=1, num_matvecs=10, seed=0,
            curvature="ggn", hessian_microbatch_size=microbatch_size,
        ),
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=href.make_loss("sparse_ce"),
        jit_compile=jit_compile,
    )
    for _ in range(3):  # warm-started refreshes converge
        logs = model.train_on_batch(x.astype("float32"), y, return_dict=True)
    np.testing.assert_allclose(logs["top_eigenvalue"], eigvals[-1], rtol=1e-3)
    np.testing.assert_allclose(abs(_unit(model) @ eigvecs[:, -1]), 1.0, atol=1e-3)
    # It is not the Hessian's top eigenvalue (which the default finds).
    assert abs(np.linalg.eigvalsh(hessian_matrix)[-1] - eigvals[-1]) > 1e-2 * eigvals[-1]


def test_ggn_refuses_an_hvp_mode():
    with pytest.raises(ValueError, match="curvature='ggn'.*hvp_mode='forward_over_backward'"):
        ks.EigenvectorTracker(curvature="ggn", hvp_mode="forward_over_backward")


def test_ggn_needs_one_output_tensor():
    inputs = keras.Input((4,))
    net = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)])
    model = ks.SharpnessAwareModel(
        net, method=ks.SAM(rho=0.05, track_eigen=True, refresh_every=1, curvature="ggn")
    )
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    x = np.ones((4, 4), "float32")
    with pytest.raises(ValueError, match="curvature='ggn' needs a model with one output tensor"):
        model.train_on_batch(x, [np.ones((4, 3), "float32"), np.ones((4, 2), "float32")])


# ------------------------------------------------------ nothing corrupts it


def test_overflowing_batch_does_not_zero_the_eigenvector():
    # The audit's reproduction: the bad batch's step is skipped, and the
    # estimate must survive it (before: |v| = 0 and λ = 0 for good).
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype("f4"), rng.normal(size=(8, 3)).astype("f4")
    net = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(3)
    ])
    model = ks.SharpnessAwareModel(net, method=ks.EigenSAM(rho=0.1, refresh_every=1, seed=0))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.train_on_batch(x, y)
    tracker = model.method.tracker
    state = [np.array(v) for v in model.method.variables]
    weights = [np.array(v) for v in model.trainable_variables]
    y_bad = y.copy()
    y_bad[2, 1] = 1e30
    model.train_on_batch(x, y_bad)
    for before, after in zip(state + weights, model.method.variables + model.trainable_variables):
        np.testing.assert_array_equal(np.array(after), before)
    assert int(tracker.num_refreshes) == 1
    for _ in range(3):
        logs = model.train_on_batch(x, y, return_dict=True)
    raw = ref.flatten([np.array(v, "float64") for v in tracker.vector])
    np.testing.assert_allclose(np.linalg.norm(raw), 1.0, rtol=1e-5)
    assert logs["top_eigenvalue"] > 0
    assert int(tracker.num_refreshes) == 4
    assert int(tracker.num_failed_refreshes) == 0


def test_initial_vector_is_unit_norm_before_any_refresh():
    model = ks.SharpnessAwareModel(tiny.mlp(), method=ks.EigenSAM(seed=3))
    model.build((None, 5))
    np.testing.assert_allclose(np.linalg.norm(_unit(model)), 1.0, rtol=1e-6)


def test_mixed_float16_refresh_runs_at_true_scale():
    # The audit's reproduction: the loss-scaled HVP overflowed in float16, so
    # v kept its random start (|v| = 2.2) and λ stayed 0.
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(0)
    x, y = 10 * rng.normal(size=(32, 16)).astype("f4"), rng.integers(0, 10, 32)
    net = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="tanh"),
        keras.layers.Dense(32, activation="tanh"),
        keras.layers.Dense(10, dtype="float32"),
    ])
    model = ks.SharpnessAwareModel(
        net, method=ks.EigenSAM(rho=0.05, refresh_every=1, num_matvecs=10, seed=0)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for _ in range(4):
        logs = model.train_on_batch(x, y, return_dict=True)
    tracker = model.method.tracker
    assert int(tracker.num_refreshes) == 4
    raw = ref.flatten([np.array(v, "float64") for v in tracker.vector])
    np.testing.assert_allclose(np.linalg.norm(raw), 1.0, rtol=1e-3)
    # The same refreshes in float32 find the same eigenvalue.
    keras.config.set_dtype_policy("float32")
    net32 = keras.Sequential([keras.Input((16,))] + [
        keras.layers.Dense(layer.units, activation=layer.activation) for layer in net.layers
    ])
    net32.set_weights(net.get_weights())
    model32 = ks.SharpnessAwareModel(
        net32, method=ks.EigenSAM(rho=0.05, refresh_every=1, num_matvecs=10, seed=0)
    )
    model32.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for _ in range(4):
        logs32 = model32.train_on_batch(x, y, return_dict=True)
    assert logs32["top_eigenvalue"] > 0
    np.testing.assert_allclose(logs["top_eigenvalue"], logs32["top_eigenvalue"], rtol=0.05)
