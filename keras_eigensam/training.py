"""Training runs: what `scripts/train.py` and `scripts/compare.py` do, importable.

`run(TrainConfig(...))` trains one network on one dataset with one method and
writes everything about the run into a directory named after its
hyperparameters:

```
<output_dir>/<run_name>/        e.g. runs/digits-mlp-sam-rho0.05-lr0.1-bs64-e10-s0
    config.json                 the resolved TrainConfig (checked on restart)
    results.json                final/best test accuracy, losses, timings, versions
    history.csv                 one row per epoch (Keras `CSVLogger`)
    tensorboard/                TensorBoard event files
    backup/                     `keras.callbacks.BackupAndRestore` state
    model.keras                 the trained network (without the SAM wrapper)
```

A run that is killed resumes from its last finished epoch when it is started
again with the same settings (the backup holds the weights, the optimizer
slots and the method's state, such as Eigen-SAM's eigenvector); a run that
has finished is not trained again: `run` returns its stored results. Starting
a run in a directory that holds a run with different settings is an error.

Choices made here, which the scripts document as flags:

- `method="sgd"` trains the network itself (a plain `keras.Model`), so the
  baseline is Keras's own train step. The other methods wrap it in
  `SharpnessAwareModel`. When `rho` is not given it is `DEFAULT_RHO[method]`:
  SAM 0.05, ASAM 0.5, Eigen-SAM 0.05, X-SAM 0.05 (the defaults of the
  papers' CIFAR-10 runs and of the method classes).
- Weight decay is *coupled* L2 (`weight_decay / 2 · ‖W‖²` on kernels, added
  to the loss by `architectures.build`, so it enters the SAM perturbation)
  with `optimizer="sgd"`, and *decoupled* (`keras.optimizers.AdamW`, also on
  kernels only) with `optimizer="adamw"`.
- The learning rate follows a cosine decay to 0 over the whole run (or stays
  constant), after an optional linear warm-up from 0.
- Labels are one-hot and the loss is the softmax cross-entropy of the logits
  with optional label smoothing; the loss Keras logs includes the L2 term.
- `batch_size` is global: each of the strategy's replicas gets
  `batch_size / num_replicas` examples.
- Under a multi-worker strategy only the chief writes the run directory;
  the other workers write their logs to a temporary directory that is
  deleted at the end, and their backups to `<run_dir>/workers/worker<i>/`
  so a restarted job resumes on every worker from the same epoch.
"""

import csv
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_eigensam import architectures
from keras_eigensam import data
from keras_eigensam import validation
from keras_eigensam.methods import ASAM
from keras_eigensam.methods import SAM
from keras_eigensam.methods import EigenSAM
from keras_eigensam.methods import XSAM
from keras_eigensam.methods.x_sam import CORRECTIONS
from keras_eigensam.model import PERTURBATION_SCOPES
from keras_eigensam.model import SharpnessAwareModel

METHODS = ("sgd", "sam", "asam", "eigensam", "xsam")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")

#: `rho` used when a config leaves it unset.
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5, "eigensam": 0.05, "xsam": 0.05}
#: `learning_rate` used when a config leaves it unset, per base optimizer.
DEFAULT_LEARNING_RATE = {"sgd": 0.1, "adamw": 1e-3}

# Which methods read each method-specific setting (`None` in a config means
# "the method's default"); setting one for another method is an error, so a
# run never silently ignores a hyperparameter. `refresh_every` and
# `power_iterations` apply to SAM only with `curvature=True` (it then tracks
# the top eigenvector for the alignment metrics).
_METHOD_SETTINGS = {
    "rho": ("sam", "asam", "eigensam", "xsam"),
    "perturbation_scope": ("sam", "asam", "eigensam", "xsam"),
    "alpha": ("eigensam", "xsam"),
    "refresh_every": ("eigensam", "xsam"),
    "power_iterations": ("eigensam", "xsam"),
    "correction": ("xsam",),
    "eta": ("asam",),
}

#: The keys of `results.json` (see `run`).
RESULT_KEYS = (
    "run_name",
    "run_dir",
    "dataset",
    "model",
    "method",
    "final_test_accuracy",
    "best_test_accuracy",
    "best_epoch",
    "final_test_loss",
    "final_train_loss",
    "final_train_accuracy",
    "final_metrics",
    "num_params",
    "num_trainable_params",
    "epochs",
    "epochs_completed",
    "initial_epoch",
    "epochs_run",
    "steps_per_epoch",
    "wall_time_s",
    "fit_time_s",
    "train_time_s",
    "first_epoch_time_s",
    "steps_per_second",
    "versions",
    "device",
    "config",
    "metadata",
    "files",
)

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"

# Settings that change neither the result nor the checkpoint's layout, so a
# run may be resumed with different values (e.g. on other hardware).
_NOT_SETTINGS = (
    "data_dir",
    "output_dir",
    "run_name",
    "strategy",
    "tpu",
    "logical_cpus",
    "steps_per_execution",
    "jit_compile",
    "verbose",
)


