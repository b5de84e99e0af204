"""Degenerate geometry for every method that tracks the top eigenvector.

The loss is `L(w) = ½ wᵀHw + bᵀw + c Σ|w_i|^1.5` in two weights, with `H`,
`b` and `c` non-trainable weights of the model, so one traced model per
method takes every geometry by assignment:

- `orthogonal`: the eigenvector is exactly orthogonal to the gradient
  (`v = e1`, `g = (0, 1)`; no refresh on that step). Eigen-SAM's
  `sign(<g, v>)` is then `0` (NumPy's and TensorFlow's `sign(0)`), so its
  perturbation is SAM's `ρ ĝ`; X-SAM's `c = <ĝ_a, v>` is `0` and its
  descent gradient is `ĝ_a`.
- `zero_top`: `H` has eigenvalues `0` and `−2` (rotated axes):
  `which="largest"` finds `λ = 0`, `"magnitude"` finds `λ = −2`.
- `negative_top`: `H` has eigenvalues `−1` and `−3` (concave everywhere).
- `zero_hessian`: `H = 0`. Every vector is an eigenvector: both algorithms
  keep their start vector (the previous estimate) and find `λ = 0`, a
  successful refresh. The zero vector the tracker refuses is not reached.
- `non_finite_hessian`: `c = 1` at `w_1 = 0`: the gradient is finite, the
  Hessian-vector product is NaN there. The refresh is refused: the previous
  estimate (eigenvalue included) is kept and counted in
  `num_failed_refreshes`, and the step is taken with it.

Each step is compared with a NumPy oracle of the method's formula
(the project's ALGORITHMS reference), the tracker's eigenpair with
`numpy.linalg.eigh` of `H`, and the logged metrics with their definitions.
Methods that only track the eigenvector (`tracker=True`) do not use it in
their step; their perturbation and metrics are checked eagerly. A zero
gradient with a zero Hessian for every method, with its default tracker, is
`test_contract.py::test_zero_gradient_and_zero_hessian_change_nothing`.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_eigensam as ks
from keras_eigensam.methods import registry
from tests import tiny

RHO, ALPHA, LR = 0.3, 0.5, 0.1
#: Lanczos is exact in two dimensions after two products; power iteration
#: needs ten for `negative_top` (ratio 1/4) to reach the tolerances.
MATVECS = {"largest": 2, "magnitude": 10}
RTOL, ATOL = 1e-5, 1e-6

_C, _S = np.cos(0.5), np.sin(0.5)
ROTATION = np.array([[_C, -_S], [_S, _C]])
#: The previous estimate every case starts from.
PREVIOUS_V, PREVIOUS_LAMBDA = np.array([0.6, 0.8]), 1.5

GEOMETRIES = {
    "orthogonal": dict(h=np.diag([3.0, 1.0]), w=[0.0, 1.0], b=[0.0, 0.0], refresh=False,
                       previous=([1.0, 0.0], 3.0)),
    "zero_top": dict(h=ROTATION @ np.diag([0.0, -2.0]) @ ROTATION.T, w=[0.5, 0.3],
                     b=[0.2, -0.1], refresh=True),
    "negative_top": dict(h=ROTATION @ np.diag([-1.0, -4.0]) @ ROTATION.T, w=[0.5, 0.3],
                         b=[0.2, -0.1], refresh=True),
    "zero_hessian": dict(h=np.zeros((2, 2)), w=[0.5, 0.3], b=[0.2, -0.1], refresh=True),
    "non_finite_hessian": dict(h=np.diag([2.0, 1.0]), w=[0.0, 0.3], b=[0.2, -0.1], c=1.0,
                               refresh=True),
}


class Quadratic(keras.layers.Layer):
    """Outputs `½ wᵀHw + bᵀw + c Σ|w_i|^1.5` per example: with `c = 0` the
    mean loss has gradient `Hw + b` and Hessian `H` (symmetric)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(2,), initializer="zeros", name="w")
        self.h = self.add_weight(shape=(2, 2), initializer="zeros", trainable=False, name="h")
        self.b = self.add_weight(shape=(2,), initializer="zeros", trainable=False, name="b")
        self.c = self.add_weight(shape=(), initializer="zeros", trainable=False, name="c")

    def call(self, inputs):
        w = self.w
        value = 0.5 * ops.sum(w * ops.matmul(self.h, w)) + ops.sum(self.b * w)
        value = value + self.c * ops.sum(ops.power(ops.abs(w), 1.5))
        return ops.zeros_like(inputs[:, :1]) + value


