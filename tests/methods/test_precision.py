"""Mixed precision and loss scaling, for every registered method.

`test_contract.py::test_mixed_float16_trains` covers `mixed_float16` on one
replica, and `test_model.py` checks SAM's loss scaling against a float32
step. Here every method must also train under `mixed_bfloat16` (no loss
scaling: bfloat16 has float32's range), and, with a `LossScaleOptimizer` on
two replicas, take exactly the step of one float32 replica and skip a batch
whose loss overflows while its gradient does not; and train under both mixed
policies on two replicas.
"""

import keras
import numpy as np
import pytest

import keras_eigensam as ks
from keras_eigensam.methods import registry
from tests import tiny
from tests.methods.test_contract import _everything
from tests.methods.test_contract import _method_with_few_products
from tests.methods.test_contract import _state

NAMES = registry.names()

#: A power of two: scaling the loss and unscaling the gradients is exact.
LOSS_SCALE = 2.0**8


@pytest.mark.parametrize("name", NAMES)
def test_mixed_bfloat16_trains(name):
    keras.config.set_dtype_policy("mixed_bfloat16")
    x, y = tiny.data(n=32)
    model = ks.SharpnessAwareModel(tiny.bn_dropout_net(), method=_method_with_few_products(name))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    # bfloat16 needs no loss scaling: Keras does not wrap the optimizer.
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.model.layers[0].compute_dtype == "bfloat16"
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    tiny.assert_trains_keeping_float32_state(history, model.variables + model.method.variables)


def _replica_copies(variable):
    return [np.array(c) for c in variable.value.values]


@pytest.mark.parametrize("name", NAMES)
def test_loss_scale_optimizer_on_two_replicas(name, mirrored_strategy):
    """Two replicas, each given the same 8 examples, with a power-of-two
    loss scale take the step of one float32 replica on those 8 examples:
    every method's per-replica quantities (perturbation, example selection,
    eigenvector) are then those of the single device, and scaling by a
    power of two is exact. A batch whose loss overflows on one replica (a
    label of 1e30: the squared error is inf, its gradient finite) is then
    skipped: nothing changes on either replica, the step is counted once in
    `skipped_steps`, and the loss scale is halved."""
    x, y = tiny.data(n=16)
    # Global batches of 16 whose halves (the replicas' shards) are equal.
    twice = lambda a: np.concatenate([a[:8], a[:8], a[8:], a[8:]])  # noqa: E731
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(tiny.mlp(), method=_method_with_few_products(name))
        model.compile(
            optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.05, momentum=0.9), initial_scale=LOSS_SCALE
            ),
            loss="mse",
        )
    w0 = tiny.weights_of(model)
    history = tiny.fit_steps(model, twice(x), twice(y), 16, 2)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["skipped_steps"] == [0.0]

    single = ks.SharpnessAwareModel(tiny.mlp(), method=_method_with_few_products(name))
    single.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    tiny.fit_steps(single, x, y, 8, 2)
    assert tiny.max_difference(tiny.weights_of(single), w0) > 1e-3
    tiny.assert_weights_close(
        tiny.weights_of(model) + _state(model),
        tiny.weights_of(single) + _state(single),
        rtol=1e-6, atol=1e-7,
    )

    y_bad = twice(y)[:16].copy()
    y_bad[12, 1] = 1e30  # in the second replica's shard
    before = _everything(model)
    history = tiny.fit_steps(model, twice(x)[:16], y_bad, 16, 1)
    assert history.history["skipped_steps"] == [1.0]
    for b, a in zip(before, _everything(model)):
        np.testing.assert_array_equal(a, b)
    scale = model.optimizer.dynamic_scale
    assert [float(s) for s in _replica_copies(scale)] == [LOSS_SCALE / 2] * 2
    for variable in model.variables + model.method.variables:
        copies = _replica_copies(variable)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
        assert np.isfinite(copies[0]).all(), variable.path


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_policy_on_two_replicas(name, policy, mirrored_strategy):
    """Every method under a mixed policy on two replicas (Keras wraps the
    optimizer in a `LossScaleOptimizer` for `mixed_float16`): it trains,
    the replicas stay identical and finite, variables and method state stay
    float32. The step's numbers are checked in float32 above."""
    keras.config.set_dtype_policy(policy)
    x, y = tiny.data(n=32)
    with mirrored_strategy.scope():
        model = ks.SharpnessAwareModel(tiny.mlp(), method=_method_with_few_products(name))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    w0 = tiny.weights_of(model)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["skipped_steps"] == [0.0, 0.0, 0.0]
    assert tiny.max_difference(tiny.weights_of(model), w0) > 1e-3
    for variable in model.variables + model.method.variables:
        assert variable.dtype in ("float32", "int64", "int32"), variable.path
        copies = _replica_copies(variable)
        assert len(copies) == 2, variable.path
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
        assert np.isfinite(copies[0]).all(), variable.path