class ConfigError(ValueError):
    """A `TrainConfig` (or the flags it came from) that cannot be run.

    The message names the setting, the allowed values and what was received,
    and says what to change.
    """


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; the scripts' flags map 1:1.

    Settings left as `None` take the documented default when the run starts
    (`resolved()`): `rho` per method (`DEFAULT_RHO`), `learning_rate` per
    optimizer (`DEFAULT_LEARNING_RATE`), and the method classes' own defaults
    for `alpha` (0.2), `eta` (0.01), `refresh_every` (Eigen-SAM 100, X-SAM 5),
    `power_iterations` (5), `correction` (`"reference"`) and
    `perturbation_scope` (`"replica"`).

    Attributes:
        dataset: One of `keras_eigensam.data.NAMES`. Defaults to `"digits"`
            (offline).
        model: One of `keras_eigensam.architectures.NAMES`. Defaults to
            `"mlp"`.
        augment: One of `keras_eigensam.data.AUGMENTATIONS`. Defaults to
            `"standard"`.
        data_dir: Directory of prepared TFDS datasets. Defaults to `None`.
        method: One of `METHODS`. Defaults to `"sam"`.
        rho, alpha, eta, refresh_every, power_iterations, correction,
            perturbation_scope: The method's hyperparameters (see the method
            classes). Default to `None` (the method's default).
        optimizer: `"sgd"` (momentum, coupled L2) or `"adamw"` (decoupled
            weight decay). Defaults to `"sgd"`.
        learning_rate: Peak learning rate. Defaults to `None`.
        momentum: SGD momentum (ignored by AdamW). Defaults to `0.9`.
        weight_decay: L2 coefficient (coupled for SGD, decoupled for AdamW).
            Defaults to `5e-4`.
        schedule: `"cosine"` or `"constant"`. Defaults to `"cosine"`.
        warmup_epochs: Epochs of linear warm-up from 0. Defaults to `0.0`.
        label_smoothing: Label smoothing of the cross-entropy. Defaults to
            `0.0`.
        batch_size: Global batch size. Defaults to `64`.
        epochs: Number of epochs. Defaults to `10`.
        max_steps_per_epoch: Cut every epoch to this many steps (smoke
            tests), or `None` for full epochs. Defaults to `None`.
        seed: Seed of the weights, the data order and augmentation, and the
            eigenvector's initial vector. Defaults to `0`.
        steps_per_execution: Passed to `compile`. Defaults to `1`.
        jit_compile: Passed to `compile`; `None` is Keras's `"auto"` (XLA on
            GPU/TPU, not on CPU). Defaults to `None`.
        mixed_precision: Train under the `mixed_float16` policy. Defaults to
            `False`.
        strategy: One of `STRATEGIES` (see `make_strategy`). Defaults to
            `"auto"`.
        tpu: TPU address for `strategy="tpu"`. Defaults to `None`.
        logical_cpus: Split the CPU into this many logical devices before
            TensorFlow starts (for testing `mirrored` on one CPU). Defaults
            to `None`.
        curvature: Measure curvature during training (see
            `curvature_callbacks`) and plot it into `curvature.png`.
            Defaults to `False`.
        output_dir: Parent directory of the run directory. Defaults to
            `"runs"`.
        run_name: Name of the run directory; `None` derives it from the
            hyperparameters (`run_name(config)`). Defaults to `None`.
        verbose: Keras's `verbose` for `fit` (0 silent, 1 progress bar, 2 one
            line per epoch). Defaults to `2`.

    Raises:
        ConfigError: if a setting is out of range, unknown, or set for a
            method that does not use it (e.g. `rho` with `method="sgd"`).

    Example:

    ```python
    config = TrainConfig(dataset="mnist1d", model="small_cnn",
                         method="eigensam", alpha=0.1, epochs=20)
    run_name(config)  # 'mnist1d-small_cnn-eigensam-rho0.05-a0.1-lr0.1-bs64-e20-s0'
    ```
    """

    dataset: str = "digits"
    model: str = "mlp"
    augment: str = "standard"
    data_dir: str = None
    method: str = "sam"
    rho: float = None
    alpha: float = None
    eta: float = None
    refresh_every: int = None
    power_iterations: int = None
    correction: str = None
    perturbation_scope: str = None
    optimizer: str = "sgd"
    learning_rate: float = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 64
    epochs: int = 10
    max_steps_per_epoch: int = None
    seed: int = 0
    steps_per_execution: int = 1
    jit_compile: bool = None
    mixed_precision: bool = False
    strategy: str = "auto"
    tpu: str = None
    logical_cpus: int = None
    curvature: bool = False
    output_dir: str = "runs"
    run_name: str = None
    verbose: int = 2

    def __post_init__(self):
        try:
            self._validate()
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(str(e)) from None

    def _validate(self):
        validation.check_choice("dataset", self.dataset, data.NAMES)
        validation.check_choice("model", self.model, architectures.NAMES)
        validation.check_choice("augment", self.augment, data.AUGMENTATIONS)
        validation.check_choice("method", self.method, METHODS)
        validation.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        validation.check_choice("schedule", self.schedule, SCHEDULES)
        validation.check_choice("strategy", self.strategy, STRATEGIES)
        for name in _METHOD_SETTINGS:
            value = getattr(self, name)
            users = _METHOD_SETTINGS[name]
            if name in ("refresh_every", "power_iterations") and self.curvature:
                users = users + ("sam",)
            if value is not None and self.method not in users:
                raise ConfigError(
                    f"`{name}` is a setting of method {'/'.join(users)} only; "
                    f"method={self.method!r} does not use it: leave it unset. "
                    f"Received: {name}={value!r}"
                )
        _optional(validation.check_number, "rho", self.rho, minimum=0.0)
        _optional(validation.check_number, "alpha", self.alpha, minimum=0.0)
        _optional(validation.check_number, "eta", self.eta, minimum=0.0)
        _optional(validation.check_int, "refresh_every", self.refresh_every, minimum=1)
        _optional(
            validation.check_int, "power_iterations", self.power_iterations, minimum=1
        )
        if self.correction is not None:
            validation.check_choice("correction", self.correction, CORRECTIONS)
        if self.perturbation_scope is not None:
            validation.check_choice(
                "perturbation_scope", self.perturbation_scope, PERTURBATION_SCOPES
            )
        _optional(
            validation.check_number,
            "learning_rate",
            self.learning_rate,
            minimum=0.0,
            strict=True,
        )
        validation.check_number("momentum", self.momentum, minimum=0.0, maximum=1.0)
        validation.check_number("weight_decay", self.weight_decay, minimum=0.0)
        validation.check_number("warmup_epochs", self.warmup_epochs, minimum=0.0)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                "`warmup_epochs` must not exceed `epochs`. Received: "
                f"warmup_epochs={self.warmup_epochs}, epochs={self.epochs}"
            )
        validation.check_number(
            "label_smoothing", self.label_smoothing, minimum=0.0, maximum=1.0
        )
        validation.check_int("batch_size", self.batch_size, minimum=1)
        validation.check_int("epochs", self.epochs, minimum=1)
        _optional(
            validation.check_int,
            "max_steps_per_epoch",
            self.max_steps_per_epoch,
            minimum=1,
        )
        validation.check_int("seed", self.seed, minimum=0)
        validation.check_int("steps_per_execution", self.steps_per_execution, minimum=1)
        _optional(validation.check_int, "logical_cpus", self.logical_cpus, minimum=1)
        for name in ("mixed_precision", "curvature"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"`{name}` must be True or False. "
                    f"Received: {name}={getattr(self, name)!r}"
                )
        if self.jit_compile not in (None, True, False):
            raise ConfigError(
                "`jit_compile` must be True, False or None (Keras's 'auto'). "
                f"Received: jit_compile={self.jit_compile!r}"
            )
        if self.strategy == "tpu" and not self.tpu:
            raise ConfigError(
                "strategy='tpu' needs the TPU's address: pass `tpu` (e.g. "
                "'local' on a TPU VM or 'grpc://10.0.0.2:8470'). Received: "
                f"tpu={self.tpu!r}"
            )
        if not self.output_dir:
            raise ConfigError(
                "`output_dir` must be a directory. "
                f"Received: output_dir={self.output_dir!r}"
            )

    def resolved(self):
        """Returns a copy with every `None` default replaced by its value."""
        updates = {}
        if self.learning_rate is None:
            updates["learning_rate"] = DEFAULT_LEARNING_RATE[self.optimizer]
        if self.method != "sgd":
            defaults = {
                "rho": DEFAULT_RHO[self.method],
                "perturbation_scope": "replica",
            }
            if self.method in ("eigensam", "xsam"):
                defaults.update(
                    alpha=0.2,
                    refresh_every=100 if self.method == "eigensam" else 5,
                    power_iterations=5,
                )
            if self.method == "sam" and self.curvature:
                defaults.update(refresh_every=100, power_iterations=5)
            if self.method == "xsam":
                defaults["correction"] = "reference"
            if self.method == "asam":
                defaults["eta"] = 0.01
            for name, value in defaults.items():
                if getattr(self, name) is None:
                    updates[name] = value
        return dataclasses.replace(self, **updates)

    def settings(self):
        """The resolved settings that define the run's result, as a dict."""
        config = dataclasses.asdict(self.resolved())
        for name in _NOT_SETTINGS:
            config.pop(name)
        return config