def _mean_output(y_true, y_pred):
    return ops.mean(y_pred, axis=-1)


def _model(method, momentum=0.0):
    quadratic = Quadratic()
    net = keras.Sequential([keras.Input((1,)), quadratic])
    model = ks.SharpnessAwareModel(net, method=method)
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=momentum), loss=_mean_output)
    model.optimizer.build(model.trainable_variables)
    return model, quadratic


def _step(model, quadratic, case):
    """One step from the case's point; returns the logs."""
    tracker = model.method.tracker
    quadratic.h.assign(case["h"])
    quadratic.b.assign(case["b"])
    quadratic.c.assign(case.get("c", 0.0))
    quadratic.w.assign(case["w"])
    v, lam = case.get("previous", (PREVIOUS_V, PREVIOUS_LAMBDA))
    tracker.vector[0].assign(np.asarray(v, "float32"))
    tracker.eigenvalue.assign(lam)
    # `refresh_every=2`: an even step refreshes, an odd one does not.
    model.optimizer.iterations.assign(0 if case["refresh"] else 1)
    x = np.ones((4, 1), "float32")
    return model.train_on_batch(x, x, return_dict=True)


# ---------------------------------------------------------------- oracles


def _expected_eigenpair(case, which):
    """`(v, λ, refreshed, failed)` after the step's refresh, from `eigh`."""
    v, lam = (np.asarray(x, float) for x in case.get("previous", (PREVIOUS_V, PREVIOUS_LAMBDA)))
    if not case["refresh"]:
        return v, float(lam), 0, 0
    if case.get("c"):  # H·v is NaN: refused, the estimate kept
        return v, float(lam), 0, 1
    values, vectors = np.linalg.eigh(case["h"])
    if not values.any():  # every vector is an eigenvector of 0
        return v, 0.0, 1, 0
    i = np.argmax(values) if which == "largest" else np.argmax(np.abs(values))
    return vectors[:, i], float(values[i]), 1, 0


def _gradient(case, w):
    h, b, c = np.asarray(case["h"]), np.asarray(case["b"]), case.get("c", 0.0)
    return h @ w + b + c * 1.5 * np.sign(w) * np.sqrt(np.abs(w))


def _eigen_sam(case, w, v):
    g = _gradient(case, w)
    g_hat = g / (np.linalg.norm(g) + 1e-12)
    v_perp = v - (g_hat @ v) * g_hat
    e = RHO * (g_hat + ALPHA * np.sign(g @ v) * v_perp)
    return w - LR * _gradient(case, w + e), e


def _x_sam(case, w, v, correction):
    g = _gradient(case, w)
    e = RHO * g / (np.linalg.norm(g) + 1e-12)
    g_a = _gradient(case, w + e)
    g_a_hat = g_a / (np.linalg.norm(g_a) + 1e-12)
    c = g_a_hat @ v
    if correction == "reference":
        c = np.sign(c) * c
    return w - LR * (g_a_hat - ALPHA * c * v), e


def _cos(a, b):
    return abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)


