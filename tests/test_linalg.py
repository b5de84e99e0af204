"""`keras_eigensam.linalg`: vector algebra over lists of tensors, against NumPy."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import linalg

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _vector(scale, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(dtype) for shape in ((3, 4), (5,), (2, 2, 2))]


def _numpy_norm(xs):
    flat = np.concatenate([np.ravel(x).astype(np.float64) for x in xs])
    # Scaled, in float64: exact for the magnitudes used here.
    m = np.max(np.abs(flat))
    return 0.0 if m == 0 else m * np.linalg.norm(flat / m)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(
    "scale, dtype",
    [(1.0, "float32"), (1e25, "float32"), (1e-25, "float32"), (1e-36, "float32"),
     (1e200, "float64"), (1e-200, "float64"), (1.0, "float16"), (1e-3, "float16")],
)
def test_global_norm_is_exact_at_every_scale(scale, dtype, compiled):
    """Typical vectors (one pass), and those whose squares overflow (1e25)
    or underflow (1e-25, 1e-36: near the smallest normal float32; TensorFlow
    on CPU flushes subnormal numbers to zero): the norm of the entries as
    stored, to float rounding, finite and non-zero."""
    xs = _vector(scale, dtype)
    norm = tf.function(linalg.global_norm, jit_compile=True) if compiled else linalg.global_norm
    got = float(norm([tf.constant(x) for x in xs]))
    want = _numpy_norm(xs)
    assert want > 0 and np.isfinite(want)
    rtol = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(got, want, rtol=rtol)


def test_global_norm_of_zero_is_zero_and_of_a_nan_or_inf_is_not_finite():
    zeros = [tf.zeros((3, 2)), tf.zeros((4,))]
    assert float(linalg.global_norm(zeros)) == 0.0
    for bad in (np.nan, np.inf):
        xs = [tf.constant([[1.0, bad], [2.0, 3.0]]), tf.ones((4,))]
        assert not np.isfinite(float(linalg.global_norm(xs)))


def test_inner_cosine_and_normalize_match_numpy():
    xs, ys = _vector(1.0, seed=1), _vector(2.0, seed=2)
    fx = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    fy = np.concatenate([y.ravel() for y in ys]).astype(np.float64)
    tx, ty = [tf.constant(x) for x in xs], [tf.constant(y) for y in ys]
    np.testing.assert_allclose(float(linalg.inner(tx, ty)), fx @ fy, rtol=1e-5)
    np.testing.assert_allclose(
        float(linalg.cosine(tx, ty)), fx @ fy / np.linalg.norm(fx) / np.linalg.norm(fy), rtol=1e-5
    )
    unit, norm = linalg.normalize(tx)
    np.testing.assert_allclose(float(norm), np.linalg.norm(fx), rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(u) for u in unit]), fx / np.linalg.norm(fx), rtol=1e-5, atol=1e-7
    )
