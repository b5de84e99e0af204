"""What defines a training run: `TrainConfig`, its choices, defaults and name.

The scripts take their flags' choices from here (and the methods from
`keras_eigensam.methods.registry`) instead of restating them. Nothing here
imports TensorFlow itself; building and running a config is `runner`'s job.

Choices made here, which the scripts document as flags:

- `method="sgd"` trains the network itself (a plain `keras.Model`), so the
  baseline is Keras's own train step. The other methods are the registry's:
  they wrap the network in `SharpnessAwareModel`, built with
  `registry.create(method, **method_args)`. Arguments left out of
  `method_args` take the class's defaults (`registry.defaults`), except
  `seed`, which is the run's.
- `learning_rate` unset is `DEFAULT_LEARNING_RATE[optimizer]`.
"""

import collections.abc
import dataclasses
import inspect
import numbers
import os

from keras_eigensam import validation
from keras_eigensam.experiments import architectures
from keras_eigensam.experiments import data
from keras_eigensam.methods import registry
from keras_eigensam.model import PERTURBATION_SCOPES
from keras_eigensam.model import SharpnessAwareModel

DATASETS = data.NAMES
MODELS = architectures.NAMES
AUGMENTATIONS = data.AUGMENTATIONS
METHODS = ("sgd",) + registry.names()
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")

#: `learning_rate` used when a config leaves it unset, per base optimizer.
DEFAULT_LEARNING_RATE = {"sgd": 0.1, "adamw": 1e-3}
#: `perturbation_scope` used when a config leaves it unset: the model's.
DEFAULT_PERTURBATION_SCOPE = (
    inspect.signature(SharpnessAwareModel).parameters["perturbation_scope"].default
)

# Settings that change neither the result nor the checkpoint's layout, so a
# run may be resumed with different values (e.g. on other hardware).
_NOT_SETTINGS = (
    "data_dir",
    "download",
    "output_dir",
    "run_name",
    "strategy",
    "tpu",
    "logical_cpus",
    "steps_per_execution",
    "jit_compile",
    "verbose",
)
# Types a method argument may have: it is stored in config.json.
_ARGUMENT_TYPES = (bool, numbers.Real, str, type(None))