def _check_tracker(model, case, which, logs):
    """The eigenpair, counters and eigenvalue metrics; returns `v` used."""
    tracker = model.method.tracker
    expected_v, expected_lambda, refreshed, failed = _expected_eigenpair(case, which)
    found = np.array(tracker.vector[0], "float64")
    found = found / np.linalg.norm(found)
    np.testing.assert_allclose(abs(found @ expected_v), 1.0, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(tracker.eigenvalue), expected_lambda, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logs["top_eigenvalue"], expected_lambda, rtol=RTOL, atol=ATOL)
    assert (int(tracker.num_refreshes), int(tracker.num_failed_refreshes)) == (refreshed, failed)
    g = _gradient(case, np.asarray(case["w"], float))
    v = np.sign(found @ expected_v) * expected_v  # the sign the model found
    np.testing.assert_allclose(logs["grad_eigen_cosine"], _cos(g, v), rtol=RTOL, atol=ATOL)
    return v


# ---------------------------------------------------------------- tests


#: X-SAM's reference rule; its projection differs by `sign(c)` only, which
#: is sign-free (tests/test_eigen_sam.py).
EIGEN_METHODS = [
    (name, which, correction)
    for which in ("largest", "magnitude")
    for name, correction in (("eigensam", None), ("xsam", "reference"))
]


@pytest.mark.parametrize("name, which, correction", EIGEN_METHODS)
def test_methods_that_use_the_eigenvector_match_numpy(name, which, correction):
    extra = {} if correction is None else {"correction": correction}
    method = registry.create(
        name, rho=RHO, alpha=ALPHA, refresh_every=2, num_matvecs=MATVECS[which], which=which,
        **extra,
    )
    model, quadratic = _model(method)
    for geometry, case in GEOMETRIES.items():
        tracker = model.method.tracker
        tracker.num_refreshes.assign(0)
        tracker.num_failed_refreshes.assign(0)
        logs = _step(model, quadratic, case)
        try:
            v = _check_tracker(model, case, which, logs)
            w = np.asarray(case["w"], float)
            if name == "eigensam":
                expected, e = _eigen_sam(case, w, v)
            else:
                expected, e = _x_sam(case, w, v, correction)
            np.testing.assert_allclose(np.array(quadratic.w), expected, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(logs["eigen_alignment"], _cos(e, v), rtol=RTOL, atol=ATOL)
        except AssertionError as error:
            raise AssertionError(f"{geometry}: {error}") from None


OTHER_METHODS = [name for name in registry.names() if not registry.get(name).cls.requires_tracker]


def test_methods_that_only_track_the_eigenvector_log_finite_metrics():
    """Every other method with `tracker=True`: its update does not use `v`
    (so the refresh above is all the geometry changes), and its logged
    metrics stay finite and right with `v` orthogonal to the gradient, a
    zero gradient, and a zero or negative eigenvalue. Eager: each method's
    perturbation and metrics on a hand-made step, nothing traced."""
    for name in OTHER_METHODS:
        model, _ = _model(registry.create(name, tracker=True, seed=0), momentum=0.9)
        optimizer = model.optimizer
        for slot in optimizer.momentums:  # momentum-SAM perturbs along it
            slot.assign([0.5, -1.0])
        tracker = model.method.tracker
        tracker.vector[0].assign([1.0, 0.0])
        for grads, eigenvalue in (([0.0, 1.0], 0.0), ([0.0, 0.0], -2.0), ([0.0, 2.0], -3.0)):
            tracker.eigenvalue.assign(eigenvalue)
            context = tiny.eager_context(model, [grads], optimizer, step=1)
            e = np.array(model.method.step_perturbation(context)[0], "float64")
            logs = {k: float(v) for k, v in model.method.step_metrics(context).items()}
            where = f"{name} at g={grads}, λ={eigenvalue}: {logs}, e={e}"
            assert np.isfinite(e).all(), where
            assert logs["top_eigenvalue"] == eigenvalue, where
            assert logs["grad_eigen_cosine"] == 0.0, where  # <g, v> = 0 exactly
            np.testing.assert_allclose(
                logs["eigen_alignment"], _cos(e, np.array([1.0, 0.0])), rtol=RTOL, atol=ATOL,
                err_msg=where,
            )
