"""Test set-up: quiet TensorFlow and two logical CPUs for MirroredStrategy."""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Runs the tests marked `slow` first (in their collection order).

    Under `pytest -n` (xdist's `load` scheduling) each worker is first handed
    a chunk of consecutive tests (a quarter of its share, 93 tests of the
    full suite), the rest as workers free up. The slow tests (subprocesses
    and notebooks: a quarter of the suite's time in 24 tests) then all start
    in one worker, which builds the module fixtures they
    share once (`test_scripts.py`'s runs, `test_notebooks.py`'s kernel), and
    the run ends on short tests that the workers share out evenly rather
    than on one long subprocess while the other worker idles.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with float32 policy and fresh Keras names/seeds.

    `clear_session` ends with a full garbage collection, which traverses
    every object the collector tracks: TensorFlow's import alone leaves
    ~370,000, and the count grows with the tests a process has run, so it
    took 0.3-1.6 s per test. What survives that collection is live (module
    state, session and module fixtures): `gc.freeze` moves it out of the
    collector's view, so each later collection only traverses what was
    made since. A frozen object is still freed when its reference count
    drops to zero; only a frozen reference cycle that later becomes garbage
    is kept (the fixtures of a finished module), at most a few MB.
    """
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()
    gc.freeze()
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over two logical CPUs for the whole session.

    TensorFlow's collective runtime keys collectives by instance numbers that
    each new MirroredStrategy starts again from, so a second strategy in the
    same process can collide with shapes the first one used.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def op_determinism():
    """Deterministic TensorFlow ops for the duration of one test."""
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_op_determinism()
    yield
    tf_config.disable_op_determinism()
