"""Dataset-level curvature: `CurvatureData` and the batch-size-weighted sum.

23 examples in batches of 5 (the last of 3): every operator over the batches
must be the matrix of the mean loss over all 23 examples, computed here by
the dense references on the whole data in one batch.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_eigensam import hessian
from tests.hessian.reference import flatten
from tests.hessian.reference import full_empirical_fisher
from tests.hessian.reference import full_ggn
from tests.hessian.reference import full_hessian
from tests.hessian.reference import make_loss
from tests.hessian.reference import random_vectors
from tests.hessian.reference import small_data
from tests.hessian.reference import small_mlp

N = 23
BATCH = 5
CE = "sparse_ce"


def _data(sample_weight=False):
    x, y = small_data(N, CE)
    if not sample_weight:
        return x, y
    return x, y, np.random.default_rng(7).uniform(0.0, 2.0, N)


def _product(op, v):
    return flatten(op.matvec(v))


def test_split_keeps_the_last_partial_batch():
    data = hessian.CurvatureData(_data(), batch_size=BATCH)
    sizes = [int(b["x"].shape[0]) for b in data]
    assert sizes == [5, 5, 5, 5, 3]
    assert (data.num_batches, data.num_examples, data.streamed) == (5, N, False)
    streamed = hessian.CurvatureData(tf.data.Dataset.from_tensor_slices(_data()).batch(BATCH))
    assert (streamed.num_batches, streamed.num_examples, streamed.streamed) == (5, N, True)


def test_hessian_over_batches_is_the_hessian_of_the_mean_loss(float64):
    model = small_mlp()
    x, y = _data()
    op = hessian.HessianOperator(model, make_loss(CE), (x, y), batch_size=BATCH)
    # Finite differences of exact gradients on all 23 at once: errors ~1e-9.
    h = full_hessian(model, x, y, loss=make_loss(CE))
    v = random_vectors(model.trainable_variables)
    np.testing.assert_allclose(_product(op, v), h @ flatten(v), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(
    "kind,source,weighted",
    [
        ("ggn", "batch_size", False),
        ("ggn", "dataset", True),
        ("fisher", "batch_size", True),
        ("fisher", "dataset", False),
    ],
)
def test_ggn_and_fisher_over_batches_are_those_of_the_mean_loss(float64, kind, source, weighted):
    model = small_mlp()
    data = _data(weighted)
    sample_weight = data[2] if weighted else None
    operator, reference = {
        "ggn": (hessian.GGNOperator, full_ggn),
        "fisher": (hessian.EmpiricalFisherOperator, full_empirical_fisher),
    }[kind]
    if source == "batch_size":
        op = operator(model, make_loss(CE), data, batch_size=BATCH)
    else:
        op = operator(model, make_loss(CE), tf.data.Dataset.from_tensor_slices(data).batch(BATCH))
        assert op.data.streamed
    assert op.num_examples == N
    expected = reference(model, data[0], data[1], CE, sample_weight=sample_weight)
    v = random_vectors(model.trainable_variables)
    np.testing.assert_allclose(_product(op, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)


def test_a_sum_reduction_is_averaged_over_batches_by_batch_size(float64):
    """`L = Σ_b n_b L_b / Σ_b n_b` for every reduction, as documented (and as
    Keras's `evaluate` averages batch losses): with `"sum"` that is not the
    sum over all examples, so the reference is built batch by batch."""
    model = small_mlp()
    x, y, w = _data(sample_weight=True)
    loss = make_loss(CE, "sum")
    op = hessian.EmpiricalFisherOperator(model, loss, (x, y, w), batch_size=BATCH)
    expected = sum(
        len(x[i : i + BATCH])
        * full_empirical_fisher(
            model, x[i : i + BATCH], y[i : i + BATCH], CE, w[i : i + BATCH], reduction="sum"
        )
        for i in range(0, N, BATCH)
    ) / N
    v = random_vectors(model.trainable_variables)
    np.testing.assert_allclose(_product(op, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)


def test_streamed_products_are_deterministic(float64):
    model = small_mlp()
    dataset = tf.data.Dataset.from_tensor_slices(_data()).batch(BATCH)
    op = hessian.GGNOperator(model, make_loss(CE), dataset)
    v = random_vectors(model.trainable_variables)
    np.testing.assert_array_equal(_product(op, v), _product(op, v))
    assert op.matvec_count == 2


def test_a_reshuffling_dataset_is_refused_unless_unchecked(float64):
    model = small_mlp()
    x, y = _data()
    reshuffled = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(N, seed=0, reshuffle_each_iteration=True)
        .batch(BATCH)
    )
    with pytest.raises(ValueError, match="same batches"):
        hessian.GGNOperator(model, make_loss(CE), reshuffled)
    with pytest.raises(ValueError, match="same batches"):
        hessian.CurvatureData(reshuffled)
    expected = full_ggn(model, x, y, CE)
    v = random_vectors(model.trainable_variables)
    # Unchecked, every pass still reads each example once; the mean loss's
    # GGN does not depend on the partition (up to round-off).
    unchecked = hessian.GGNOperator(model, make_loss(CE), reshuffled, check_deterministic=False)
    np.testing.assert_allclose(_product(unchecked, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)
    fixed = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(N, seed=1, reshuffle_each_iteration=False)
        .batch(BATCH)
    )
    op = hessian.GGNOperator(model, make_loss(CE), fixed)
    np.testing.assert_allclose(_product(op, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)


def test_batch_size_with_a_dataset_raises_naming_it():
    dataset = tf.data.Dataset.from_tensor_slices(_data()).batch(BATCH)
    with pytest.raises(ValueError, match="batch_size=5"):
        hessian.CurvatureData(dataset, batch_size=5)
    with pytest.raises(ValueError, match="`batch_size`"):
        hessian.GGNOperator(small_mlp(), make_loss(CE), dataset, batch_size=5)


def test_a_one_shot_generator_is_read_once_into_memory(float64):
    model = small_mlp()
    x, y = _data()
    generator = ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH))
    op = hessian.EmpiricalFisherOperator(model, make_loss(CE), generator)
    assert not op.data.streamed
    assert (op.data.num_batches, op.num_examples) == (5, N)
    expected = full_empirical_fisher(model, x, y, CE)
    v = random_vectors(model.trainable_variables)
    for _ in range(2):  # the generator is exhausted; the batches are kept
        np.testing.assert_allclose(_product(op, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_mirrored_strategy_matches_one_device(float64, mirrored_strategy, kind):
    """Every batch split into 2 shards (the last 3 examples as 2 + 1). The
    product equals the dense matrix of the whole data, which the one-device
    operators equal in the tests above; float64, so to round-off (rtol
    1e-10)."""
    operator, reference = {
        "ggn": (hessian.GGNOperator, full_ggn),
        "fisher": (hessian.EmpiricalFisherOperator, full_empirical_fisher),
    }[kind]
    x, y, w = _data(sample_weight=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(BATCH)
    single = small_mlp()
    with mirrored_strategy.scope():
        mirrored = small_mlp()
    mirrored.set_weights(single.get_weights())
    op = operator(mirrored, make_loss(CE), dataset)
    assert op._strategy.num_replicas_in_sync == 2
    expected = reference(single, x, y, CE, sample_weight=w)
    v = random_vectors(single.trainable_variables)
    np.testing.assert_allclose(_product(op, v), expected @ flatten(v), rtol=1e-10, atol=1e-13)
