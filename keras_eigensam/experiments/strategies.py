"""The `tf.distribute` strategies a run can train under, and who writes what.

`make_strategy` finds a TPU the ways Colab, Kaggle and Cloud TPUs offer one
and says what it found (`describe`). It reads one environment variable,
Colab's `COLAB_TPU_ADDR`, as TensorFlow's own TPU discovery reads `TPU_NAME`.
"""

import os
import weakref

import tensorflow as tf
from absl import logging

from keras_eigensam import validation
from keras_eigensam.backend import distribute
from keras_eigensam.experiments.config import STRATEGIES
from keras_eigensam.experiments.config import ConfigError

# What `make_strategy` found, per strategy it made.
_DESCRIPTIONS = weakref.WeakKeyDictionary()
# Why `tpu="local"` found no TPU on this machine, once tried: a TPU does not
# appear during a process, and each try takes most of a second.
_NO_LOCAL_TPU = []


def split_cpu(num_devices):
    """Splits the first physical CPU into `num_devices` logical devices.

    Must run before TensorFlow initialises its runtime (before the first op
    or device query). `MirroredStrategy` on a machine without GPUs then
    mirrors over the logical CPUs (`make_strategy("mirrored")`). A no-op if
    the CPU is already split that way.

    Raises:
        ConfigError: if TensorFlow is already initialised with another split.
    """
    num_devices = validation.check_int("logical_cpus", num_devices, minimum=1)
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    if current is None and num_devices == 1:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        raise ConfigError(
            "`logical_cpus` must be set before TensorFlow initialises its "
            f"runtime, which already runs with {have} logical CPU(s): start a "
            "new process (the scripts do this first). Received: "
            f"logical_cpus={num_devices}"
        ) from None


def make_strategy(name="auto", *, tpu=None, cluster_resolver=None):
    """Returns the `tf.distribute` strategy called `name`, and says what it found.

    - `"auto"`: a TPU if one is found (see below), else `MirroredStrategy`
      over all GPUs if there is more than one, else `"default"`. A TPU not
      found is no error, but the fallback is reported, with why each way
      of finding a TPU failed (`describe`).
    - `"default"`: one device, the first GPU or else the CPU, as a
      `OneDeviceStrategy` rather than TensorFlow's default strategy. Under
      any strategy but TensorFlow's default, `fit` first draws a batch from
      a throw-away iterator of the training set (to build the model), which
      advances the set's reshuffling by one epoch; running every
      configuration under an explicit strategy keeps the batch order the
      same on one device and on many, so runs with
      `perturbation_scope="global"` agree across replica counts.
    - `"mirrored"`: `MirroredStrategy` over all GPUs, or over all logical
      CPUs when there is no GPU (see `split_cpu`).
    - `"multi_worker"`: `MultiWorkerMirroredStrategy` with `cluster_resolver`
      (default: `TFConfigClusterResolver`, which reads the `TF_CONFIG`
      environment variable), with `distribute.fix_multi_worker_reduce`
      applied. Create it before any other TensorFlow work.
    - `"tpu"`: `TPUStrategy` on the TPU found (see below).

    Finding a TPU: with `tpu` given, a `TPUClusterResolver` at that address
    only. With `tpu=None`, in order: a TPU VM's own TPU (`tpu="local"`:
    Colab's and Kaggle's TPU runtimes today); an older Colab TPU at
    `"grpc://" + $COLAB_TPU_ADDR`; TensorFlow's own discovery (`TPU_NAME`,
    `KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS`). An attempt at `"local"` that finds
    no TPU on this machine is not repeated in the same process.

    What was found is logged (absl, INFO; WARNING when `"auto"` falls back
    after a TPU attempt failed for a reason other than there being none)
    and returned by `describe(strategy)`, e.g. `"TPU found at 'local' (TPU
    VM): TPUStrategy with 8 replicas"` or `"no TPU (…): OneDeviceStrategy
    on GPU:0"`.

    Raises:
        ConfigError: if `name` is unknown, or `"tpu"` finds no TPU (the
            message lists each attempt and why it failed).
    """
    if name not in STRATEGIES:
        raise ConfigError(
            f"`strategy` must be one of {sorted(STRATEGIES)}. "
            f"Received: strategy={name!r}"
        )
    fallback, warn = "", False
    if name in ("auto", "tpu"):
        strategy, where, failures = _find_tpu(tpu)
        if strategy is not None:
            return _made(strategy, f"TPU found at {where}: {_replicas(strategy)}")
        tried = "; ".join(f"{where}: {reason}" for where, reason, _ in failures)
        if name == "tpu":
            raise ConfigError(
                f"No TPU found. Tried {tried}. Pass the TPU's address as `tpu` "
                "('local' on a TPU VM, 'grpc://HOST:8470' for a TPU node), or "
                "use strategy='auto' to fall back to GPUs or the CPU. "
                f"Received: tpu={tpu!r}"
            )
        fallback = f"no TPU ({tried}): "
        # A TPU that is there but failed deserves more than an INFO line.
        warn = not all(absent for _, _, absent in failures)
        several_gpus = len(tf.config.list_logical_devices("GPU")) > 1
        name = "mirrored" if several_gpus else "default"
    if name in ("default", "mirrored"):
        devices = tf.config.list_logical_devices(
            "GPU"
        ) or tf.config.list_logical_devices("CPU")
        if name == "default":
            strategy = tf.distribute.OneDeviceStrategy(devices[0].name)
            found = f"OneDeviceStrategy on {_short(devices[0].name)}"
        else:
            strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
            kind = "GPU" if devices[0].device_type == "GPU" else "logical CPU"
            plural = "s" * (len(devices) != 1)
            found = f"MirroredStrategy over {len(devices)} {kind}{plural}"
        return _made(strategy, fallback + found, warn=warn)
    if cluster_resolver is None:
        cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = distribute.fix_multi_worker_reduce(
        tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)
    )
    return _made(
        strategy,
        f"{_replicas(strategy)} over {num_workers(strategy)} worker(s)",
    )


