"""Tests of `keras_eigensam.experiments.strategies` (multi-worker runs:
tests/test_scripts.py)."""

import logging
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
    auto = strategies.make_strategy("auto")
    assert isinstance(auto, tf.distribute.OneDeviceStrategy)
    # The real TPU APIs on a machine without TPU: the attempts say so.
    assert strategies.describe(auto).startswith(
        "no TPU ('local' (TPU VM): NotFoundError: TPUs not found in the cluster; "
        "COLAB_TPU_ADDR: "
    )
    assert strategies.describe(auto).endswith("): OneDeviceStrategy on CPU:0")
    assert strategies.describe(strategy) == "OneDeviceStrategy on CPU:0"
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


# ---------------------------------------------------------------- finding a TPU

# TensorFlow 2.21's message off a TPU VM (first line), cut at a sentence.
NOT_FOUND = (
    "TPUs not found in the cluster. Failed in initialization: No OpKernel was "
    "registered to support Op 'ConfigureDistributedTPU' used by "
    "{{node ConfigureDistributedTPU}} with these attrs: [is_global_init=false]\n"
    "Registered devices: [CPU]"
)


@pytest.fixture
def fake_tpus(monkeypatch):
    """Fake TPU APIs. Set `tpus[address]` to `True` (a TPU answers there) or
    an exception (initialising it raises that); `tpus["discovered"]` is the
    address TensorFlow's discovery finds. `tried` lists resolver addresses."""
    tried, tpus = [], {}

    class Resolver:
        def __init__(self, tpu=None):
            tried.append(tpu)
            if tpu is None and "discovered" not in tpus:
                raise ValueError("Please provide a TPU Name to connect to.")
            self.address = tpus["discovered"] if tpu is None else tpu

        def master(self):
            return self.address

    def initialize(resolver):
        not_found = tf.errors.NotFoundError(None, None, NOT_FOUND)
        outcome = tpus.get(resolver.address, not_found)
        if outcome is not True:
            raise outcome

    class TPUStrategy:
        num_replicas_in_sync = 8

        def __init__(self, resolver):
            self.cluster_resolver = resolver

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", initialize)
    monkeypatch.setattr(tf.distribute, "TPUStrategy", TPUStrategy)
    monkeypatch.setattr(strategies, "_NO_LOCAL_TPU", [])
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    return types.SimpleNamespace(tried=tried, tpus=tpus)


def test_tpu_vm_is_tried_first(fake_tpus):
    fake_tpus.tpus["local"] = True
    strategy = strategies.make_strategy("auto")
    assert strategy.cluster_resolver.master() == "local"
    assert fake_tpus.tried == ["local"]
    assert strategies.describe(strategy) == (
        "TPU found at 'local' (TPU VM): TPUStrategy with 8 replicas"
    )


def test_then_colab_tpu_addr_then_tensorflows_discovery(fake_tpus, monkeypatch):
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    fake_tpus.tpus["grpc://10.0.0.2:8470"] = True
    strategy = strategies.make_strategy("tpu")
    assert fake_tpus.tried == ["local", "grpc://10.0.0.2:8470"]
    assert strategies.describe(strategy).startswith(
        "TPU found at 'grpc://10.0.0.2:8470' (COLAB_TPU_ADDR)"
    )
    monkeypatch.delenv("COLAB_TPU_ADDR")
    fake_tpus.tpus.update({"discovered": "grpc://node:8470", "grpc://node:8470": True})
    fake_tpus.tried.clear()
    strategy = strategies.make_strategy("auto")
    # No TPU at 'local' is remembered: not tried again.
    assert fake_tpus.tried == [None]
    assert strategies.describe(strategy).startswith(
        "TPU found at 'grpc://node:8470' (TensorFlow's discovery)"
    )


def test_an_explicit_tpu_is_the_only_one_tried(fake_tpus):
    with pytest.raises(ConfigError) as e:
        strategies.make_strategy("tpu", tpu="grpc://10.0.0.9:8470")
    assert fake_tpus.tried == ["grpc://10.0.0.9:8470"]
    assert str(e.value).startswith(
        "No TPU found. Tried 'grpc://10.0.0.9:8470': NotFoundError: TPUs not found "
        "in the cluster. Pass the TPU's address"
    )
    assert str(e.value).endswith("Received: tpu='grpc://10.0.0.9:8470'")


def test_auto_reports_its_fallback_and_warns_when_a_tpu_failed(fake_tpus, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    strategy = strategies.make_strategy("auto")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    expected = (
        "no TPU ('local' (TPU VM): NotFoundError: TPUs not found in the cluster; "
        "COLAB_TPU_ADDR: not set; TensorFlow's discovery (TPU_NAME): ValueError: "
        "Please provide a TPU Name to connect to): OneDeviceStrategy on CPU:0"
    )
    assert strategies.describe(strategy) == expected
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"Strategy: {expected}")
    ]
    # A TPU named by TPU_NAME that fails to start is not "no TPU": a warning.
    caplog.clear()
    busy = tf.errors.UnavailableError(None, None, "Socket closed")
    fake_tpus.tpus.update({"discovered": "grpc://busy:8470", "grpc://busy:8470": busy})
    strategies.make_strategy("auto")
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "TensorFlow's discovery (TPU_NAME): UnavailableError: Socket closed)" in (
        record.getMessage()
    )
    with pytest.raises(ConfigError, match="No TPU found. Tried 'local' \\(TPU VM\\)"):
        strategies.make_strategy("tpu")
