"""Tests of `keras_eigensam.hessian.power_iteration`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import hessian
from keras_eigensam.backend import distribute
from keras_eigensam.hessian.power_iteration import power_iteration_with_info
from tests.hessian.reference import classification_data
from tests.hessian.reference import logits_loss
from tests.hessian.reference import mlp
from tests.hessian.reference import random_vectors


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
    assert len(calls) == 7  # tol=None: exactly num_matvecs products

    tolerant = tf.function(
        lambda v: power_iteration_with_info(matvec, v, 500, 1e-8), jit_compile=True
    )
    lam, vec, info = tolerant(v0)
    np.testing.assert_allclose(lam, 5.0, rtol=1e-8, atol=0)
    np.testing.assert_allclose(abs(float(tf.tensordot(vec[0], q[:, 0], 1))), 1.0, rtol=0, atol=1e-6)
    assert 10 < int(info["iterations"]) < 500  # stopped early, on the rule
    assert float(info["residual"]) < 1e-8 and float(info["change"]) < 1e-8


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

        return hessian.power_iteration(matvec, v0, num_matvecs=3)

    lam, _ = tf.function(lambda v0: mirrored_strategy.run(replica_fn, args=(v0,)))(v0)
    lams = [float(t) for t in mirrored_strategy.experimental_local_results(lam)]
    single = mlp("tanh")
    single.set_weights(model.get_weights())
    op = hessian.HessianOperator(single, loss, (x, y))
    expected, _ = hessian.power_iteration(op.matvec, v0, num_matvecs=3)
    np.testing.assert_allclose(lams, [float(expected)] * 2, rtol=1e-5, atol=0)


def test_power_iteration_final_update_moves_the_vector_with_every_product():
    a = np.diag([3.0, 1.0, 0.5]).astype("float32")
    v0 = [tf.constant([1.0, 1.0, 1.0])]
    matvec = lambda v: [tf.linalg.matvec(a, v[0])]  # noqa: E731
    lam, v = hessian.power_iteration(matvec, v0, num_matvecs=1, final_update=True)
    u = np.ones(3) / np.sqrt(3)
    np.testing.assert_allclose(float(lam), u @ a @ u, rtol=1e-6)
    np.testing.assert_allclose(np.array(v[0]), a @ u / np.linalg.norm(a @ u), rtol=1e-6)
    lam_plain, v_plain = hessian.power_iteration(matvec, v0, num_matvecs=1)
    np.testing.assert_allclose(np.array(v_plain[0]), u, rtol=1e-6)  # no update without it
    np.testing.assert_allclose(float(lam_plain), float(lam), rtol=1e-6)


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


def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="num_matvecs=0"):
        hessian.power_iteration(lambda v: v, [tf.ones(2)], 0)
    with pytest.raises(ValueError, match="`tol`"):
        hessian.power_iteration(lambda v: v, [tf.ones(2)], 3, tol=0.0)
    with pytest.raises(TypeError, match="`num_matvecs` must be an integer"):
        hessian.power_iteration(lambda v: v, [tf.ones(2)], 2.5)


def test_deflated_power_iteration_finds_the_largest_magnitudes(float64):
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a = (q * np.array([3.0, -5.0, 1.0, 0.5, 0.2, 0.1])) @ q.T
    matvec = lambda v: [tf.linalg.matvec(tf.constant(a), v[0])]  # noqa: E731
    starts = [rng.standard_normal(6) for _ in range(2)]
    eigvals, eigvecs = hessian.deflated_power_iteration(
        matvec, 2, lambda i: [tf.constant(starts[i])], num_matvecs=500, tol=1e-10
    )
    np.testing.assert_allclose(eigvals, [-5.0, 3.0], rtol=1e-8)
    for vector, column in zip(eigvecs, [1, 0]):
        np.testing.assert_allclose(abs(float(tf.tensordot(vector[0], q[:, column], 1))), 1.0, atol=1e-8)
    with pytest.warns(UserWarning, match="eigenpair 0 did not reach tol"):
        hessian.deflated_power_iteration(matvec, 1, lambda i: [tf.constant(starts[0])], 2, 1e-10)