def describe(strategy):
    """One line on `strategy`: for one made by `make_strategy`, what it found.

    E.g. `"TPU found at 'local' (TPU VM): TPUStrategy with 8 replicas"`, or
    `"no TPU ('local' (TPU VM): NotFoundError: TPUs not found in the
    cluster. …; COLAB_TPU_ADDR: not set; …): OneDeviceStrategy on CPU:0"`.
    For another strategy, its class, replicas and devices.
    """
    description = _DESCRIPTIONS.get(strategy)
    if description is not None:
        return description
    devices = ", ".join(_short(d) for d in replica_devices(strategy))
    return f"{_replicas(strategy)} on {devices}"


def _made(strategy, description, warn=False):
    _DESCRIPTIONS[strategy] = description
    (logging.warning if warn else logging.info)("Strategy: %s", description)
    return strategy


def _replicas(strategy):
    count = strategy.num_replicas_in_sync
    return f"{type(strategy).__name__} with {count} replica{'s' * (count != 1)}"


def _short(device):
    """`"/job:localhost/replica:0/task:0/device:GPU:0"` → `"GPU:0"`."""
    return device.rsplit("device:", 1)[-1]


def _find_tpu(tpu):
    """`(strategy, where, failures)`: a `TPUStrategy` and where its TPU was
    found, or `None`; `failures` holds `(where, reason, absent)` per failed
    attempt, `absent` when the failure only says there is no such TPU."""
    failures = []

    def attempt(address, where):
        if address == "local" and _NO_LOCAL_TPU:
            failures.append((where, _NO_LOCAL_TPU[0], True))
            return None
        try:
            return _tpu_strategy(address)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            # No TPU here: `"local"` off a TPU VM, and TensorFlow's discovery
            # without TPU_NAME (a ValueError asking for one).
            absent = (
                address == "local" and isinstance(e, tf.errors.NotFoundError)
            ) or (address is None and isinstance(e, ValueError))
            if address == "local" and absent:
                _NO_LOCAL_TPU.append(_reason(e))
            failures.append((where, _reason(e), absent))
            return None

    if tpu is not None:
        where = repr(tpu)
        return attempt(tpu, where), where, failures
    where = "'local' (TPU VM)"
    strategy = attempt("local", where)
    if strategy is not None:
        return strategy, where, failures
    colab = os.environ.get("COLAB_TPU_ADDR")
    if colab:
        address = f"grpc://{colab}"
        where = f"{address!r} (COLAB_TPU_ADDR)"
        strategy = attempt(address, where)
        if strategy is not None:
            return strategy, where, failures
    else:
        failures.append(("COLAB_TPU_ADDR", "not set", True))
    strategy = attempt(None, "TensorFlow's discovery (TPU_NAME)")
    if strategy is not None:
        master = strategy.cluster_resolver.master()
        return strategy, f"{master!r} (TensorFlow's discovery)", failures
    return None, None, failures


def _reason(error, limit=120):
    """The error's type and first line, cut to `limit` characters (at the end
    of a sentence where there is one), without its final period."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if len(text) > limit:
        sentence = text.rfind(". ", 0, limit)
        text = text[:sentence] if sentence > 0 else text[: limit - 1] + "…"
    return text.rstrip(".")


def _tpu_strategy(tpu):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def worker_info(strategy):
    """`(is_chief, task_id)` of this process under `strategy`.

    The chief is the task of type `"chief"`, or worker 0 when the cluster
    has no chief; without a multi-worker strategy the process is the chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if not task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return True, 0
    is_chief = task_type == "chief" or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
    return is_chief, task_id


def num_workers(strategy):
    """The number of worker processes (1 without a multi-worker strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def replica_devices(strategy):
    """The names of the devices `strategy`'s replicas run on."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        # TensorFlow's default strategy: the first GPU, else the CPU.
        devices = tf.config.list_logical_devices(
            "GPU"
        ) or tf.config.list_logical_devices("CPU")
        return [devices[0].name]