class ConfigError(ValueError):
    """A `TrainConfig` (or the flags it came from) that cannot be run.

    The message names the setting, the allowed values and what was received,
    and says what to change.
    """


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; the scripts' flags map 1:1.

    Settings left as `None` take their default when the run starts
    (`resolved()`): `learning_rate` per optimizer (`DEFAULT_LEARNING_RATE`)
    and `perturbation_scope` from `SharpnessAwareModel`.

    Attributes:
        dataset: One of `DATASETS`. Defaults to `"digits"` (offline).
        model: One of `MODELS`. Defaults to `"mlp"`.
        augment: One of `AUGMENTATIONS`. Defaults to `"standard"`.
        data_dir: Directory of prepared TFDS datasets. Defaults to `None`.
        download: Download and prepare a TFDS dataset missing from
            `data_dir` (`data.load(download=True)`: once, the workers of a
            multi-worker run wait for the one that prepares). Defaults to
            `False`.
        method: `"sgd"` or a name in `registry.names()`. Defaults to `"sam"`.
        method_args: Arguments of the method's constructor (e.g.
            `{"rho": 0.1, "alpha": 0.1}`), numbers, strings, booleans or
            `None`; those left out take the class's defaults. Defaults to
            `{}`.
        perturbation_scope: `SharpnessAwareModel`'s `perturbation_scope`
            (not for `"sgd"`). Defaults to `None` (the model's default).
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
            method's (its `seed` argument, if it has one and `method_args`
            does not set it). Defaults to `0`.
        steps_per_execution: Passed to `compile`. Defaults to `1`.
        jit_compile: Passed to `compile`; `None` is Keras's `"auto"` (XLA on
            GPU/TPU, not on CPU). Defaults to `None`.
        mixed_precision: Train under the `mixed_float16` policy. Defaults to
            `False`.
        strategy: One of `STRATEGIES` (see `strategies.make_strategy`).
            Defaults to `"auto"`.
        tpu: The TPU's address for `strategy="tpu"` or `"auto"` (e.g.
            `"local"` on a TPU VM); `None` looks for one the usual ways
            (`strategies.make_strategy`). Defaults to `None`.
        logical_cpus: Split the CPU into this many logical devices before
            TensorFlow starts (for testing `mirrored` on one CPU). Defaults
            to `None`.
        curvature: Measure curvature during training (see
            `curvature.callbacks`) and plot it into `curvature.png`; a method
            that can track the top eigenvector does (see
            `eigenvector_tracking_args`). Defaults to `False`.
        output_dir: Parent directory of the run directory. Defaults to
            `"runs"`.
        run_name: Name of the run directory; `None` derives it from the
            hyperparameters (`run_name(config)`). Defaults to `None`.
        verbose: Keras's `verbose` for `fit` (0 silent, 1 progress bar, 2 one
            line per epoch). Defaults to `2`.

    Raises:
        ConfigError: if a setting is out of range or unknown, a method
            argument is not one of the method's constructor arguments or
            out of its range, or a setting is given to `method="sgd"`, which
            has none (`method_args`, `perturbation_scope`).

    Example:

    ```python
    config = TrainConfig(dataset="mnist1d", model="small_cnn",
                         method="eigensam", method_args={"alpha": 0.1}, epochs=20)
    run_name(config)  # 'mnist1d-small_cnn-eigensam-alpha=0.1-rho=0.05-lr0.1-bs64-e20-s0'
    ```
    """

    dataset: str = "digits"
    model: str = "mlp"
    augment: str = "standard"
    data_dir: str = None
    download: bool = False
    method: str = "sam"
    method_args: dict = dataclasses.field(default_factory=dict)
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
        # A copy in key order: the caller's dict stays the caller's, and
        # equal arguments compare (and serialise) equal.
        object.__setattr__(self, "method_args", dict(sorted(self.method_args.items())))

    def _validate(self):
        validation.check_choice("dataset", self.dataset, DATASETS)
        validation.check_choice("model", self.model, MODELS)
        validation.check_choice("augment", self.augment, AUGMENTATIONS)
        validation.check_choice("method", self.method, METHODS)
        validation.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        validation.check_choice("schedule", self.schedule, SCHEDULES)
        validation.check_choice("strategy", self.strategy, STRATEGIES)
        self._validate_method()
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
        validation.check_bool("mixed_precision", self.mixed_precision)
        validation.check_bool("curvature", self.curvature)
        validation.check_bool("download", self.download)
        if self.jit_compile not in (None, True, False):
            raise ConfigError(
                "`jit_compile` must be True, False or None (Keras's 'auto'). "
                f"Received: jit_compile={self.jit_compile!r}"
            )
        if self.tpu is not None and not (isinstance(self.tpu, str) and self.tpu):
            raise ConfigError(
                "`tpu` must be the TPU's address (e.g. 'local' on a TPU VM or "
                "'grpc://10.0.0.2:8470') or None to look for one. Received: "
                f"tpu={self.tpu!r}"
            )
        validation.check_path("output_dir", self.output_dir)
        if not self.output_dir:
            raise ConfigError(
                "`output_dir` must be a directory. "
                f"Received: output_dir={self.output_dir!r}"
            )
        _optional(validation.check_path, "data_dir", self.data_dir)
        if self.run_name is not None and not (
            isinstance(self.run_name, str)
            and self.run_name
            and os.path.basename(self.run_name) == self.run_name
        ):
            raise ConfigError(
                "`run_name` must be the name of the run directory (a non-empty "
                "string without a path separator) or None to derive it. "
                f"Received: run_name={self.run_name!r}"
            )
        validation.check_int("verbose", self.verbose)
        validation.check_choice("verbose", self.verbose, (0, 1, 2))

    def _validate_method(self):
        args = self.method_args
        if not isinstance(args, collections.abc.Mapping):
            raise ConfigError(
                "`method_args` must be a dict of the method's constructor "
                f"arguments. Received: method_args={args!r}"
            )
        if self.method == "sgd":
            for name, value in (
                ("method_args", args or None),
                ("perturbation_scope", self.perturbation_scope),
            ):
                if value is not None:
                    raise ConfigError(
                        f"method='sgd' (the base optimizer alone) takes no "
                        f"`{name}`: leave it unset. Received: {name}={value!r}"
                    )
            return
        for key, value in args.items():
            if not isinstance(value, _ARGUMENT_TYPES):
                raise ConfigError(
                    "`method_args` values must be numbers, strings, booleans "
                    f"or None (they are stored in config.json). Received: "
                    f"{key}={value!r}"
                )
        if self.perturbation_scope is not None:
            validation.check_choice(
                "perturbation_scope", self.perturbation_scope, PERTURBATION_SCOPES
            )
        # Unknown keys, then the values: the constructor checks its own.
        registry.check_arguments(self.method, args)
        registry.create(self.method, **method_arguments(self))

    def resolved(self):
        """Returns a copy with every default filled in.

        `method_args` then holds every argument of the method's constructor
        (`method_arguments`).
        """
        updates = {}
        if self.learning_rate is None:
            updates["learning_rate"] = DEFAULT_LEARNING_RATE[self.optimizer]
        if self.method != "sgd":
            updates["method_args"] = method_arguments(self)
            if self.perturbation_scope is None:
                updates["perturbation_scope"] = DEFAULT_PERTURBATION_SCOPE
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


def eigenvector_tracking_args(method):
    """The arguments that make `method` track the top Hessian eigenvector.

    `curvature=True` logs the per-step eigenvector alignment of every
    method: those that need the eigenvector (Eigen-SAM, X-SAM) track it
    anyway, the others are given `tracker=True`, which does not change their
    update. The one place that knows how a method is asked to track.
    """
    if registry.get(method).cls.requires_tracker:
        return {}
    return {"tracker": True}


def method_arguments(config):
    """Every constructor argument of `config.method` (`{}` for `"sgd"`).

    The class's defaults, then `eigenvector_tracking_args` with
    `curvature=True`, then the run's `seed` for the tracker's initial
    vector (where the method tracks one) and any other random draw of the
    method (ESAM's masks), then `config.method_args`.
    """
    if config.method == "sgd":
        return {}
    args = registry.defaults(config.method)
    if config.curvature:
        args.update(eigenvector_tracking_args(config.method))
    if "seed" in args or registry.tracks_eigenvector(
        config.method, {**args, **config.method_args}
    ):
        # The tracker's initial vector, ESAM's masks.
        args["seed"] = config.seed
    args.update(config.method_args)
    return dict(sorted(args.items()))


def method_label(config):
    """The method arguments a run's name and a comparison's table show.

    `rho` and every argument whose value differs from what the method gets
    by default in this run (the class's default, the run's seed, curvature
    tracking), in key order.
    """
    if config.method == "sgd":
        return {}
    args = method_arguments(config)
    usual = method_arguments(dataclasses.replace(config, method_args={}))
    return {
        key: value
        for key, value in args.items()
        if key == "rho" or key not in usual or value != usual[key]
    }


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
    ("perturbation_scope", "scope-"),
    ("mixed_precision", "mp"),
    ("curvature", "curv"),
    ("max_steps_per_epoch", "steps"),
)


def run_name(config):
    """The run directory's name, made of the run's hyperparameters.

    `dataset-model-method[-key=value...]-lr-bs-epochs-seed`, the method's
    `method_label` (its `rho` and every argument set to another value than
    its default, sorted), followed by every other setting whose value
    differs from the default, e.g. `digits-mlp-sam-rho=0.05-lr0.1-bs64-e10-s0`
    or `digits-mlp-xsam-correction=projection-refresh_every=1-rho=0.05-lr0.1-bs64-e10-s0`.
    """
    c = config.resolved()
    parts = [c.dataset, c.model, c.method]
    parts += argument_strings(method_label(config))
    parts += [
        f"lr{c.learning_rate:g}",
        f"bs{c.batch_size}",
        f"e{c.epochs}",
        f"s{c.seed}",
    ]
    defaults = TrainConfig(method=c.method).resolved()
    for name, prefix in _NAME_SUFFIXES:
        value = getattr(c, name)
        if value == getattr(defaults, name) or value is None:
            continue
        if name == "momentum" and c.optimizer != "sgd":
            continue
        if isinstance(value, bool):
            parts.append(prefix)
        else:
            parts.append(f"{prefix}{_short(value)}")
    return "-".join(parts)


def argument_strings(arguments):
    """`["key=value", ...]` of a dict of arguments, floats in short form."""
    return [f"{key}={_short(value)}" for key, value in arguments.items()]


def _short(value):
    return f"{value:g}" if isinstance(value, float) else f"{value}"
