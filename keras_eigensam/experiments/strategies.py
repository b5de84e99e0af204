"""The `tf.distribute` strategies a run can train under, and who writes what."""

import tensorflow as tf

from keras_eigensam import validation
from keras_eigensam.backend import distribute
from keras_eigensam.experiments.config import STRATEGIES
from keras_eigensam.experiments.config import ConfigError


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
    """Returns the `tf.distribute` strategy called `name`.

    - `"auto"`: a TPU if a `TPUClusterResolver` finds one (with `tpu` as its
      address, or TensorFlow's own discovery when `None`), else
      `MirroredStrategy` over all GPUs if there is more than one, else
      `"default"`.
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
    - `"tpu"`: `TPUStrategy` on the TPU at `tpu` (`"local"` on a TPU VM).

    Raises:
        ConfigError: if `name` is unknown, or `"tpu"` finds no TPU.
    """
    if name not in STRATEGIES:
        raise ConfigError(
            f"`strategy` must be one of {sorted(STRATEGIES)}. "
            f"Received: strategy={name!r}"
        )
    if name == "auto":
        try:
            return _tpu_strategy(tpu)
        except (ValueError, RuntimeError, tf.errors.OpError):
            pass
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        name = "default"
    if name in ("default", "mirrored"):
        devices = tf.config.list_logical_devices(
            "GPU"
        ) or tf.config.list_logical_devices("CPU")
        if name == "default":
            return tf.distribute.OneDeviceStrategy(devices[0].name)
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if cluster_resolver is None:
            cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return distribute.fix_multi_worker_reduce(
            tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)
        )
    try:
        return _tpu_strategy(tpu)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(
            f"No TPU found at tpu={tpu!r} ({e}). Pass the TPU's address, or "
            "use strategy='auto' to fall back to GPUs or the CPU."
        ) from None


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
