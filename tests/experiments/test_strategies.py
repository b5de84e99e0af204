"""Tests of `keras_eigensam.experiments.strategies` (multi-worker runs:
tests/test_scripts.py)."""

import types

import pytest
import tensorflow as tf

from keras_eigensam.backend import distribute
from keras_eigensam.experiments import strategies
from keras_eigensam.experiments.config import ConfigError


def test_split_cpu_after_tensorflow_started():
    # conftest split the CPU in two before TensorFlow started.
    strategies.split_cpu(2)  # the same split: nothing to do
    tf.config.list_logical_devices("CPU")  # starts the runtime, if no test did
    with pytest.raises(ConfigError, match="before TensorFlow initialises"):
        strategies.split_cpu(3)


def test_default_strategy_is_one_device():
    strategy = strategies.make_strategy("default")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert isinstance(strategies.make_strategy("auto"), tf.distribute.OneDeviceStrategy)
    assert strategies.num_workers(strategy) == 1
    (device,) = strategies.replica_devices(strategy)
    assert device.endswith("/device:CPU:0")
    with pytest.raises(ConfigError, match="`strategy` must be one of"):
        strategies.make_strategy("horovod")


def _fake(cluster, task_type, task_id):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_chief_is_worker_zero_or_the_chief_task():
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert strategies.worker_info(_fake(workers, "worker", 0)) == (True, 0)
    assert strategies.worker_info(_fake(workers, "worker", 1)) == (False, 1)
    with_chief = dict(workers, chief=["127.0.0.1:3"])
    assert strategies.worker_info(_fake(with_chief, "chief", 0)) == (True, 0)
    assert strategies.worker_info(_fake(with_chief, "worker", 0)) == (False, 0)
    assert strategies.num_workers(_fake(with_chief, "worker", 0)) == 3
    assert strategies.worker_info(strategies.make_strategy("default")) == (True, 0)


class _RecordingStrategy:
    """Records `reduce` calls; one replica, whose result is the value."""

    def __init__(self):
        self.calls = []

    def reduce(self, reduce_op, value, axis=None):
        self.calls.append((reduce_op, value.shape.rank, axis))
        return value

    def experimental_local_results(self, value):
        return (value,)


def test_multi_worker_reduce_fix_reduces_each_leaf_on_affected_keras():
    strategy = _RecordingStrategy()
    assert distribute.fix_multi_worker_reduce(strategy, keras_version="3.15.1") is strategy
    batch = {"x": tf.zeros((4, 2)), "loss": tf.constant(1.0)}
    reduced = strategy.reduce("MEAN", batch, axis=0)
    assert set(reduced) == {"x", "loss"}
    # Over replicas only for the scalar (axis dropped), as MirroredStrategy does.
    assert sorted(strategy.calls, key=lambda c: c[1]) == [("MEAN", 0, None), ("MEAN", 2, 0)]


@pytest.mark.parametrize("version", ["3.7.0", "3.16.0", "3.16.0.dev2026", "4.0.0"])
def test_multi_worker_reduce_fix_leaves_other_keras_alone(version):
    strategy = _RecordingStrategy()
    distribute.fix_multi_worker_reduce(strategy, keras_version=version)
    assert "reduce" not in vars(strategy)
