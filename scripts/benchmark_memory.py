"""Shared by the benchmark scripts: peak resident memory of one call, in a
fresh process.

A worker process (the benchmark script itself, run with worker flags) warms
up what it measures, then calls `reset_peak()`, reads `rss_mib()`, runs the
measured work, and reports `peak_mib(resettable) - before`. The peak is the
kernel's resident high-water mark (`VmHWM`), reset through
`/proc/self/clear_refs`; where it cannot be reset, `ru_maxrss` (which then
also holds the warm-up: an upper bound). The parent runs workers with
`MALLOC_ENV`, which tells glibc to hand freed blocks back to the system, so
the level before the work is the live memory, not the allocator's cache.
A worker prints one line `RESULT <json>`, which `run_worker` returns.

Resident memory also counts what the work allocates outside TensorFlow's
tensors and misses buffers reused from the warm-up, so small figures (below
about 100 MiB) do not resolve. Workers also report `tensor_peak_mib`: the
peak of TensorFlow's own CPU allocator over the work, above its level
before (`tf.config.experimental.get_memory_info`, reset through
`reset_memory_stats`): every tensor the graph executor allocates, counted
exactly and the same in every run, but not XLA's own buffers, so it is taken
without XLA.
"""

import json
import os
import resource
import subprocess
import sys

# glibc: serve blocks of 64 KiB and more with mmap (unmapped when freed) and
# trim the heap at every free, so that resident memory follows live memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

#: How `peak_mib` measured, for the reports (a "step": the measured work).
HOW = {
    True: "VmHWM reset before the step",
    False: "ru_maxrss (warm-up included)",
}


def rss_mib():
    """The process's resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**10
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak():
    """Resets the kernel's resident high-water mark; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return abs(_status_mib("VmHWM") - rss_mib()) < 64
    except OSError:
        return False


def peak_mib(resettable):
    """The resident high-water mark in MiB (since `reset_peak` if `resettable`)."""
    if resettable:
        return _status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def reset_tensor_peak():
    """Resets the peak of TensorFlow's CPU allocator; its level now in MiB,
    or None where the allocator keeps no statistics."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        return tf.config.experimental.get_memory_info("CPU:0")["current"] / 2**20
    except (ValueError, RuntimeError, KeyError):
        return None


def tensor_peak_mib(before):
    """The peak of TensorFlow's CPU allocator since `reset_tensor_peak`
    above `before` (its return), in MiB; None without statistics."""
    import tensorflow as tf

    if before is None:
        return None
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20 - before


def step_peak(figure):
    """The figure a report compares: a worker's `tensor_peak_mib` where it
    has one, else its resident `peak_mib`."""
    tensors = figure.get("tensor_peak_mib")
    return figure["peak_mib"] if tensors is None else tensors


def run_worker(script, args, env=None):
    """Runs `script` with `args` in a fresh Python process; the JSON of its
    `RESULT` line, or `{"error": <last lines of its output>}`."""
    cmd = [sys.executable, os.path.abspath(script)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)}