def _optional(check, name, value, **kwargs):
    if value is not None:
        check(name, value, **kwargs)


# Short names of the settings a run name shows when they differ from the
# TrainConfig default, in this order.
_NAME_SUFFIXES = (
    ("optimizer", ""),
    ("momentum", "m"),
    ("weight_decay", "wd"),
    ("schedule", ""),
    ("warmup_epochs", "wu"),
    ("label_smoothing", "ls"),
    ("augment", "aug-"),
    ("eta", "eta"),
    ("refresh_every", "k"),
    ("power_iterations", "pi"),
    ("correction", ""),
    ("perturbation_scope", "scope-"),
    ("mixed_precision", "mp"),
    ("curvature", "curv"),
    ("max_steps_per_epoch", "steps"),
)


def run_name(config):
    """The run directory's name, made of the run's hyperparameters.

    `dataset-model-method[-rho][-alpha]-lr-bs-epochs-seed`, followed by every
    other setting whose value differs from the default, e.g.
    `digits-mlp-sam-rho0.05-lr0.1-bs64-e10-s0` or
    `digits-mlp-xsam-rho0.05-a0.2-lr0.1-bs64-e10-s0-k1-projection`.
    """
    c = config.resolved()
    parts = [c.dataset, c.model, c.method]
    if c.method != "sgd":
        parts.append(f"rho{c.rho:g}")
    if c.method in ("eigensam", "xsam"):
        parts.append(f"a{c.alpha:g}")
    parts += [
        f"lr{c.learning_rate:g}",
        f"bs{c.batch_size}",
        f"e{c.epochs}",
        f"s{c.seed}",
    ]
    defaults = TrainConfig(method=c.method, curvature=c.curvature).resolved()
    for name, prefix in _NAME_SUFFIXES:
        value = getattr(c, name)
        default = False if name == "curvature" else getattr(defaults, name)
        if value == default or value is None:
            continue
        if name == "momentum" and c.optimizer != "sgd":
            continue
        if isinstance(value, bool):
            parts.append(prefix)
        elif isinstance(value, float):
            parts.append(f"{prefix}{value:g}")
        else:
            parts.append(f"{prefix}{value}")
    return "-".join(parts)


