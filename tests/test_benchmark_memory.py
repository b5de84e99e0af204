"""The benchmarks' tensor-memory measure (`scripts/benchmark_memory.py`)
against tensors of known size."""

import importlib.util
import os

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark_memory():
    path = os.path.join(REPO, "scripts", "benchmark_memory.py")
    spec = importlib.util.spec_from_file_location("_benchmark_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensor_peak_is_what_the_work_allocates_above_what_lived_before():
    memory = _benchmark_memory()
    live = tf.ones([16 * 2**20])  # 64 MiB alive before and after: not counted

    @tf.function
    def work(x, copies):
        # `copies` slices of 32 MiB alive at once (cumulative sums: nothing
        # the graph optimizer can fold away), then one scalar.
        parts = [tf.math.cumsum(x[: 8 * 2**20] + float(i)) for i in range(copies)]
        return tf.add_n([tf.reduce_sum(p[-1:]) for p in parts])

    peaks = {}
    for copies in (1, 2):
        work(live, copies)  # traced and run once: its own buffers settle
        before = memory.reset_tensor_peak()
        assert before is not None, "TensorFlow's CPU allocator keeps no statistics"
        work(live, copies)
        peaks[copies] = memory.tensor_peak_mib(before)
    # Each copy needs its slice sum input (32 MiB) and its cumulative sum
    # (32 MiB); the executor may free an input once its sum is done.
    assert 32 <= peaks[1] <= 64 + 8
    assert peaks[2] - peaks[1] >= 32 - 8
    assert peaks[2] < 64 + 8 + 64  # the 64 MiB before the work are not counted


def test_reports_compare_tensors_where_recorded_else_resident_memory():
    memory = _benchmark_memory()
    assert memory.step_peak({"peak_mib": 20.0, "tensor_peak_mib": 200.0}) == 200.0
    assert memory.step_peak({"peak_mib": 20.0, "tensor_peak_mib": None}) == 20.0
    assert memory.step_peak({"peak_mib": 20.0}) == 20.0