# ---------------------------------------------------------------------------
# Building blocks.


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
      environment variable). Create it before any other TensorFlow work.
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
    if name == "default":
        device = (
            tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("CPU")
        )[0]
        return tf.distribute.OneDeviceStrategy(device.name)
    if name == "mirrored":
        devices = tf.config.list_logical_devices(
            "GPU"
        ) or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if cluster_resolver is None:
            cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver
        )
        _fix_multi_worker_reduce(strategy)
        return strategy
    try:
        return _tpu_strategy(tpu)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConfigError(
            f"No TPU found at tpu={tpu!r} ({e}). Pass the TPU's address, or "
            "use strategy='auto' to fall back to GPUs or the CPU."
        ) from None


def _fix_multi_worker_reduce(strategy):
    """Lets Keras 3's `fit` run under `MultiWorkerMirroredStrategy`.

    Keras (3.15, keras-team/keras#20585) calls `strategy.reduce` on nested
    structures (the first data batch, in `fit`'s symbolic build) and with
    `axis=0` on scalar metrics; `MultiWorkerMirroredStrategy.reduce` accepts
    neither (`MirroredStrategy`'s does). This instance's `reduce` is made to
    reduce each leaf, over replicas only for scalars, as `MirroredStrategy`
    does. Every worker makes the same calls in the same order, so the
    collectives pair up.
    """
    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def reduce_one(leaf):
            rank = strategy.experimental_local_results(leaf)[0].shape.rank
            return reduce(reduce_op, leaf, axis=axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)

    strategy.reduce = reduce_each


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


def make_method(config):
    """The `SharpnessMethod` of `config`, or `None` for `method="sgd"`."""
    c = config.resolved()
    if c.method == "sgd":
        return None
    if c.method == "sam":
        return SAM(
            rho=c.rho,
            track_eigen=c.curvature,
            refresh_every=c.refresh_every or 100,
            power_iterations=c.power_iterations or 5,
            seed=c.seed,
        )
    if c.method == "asam":
        return ASAM(rho=c.rho, eta=c.eta)
    if c.method == "eigensam":
        return EigenSAM(
            rho=c.rho,
            alpha=c.alpha,
            refresh_every=c.refresh_every,
            power_iterations=c.power_iterations,
            seed=c.seed,
        )
    return XSAM(
        rho=c.rho,
        alpha=c.alpha,
        refresh_every=c.refresh_every,
        power_iterations=c.power_iterations,
        correction=c.correction,
        seed=c.seed,
    )


def learning_rate_schedule(config, steps_per_epoch):
    """The learning rate as a float or a `LearningRateSchedule` of the step.

    Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 over
    the remaining steps (`schedule="cosine"`) or the peak rate
    (`"constant"`).
    """
    c = config.resolved()
    total = c.epochs * steps_per_epoch
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    if c.schedule == "constant" and warmup == 0:
        return c.learning_rate
    # CosineDecay with alpha=1 decays from the peak to the peak: constant.
    alpha = 1.0 if c.schedule == "constant" else 0.0
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(
            c.learning_rate, decay_steps=total, alpha=alpha
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total - warmup),
        alpha=alpha,
        warmup_target=c.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(config, steps_per_epoch):
    """The base optimizer of `config` (SGD with momentum, or AdamW).

    SGD's weight decay is not here: it is the coupled L2 penalty of the
    architecture (`architecture_kwargs`). AdamW decays kernels only, like
    the coupled penalty (biases and BatchNorm parameters are excluded).
    """
    c = config.resolved()
    learning_rate = learning_rate_schedule(c, steps_per_epoch)
    if c.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=c.momentum)
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=c.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def architecture_kwargs(config):
    """Keyword arguments of `architectures.build`: the coupled L2 for SGD."""
    c = config.resolved()
    return {"weight_decay": c.weight_decay if c.optimizer == "sgd" else 0.0}


# ---------------------------------------------------------------------------
# The run.


class _Timer(keras.callbacks.Callback):
    """Training time per epoch, without the evaluation at its end."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds = []
        self._start = None
        self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end or time.perf_counter()
        self.epoch_seconds.append(end - self._start)


def run(config, *, strategy=None, callbacks=(), metadata=None):
    """Trains as `config` says and returns the results (see `results.json`).

    Args:
        config: A `TrainConfig`.
        strategy: A `tf.distribute.Strategy` to use instead of building
            `config.strategy` (e.g. to train several runs under one
            `MirroredStrategy`). Defaults to `None`.
        callbacks: Extra Keras callbacks, called after the run's own (the
            history logger and the backup). Defaults to `()`.
        metadata: A JSON-serialisable dict stored as `results["metadata"]`
            (the scripts store their flags there). Defaults to `None`.

    Returns:
        The dict written to `results.json`, with the keys of `RESULT_KEYS`:

        ```
        run_name, run_dir           the run directory's name and absolute path
        dataset, model, method      what was trained
        final_test_accuracy         test accuracy after the last epoch
        best_test_accuracy          the best test accuracy of any epoch, and
        best_epoch                    that epoch (1-based, as Keras prints)
        final_test_loss             test loss after the last epoch (with L2)
        final_train_loss            mean training loss of the last epoch, and
        final_train_accuracy          accuracy
        final_metrics               the last row of history.csv (curvature too)
        num_params                  the network's parameters (with BN statistics)
        num_trainable_params        its trainable parameters
        epochs                      epochs asked for
        epochs_completed            epochs in history.csv
        initial_epoch               epochs done before this process (resumed)
        epochs_run                  epochs this process trained
        steps_per_epoch             training steps per epoch
        wall_time_s                 this process's `run`, start to end
        fit_time_s                  its `fit`, evaluation included
        train_time_s                its training steps, evaluation excluded
        first_epoch_time_s          its first epoch's training (with tracing)
        steps_per_second            training steps per second after the first
                                      epoch (with one epoch: including it)
        versions                    python, tensorflow, keras, numpy, keras_eigensam
        device                      strategy, replicas, workers, devices, CPU, GPUs
        config                      the resolved TrainConfig (every setting)
        metadata                    what the caller passed (the scripts: flags)
        files                       names of the files in the run directory
        ```

    Raises:
        ConfigError: if the config cannot be run (e.g. `batch_size` not
            divisible by the number of replicas, or the run directory holds
            a run with other settings).
        keras_eigensam.data.DatasetUnavailableError: if a TFDS dataset is
            not prepared in `config.data_dir`.
        ImportError: if `tensorboard` is not installed.

    Example:

    ```python
    from keras_eigensam import training

    results = training.run(training.TrainConfig(method="sam", epochs=5))
    print(results["final_test_accuracy"], results["run_dir"])
    ```
    """
    start_time = time.perf_counter()
    config = config.resolved()
    if importlib.util.find_spec("tensorboard") is None:
        # TensorFlow >= 2.16 no longer installs it; `tf.summary` needs it.
        raise ImportError(
            "The run's TensorBoard logs need the `tensorboard` package, which "
            "TensorFlow no longer installs: `pip install tensorboard`."
        )
    if config.logical_cpus:
        split_cpu(config.logical_cpus)
    if strategy is None:
        strategy = make_strategy(config.strategy, tpu=config.tpu)
    num_replicas = strategy.num_replicas_in_sync
    if config.batch_size % num_replicas:
        raise ConfigError(
            f"`batch_size` is the global batch size and must be divisible by "
            f"the number of replicas ({num_replicas}): pass a multiple of "
            f"{num_replicas}, e.g. batch_size="
            f"{max(num_replicas, config.batch_size // num_replicas * num_replicas)}. "
            f"Received: batch_size={config.batch_size}"
        )
    is_chief, task_id = worker_info(strategy)
    name = config.run_name or run_name(config)
    run_dir = os.path.join(config.output_dir, name)
    settings = config.settings()
    previous = _read_json(os.path.join(run_dir, CONFIG_FILE))
    if previous is not None and previous != json.loads(json.dumps(settings)):
        changed = sorted(
            k
            for k in set(settings) | set(previous)
            if settings.get(k) != previous.get(k)
        )
        differences = ", ".join(
            f"{k}: {previous.get(k)!r} there, {settings.get(k)!r} now" for k in changed
        )
        raise ConfigError(
            f"The run directory {run_dir} holds a run with other settings "
            f"({differences}): pass another `output_dir` or `run_name`, or "
            "delete the directory."
        )
    done = _read_json(os.path.join(run_dir, RESULTS_FILE))
    if (
        previous is not None
        and done is not None
        and done.get("epochs_completed") == config.epochs
    ):
        if config.verbose:
            print(f"{run_dir} is complete; returning its results (delete it to rerun).")
        return done

    # The global seed (weights) also enters the shuffling's seeds, so it is
    # set before the datasets are made: a run does not depend on what ran
    # before it in the process.
    keras.utils.set_random_seed(config.seed)
    # Before anything is written, so a dataset that cannot be read leaves
    # no run directory behind.
    train_ds, info, steps_per_epoch = _datasets(
        config, num_replicas, strategy, training=True
    )
    test_ds, _, _ = _datasets(config, num_replicas, strategy, training=False)

    if is_chief:
        work_dir = run_dir
        backup_dir = os.path.join(run_dir, BACKUP_DIR)
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, CONFIG_FILE), settings)
    else:
        work_dir = tempfile.mkdtemp(prefix=f"{name}-worker{task_id}-")
        backup_dir = os.path.join(run_dir, "workers", f"worker{task_id}", BACKUP_DIR)
    history_path = os.path.join(work_dir, HISTORY_FILE)
    initial_epoch = _backed_up_epoch(backup_dir)
    # Rows of epochs after the backup (a run killed between the history's
    # write and the backup's) will be trained again: drop them.
    _truncate_history(history_path, initial_epoch)

    previous_policy = keras.config.dtype_policy()
    try:
        if config.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        net, model = build_model(config, info, steps_per_epoch, strategy)
        timer = _Timer()
        monitors, loggers = [], []
        if config.curvature:
            probe = _probe_batch(config, num_replicas)
            monitors, loggers = curvature_callbacks(config, probe, work_dir)
        run_callbacks = [
            timer,
            # The monitors write into the epoch logs: before the loggers.
            *monitors,
            # Before the backup, so a kill between the two re-trains (and
            # re-logs) the epoch instead of losing its row.
            keras.callbacks.CSVLogger(history_path, append=True),
            keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
            keras.callbacks.TensorBoard(os.path.join(work_dir, TENSORBOARD_DIR)),
            *loggers,
            *callbacks,
        ]
        if config.verbose:
            resumed = f", resuming after epoch {initial_epoch}" if initial_epoch else ""
            print(
                f"Run {name}: {config.method} on {config.dataset} with {config.model} "
                f"({net.count_params():,} parameters), {num_replicas} replica(s) "
                f"under {type(strategy).__name__}{resumed}; writing {work_dir}",
                flush=True,
            )
        fit_start = time.perf_counter()
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            validation_data=test_ds,
            callbacks=run_callbacks,
            verbose=config.verbose,
            shuffle=False,  # `data.load` shuffles, with the run's seed.
        )
        fit_seconds = time.perf_counter() - fit_start
        net.save(os.path.join(work_dir, MODEL_FILE))
    finally:
        keras.config.set_dtype_policy(previous_policy)

    results = _results(
        config=config,
        name=name,
        run_dir=run_dir,
        history_rows=_read_history(history_path),
        net=net,
        strategy=strategy,
        steps_per_epoch=steps_per_epoch,
        initial_epoch=initial_epoch,
        epochs_run=len(history.epoch),
        epoch_seconds=timer.epoch_seconds,
        fit_seconds=fit_seconds,
        wall_seconds=time.perf_counter() - start_time,
        metadata=metadata,
    )
    if config.curvature:
        results["files"]["curvature_plot"] = plot_curvature_of_runs(
            {config.method: work_dir},
            os.path.join(work_dir, CURVATURE_PLOT),
            steps_per_epoch,
            title=name,
        )
    write_json(os.path.join(work_dir, RESULTS_FILE), results)
    if not is_chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    return results


def build_model(config, info, steps_per_epoch, strategy):
    """The network and the compiled model that trains it, in `strategy`'s scope.

    Returns:
        `(net, model)`: the `architectures.build` network (logits), and
        either the network itself (`method="sgd"`) or a
        `SharpnessAwareModel` wrapping it, compiled with the base optimizer,
        the softmax cross-entropy of one-hot labels and an `accuracy`
        metric.
    """
    with strategy.scope():
        net = architectures.build(
            config.model,
            info.input_shape,
            info.num_classes,
            **architecture_kwargs(config),
        )
        method = make_method(config)
        if method is None:
            model = net
        else:
            model = SharpnessAwareModel(
                net,
                method=method,
                perturbation_scope=config.resolved().perturbation_scope,
            )
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing
            ),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            steps_per_execution=config.steps_per_execution,
        )
    return net, model


#: Examples in the fixed probe set of the curvature monitors.
CURVATURE_PROBE_SIZE = 256
#: Where `EigenAlignmentLogger` writes, inside the run directory.
ALIGNMENT_DIR = "alignment"
CURVATURE_PLOT = "curvature.png"


def curvature_callbacks(config, probe, run_dir):
    """The callbacks of `curvature=True`, as `(monitors, loggers)`.

    Monitors (they write into the epoch logs, so they go before
    `CSVLogger` and `TensorBoard`), measured at the end of every epoch on
    `probe`, a fixed batch of training examples, with the model in
    inference mode:

    - `HessianEigenvalueMonitor`: `hessian_top_eigenvalue` (Lanczos, 30
      Hessian-vector products);
    - `SharpnessMonitor(rho)`: `sharpness_ascent`, `sharpness_average` and
      `sharpness_worst_case` with the run's `rho` (0.05 for SGD).

    Loggers, for the methods that track the top eigenvector in the train
    step (SAM with `curvature=True`, Eigen-SAM, X-SAM):
    `EigenAlignmentLogger`, the per-step `eigen_alignment`,
    `grad_eigen_cosine` and `top_eigenvalue`, into
    `<run_dir>/alignment/` (CSV and TensorBoard). After a restart the CSV
    holds the steps since the restart only.
    """
    from keras_eigensam import callbacks as curvature

    c = config.resolved()
    rho = c.rho if c.method in ("sam", "eigensam", "xsam") else 0.05
    monitors = [
        curvature.HessianEigenvalueMonitor(probe, every_n_epochs=1, seed=c.seed),
        curvature.SharpnessMonitor(probe, rho=rho, seed=c.seed),
    ]
    loggers = []
    if c.method in ("sam", "eigensam", "xsam"):
        loggers.append(
            curvature.EigenAlignmentLogger(os.path.join(run_dir, ALIGNMENT_DIR))
        )
    return monitors, loggers


def plot_curvature_of_runs(run_dirs, out_png, steps_per_epoch, title=None):
    """`plotting.plot_curvature` of several run directories (label → dir).

    Returns the file name of the plot relative to its directory.
    """
    from keras_eigensam import plotting

    histories = {}
    for label, run_dir in run_dirs.items():
        sources = [os.path.join(run_dir, HISTORY_FILE)]
        alignment = os.path.join(run_dir, ALIGNMENT_DIR, "alignment.csv")
        if os.path.exists(alignment):
            sources.append(alignment)
        histories[label] = sources
    plotting.plot_curvature(
        histories, out_png, steps_per_epoch=steps_per_epoch, title=title
    )
    return os.path.basename(out_png)


def _probe_batch(config, num_replicas):
    """The first training examples, unaugmented, with one-hot labels."""
    size = max(num_replicas, CURVATURE_PROBE_SIZE - CURVATURE_PROBE_SIZE % num_replicas)
    ds, info = data.load(
        config.dataset, "train", size, training=False, data_dir=config.data_dir
    )
    x, y = next(iter(ds))
    # Every replica needs the same share of the batch.
    keep = int(x.shape[0]) - int(x.shape[0]) % num_replicas
    return x[:keep], tf.one_hot(y[:keep], info.num_classes)


def _datasets(config, num_replicas, strategy, *, training):
    ds, info = data.load(
        config.dataset,
        "train" if training else "test",
        config.batch_size,
        training=training,
        data_dir=config.data_dir,
        seed=config.seed,
        num_replicas=num_replicas,
        augment=config.augment,
    )
    steps = None
    if training:
        steps = info.num_examples // config.batch_size
        if steps == 0:
            raise ConfigError(
                f"`batch_size` must not exceed the {info.num_examples} training "
                f"examples of {config.dataset!r}: pass a smaller batch_size. "
                f"Received: batch_size={config.batch_size}"
            )
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
            ds = ds.take(steps)
    num_classes = info.num_classes
    ds = ds.map(
        lambda x, y: (x, tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Every worker reads the whole (small, in-memory) dataset and keeps
        # its share of each global batch; TFDS's file shards are too few to
        # shard by file.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        ds = ds.with_options(options)
    return ds, info, steps


def _results(
    *,
    config,
    name,
    run_dir,
    history_rows,
    net,
    strategy,
    steps_per_epoch,
    initial_epoch,
    epochs_run,
    epoch_seconds,
    fit_seconds,
    wall_seconds,
    metadata,
):
    last = history_rows[-1] if history_rows else {}
    test_accuracy = [row.get("val_accuracy") for row in history_rows]
    best_index = (
        int(np.nanargmax(np.array(test_accuracy, dtype=float)))
        if history_rows
        else None
    )
    # The first epoch of a process includes tracing (and XLA compilation).
    steady = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    train_seconds = float(sum(epoch_seconds))
    return {
        "run_name": name,
        "run_dir": os.path.abspath(run_dir),
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "final_test_accuracy": last.get("val_accuracy"),
        "best_test_accuracy": None if best_index is None else test_accuracy[best_index],
        "best_epoch": None if best_index is None else best_index + 1,
        "final_test_loss": last.get("val_loss"),
        "final_train_loss": last.get("loss"),
        "final_train_accuracy": last.get("accuracy"),
        "final_metrics": {k: v for k, v in last.items() if k != "epoch"},
        "num_params": int(net.count_params()),
        "num_trainable_params": int(
            sum(int(np.prod(v.shape)) for v in net.trainable_weights)
        ),
        "epochs": config.epochs,
        "epochs_completed": len(history_rows),
        "initial_epoch": initial_epoch,
        "epochs_run": epochs_run,
        "steps_per_epoch": steps_per_epoch,
        "wall_time_s": wall_seconds,
        "fit_time_s": fit_seconds,
        "train_time_s": train_seconds,
        "first_epoch_time_s": epoch_seconds[0] if epoch_seconds else None,
        "steps_per_second": (
            steps_per_epoch * len(steady) / sum(steady)
            if steady and sum(steady) > 0
            else None
        ),
        "versions": versions(),
        "device": device_info(strategy),
        "config": dataclasses.asdict(config),
        "metadata": metadata or {},
        "files": {
            "history": HISTORY_FILE,
            "tensorboard": TENSORBOARD_DIR,
            "backup": BACKUP_DIR,
            "model": MODEL_FILE,
            "config": CONFIG_FILE,
        },
    }


def versions():
    """Versions of Python, TensorFlow, Keras, NumPy and keras_eigensam."""
    import keras_eigensam

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "keras_eigensam": keras_eigensam.__version__,
    }


def device_info(strategy):
    """The strategy, its replicas and the hardware they run on."""
    resolver = getattr(strategy, "cluster_resolver", None)
    num_workers = 1
    if resolver is not None and getattr(resolver, "task_type", None):
        num_workers = len(resolver.cluster_spec().as_dict().get("worker", [])) + len(
            resolver.cluster_spec().as_dict().get("chief", [])
        )
    gpus = tf.config.list_physical_devices("GPU")
    gpu_names = []
    for gpu in gpus:
        try:
            gpu_names.append(
                tf.config.experimental.get_device_details(gpu).get("device_name")
            )
        except (ValueError, RuntimeError):
            gpu_names.append(gpu.name)
    return {
        "strategy": type(strategy).__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "num_workers": num_workers,
        "devices": _replica_devices(strategy),
        "gpus": gpu_names,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _replica_devices(strategy):
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:
        # TensorFlow's default strategy: the first GPU, else the CPU.
        devices = tf.config.list_logical_devices(
            "GPU"
        ) or tf.config.list_logical_devices("CPU")
        return [devices[0].name]


def cpu_name():
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_json(path, value):
    """Writes `value` as indented JSON, atomically (write, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _backed_up_epoch(backup_dir):
    """Epochs finished according to `BackupAndRestore`'s metadata (0 if none)."""
    metadata = _read_json(os.path.join(backup_dir, "training_metadata.json"))
    return int(metadata["epoch"]) if metadata else 0


def _read_history(path):
    """`history.csv` as a list of dicts of floats (`None` for missing)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    return [{k: _float_or_none(v) for k, v in row.items()} for row in rows]


def _float_or_none(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _truncate_history(path, num_epochs):
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    if not lines:
        return
    kept = [lines[0]] + [
        line for line in lines[1:] if int(line.split(",", 1)[0]) < num_epochs
    ]
    if len(kept) != len(lines):
        with open(path, "w", newline="") as f:
            f.writelines(kept)


# ---------------------------------------------------------------------------
# Comparisons.


def compare(configs, *, strategy=None, metadata=None, progress=None):
    """Runs every config of `configs` and tabulates the results by method.

    Each config is a `run` in its own run directory (so finished runs are not
    trained again); build them with `configs_for_methods`. Runs of the same
    method are grouped, in the order methods first appear. When the methods
    share their seeds, the seeds are paired: with the same seed every method
    starts from the same weights and sees the batches in the same order, so
    `delta_vs_first` (the mean and spread over seeds of the per-seed
    difference in final test accuracy from the first method) is less noisy
    than the difference of the means.

    Args:
        configs: A list of `TrainConfig`s.
        strategy: A strategy for all runs; `None` builds the first config's
            `strategy` once. Defaults to `None`.
        metadata: Stored in every run's results and in the comparison.
            Defaults to `None`.
        progress: Called with a one-line summary after every run (e.g.
            `print`), or `None`. Defaults to `None`.

    Returns:
        A dict with `rows` (one per method: `method`, `rho`, `seeds`, mean and
        standard deviation over the runs of the final and best test accuracy,
        the final test and train loss and the training time,
        `delta_vs_first` where seeds pair up, the per-seed final accuracies
        and the run directories), `first_method`, `curvature_plot` (with
        `curvature=True` in every config: `curvature.png` in the first
        config's `output_dir`, one line per method, its first seed's run;
        else `None`), `runs` (every run's results), `metadata`, `versions`
        and `device`.
    """
    if not configs:
        raise ConfigError("`configs` must hold at least one TrainConfig. Received: []")
    if strategy is None:
        strategy = make_strategy(configs[0].strategy, tpu=configs[0].tpu)
    by_method = {}
    for index, config in enumerate(configs, start=1):
        keras.utils.clear_session()
        results = run(config, strategy=strategy, metadata=metadata)
        by_method.setdefault(config.method, {})[config.seed] = results
        if progress is not None:
            progress(
                f"[{index}/{len(configs)}] {results['run_name']}: final test accuracy "
                f"{results['final_test_accuracy']:.4f}, {results['train_time_s']:.1f} s"
            )
    first = next(iter(by_method))
    curvature_plot = None
    if all(config.curvature for config in configs):
        # One line per method: its run with the first seed.
        first_runs = {
            method: next(iter(runs.values())) for method, runs in by_method.items()
        }
        plot_name = plot_curvature_of_runs(
            {method: r["run_dir"] for method, r in first_runs.items()},
            os.path.join(configs[0].output_dir, CURVATURE_PLOT),
            next(iter(first_runs.values()))["steps_per_epoch"],
            title=f"{configs[0].dataset}, {configs[0].model}: seed {configs[0].seed}",
        )
        curvature_plot = os.path.join(configs[0].output_dir, plot_name)
    rows = []
    for method, runs in by_method.items():
        results = list(runs.values())
        final = np.array([r["final_test_accuracy"] for r in results], dtype=float)
        paired = [seed for seed in runs if seed in by_method[first]]
        delta = [
            runs[seed]["final_test_accuracy"]
            - by_method[first][seed]["final_test_accuracy"]
            for seed in paired
        ]
        rows.append(
            {
                "method": method,
                "rho": results[0]["config"]["rho"],
                "seeds": list(runs),
                "final_test_accuracy": _mean_std(final),
                "best_test_accuracy": _mean_std(
                    [r["best_test_accuracy"] for r in results]
                ),
                "final_test_loss": _mean_std([r["final_test_loss"] for r in results]),
                "final_train_loss": _mean_std([r["final_train_loss"] for r in results]),
                "train_time_s": _mean_std([r["train_time_s"] for r in results]),
                "delta_vs_first": _mean_std(delta) if delta else None,
                "per_seed_final_test_accuracy": final.tolist(),
                "run_dirs": [r["run_dir"] for r in results],
            }
        )
    return {
        "rows": rows,
        "first_method": first,
        "curvature_plot": curvature_plot,
        "runs": [r for runs in by_method.values() for r in runs.values()],
        "metadata": metadata or {},
        "versions": versions(),
        "device": device_info(strategy),
    }


def configs_for_methods(methods, seeds, **settings):
    """One `TrainConfig` per method and seed, from settings shared by all.

    Settings a method does not use (`rho` for `"sgd"`, `alpha` for
    `"sam"`, ...) are left out of that method's config, so
    `configs_for_methods(["sgd", "eigensam"], [0], rho=0.1, alpha=0.1)` is
    valid.
    """
    configs = []
    for method in methods:
        for seed in seeds:
            fields = dict(settings, method=method, seed=seed)
            for name, users in _METHOD_SETTINGS.items():
                if name in ("refresh_every", "power_iterations") and fields.get(
                    "curvature"
                ):
                    users = users + ("sam",)
                if method not in users:
                    fields.pop(name, None)
            configs.append(TrainConfig(**fields))
    return configs


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


def comparison_markdown(comparison):
    """The comparison as a markdown table (accuracies in %)."""
    first = comparison["first_method"]
    seeds = sorted({seed for row in comparison["rows"] for seed in row["seeds"]})
    lines = [
        "| method | rho | final test acc. (%) | best test acc. (%) "
        f"| Δ vs {first} (pts) | final test loss | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        rho = "–" if row["rho"] is None else f"{row['rho']:g}"
        loss = row["final_test_loss"]
        cells = [
            row["method"],
            rho,
            _pct(row["final_test_accuracy"]),
            _pct(row["best_test_accuracy"]),
            _pct(row["delta_vs_first"], signed=True),
            f"{loss['mean']:.4f} ± {loss['std']:.4f}",
            f"{row['train_time_s']['mean']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}; "
        f"Δ is the per-seed difference from {first} (same initial weights and "
        "batch order), averaged."
    )
    return "\n".join(lines) + "\n"


def _pct(stats, signed=False):
    if stats is None:
        return "–"
    sign = "+" if signed else ""
    return f"{100 * stats['mean']:{sign}.2f} ± {100 * stats['std']:.2f}"
