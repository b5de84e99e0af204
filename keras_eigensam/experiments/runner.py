"""Training runs: what `scripts/train.py` does, importable.

`run(TrainConfig(...))` trains one network on one dataset with one method and
writes everything about the run into a directory named after its
hyperparameters (`config.run_name`):

```
<output_dir>/<run_name>/        e.g. runs/digits-mlp-sam-rho=0.05-lr0.1-bs64-e10-s0
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

Labels are one-hot and the loss is the softmax cross-entropy of the logits
with optional label smoothing; the loss Keras logs includes the L2 term.
`batch_size` is global: each of the strategy's replicas gets
`batch_size / num_replicas` examples. Under a multi-worker strategy only the
chief writes the run directory; the other workers write their logs to a
temporary directory that is deleted at the end, and their backups to
`<run_dir>/workers/worker<i>/` so a restarted job resumes on every worker
from the same epoch.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from keras_eigensam.experiments import architectures
from keras_eigensam.experiments import curvature
from keras_eigensam.experiments import data
from keras_eigensam.experiments import optimizers
from keras_eigensam.experiments import results as results_lib
from keras_eigensam.experiments import strategies
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments.config import run_name
from keras_eigensam.methods import registry
from keras_eigensam.model import SharpnessAwareModel


def make_method(config):
    """The `SharpnessMethod` of `config`, or `None` for `method="sgd"`."""
    c = config.resolved()
    if c.method == "sgd":
        return None
    return registry.create(c.method, **c.method_args)


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
        The dict written to `results.json`, with the keys of
        `results.RESULT_KEYS`:

        ```
        run_name, run_dir           the run directory's name and absolute path
        dataset, model, method      what was trained
        method_config               the built method's constructor arguments
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
        device                      strategy (and how it was found), replicas,
                                      workers, devices, CPU, GPUs
        config                      the resolved TrainConfig (every setting)
        metadata                    what the caller passed (the scripts: flags)
        files                       names of the files in the run directory
        ```

    Raises:
        ConfigError: if the config cannot be run (e.g. `batch_size` not
            divisible by the number of replicas, or the run directory holds
            a run with other settings).
        keras_eigensam.experiments.data.DatasetUnavailableError: if a TFDS
            dataset is not prepared in `config.data_dir` and
            `config.download` is `False`, or its download failed.
        ImportError: if `tensorboard` is not installed.

    Example:

    ```python
    from keras_eigensam import experiments

    results = experiments.run(experiments.TrainConfig(method="sam", epochs=5))
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
        strategies.split_cpu(config.logical_cpus)
    if strategy is None:
        strategy = strategies.make_strategy(config.strategy, tpu=config.tpu)
    num_replicas = strategy.num_replicas_in_sync
    if config.batch_size % num_replicas:
        raise ConfigError(
            f"`batch_size` is the global batch size and must be divisible by "
            f"the number of replicas ({num_replicas}): pass a multiple of "
            f"{num_replicas}, e.g. batch_size="
            f"{max(num_replicas, config.batch_size // num_replicas * num_replicas)}. "
            f"Received: batch_size={config.batch_size}"
        )
    is_chief, task_id = strategies.worker_info(strategy)
    name = config.run_name or run_name(config)
    run_dir = os.path.join(config.output_dir, name)
    settings = config.settings()
    previous = _check_same_settings(run_dir, settings)
    done = results_lib.read_json(os.path.join(run_dir, results_lib.RESULTS_FILE))
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
    if is_chief:
        backup_dir = os.path.join(run_dir, results_lib.BACKUP_DIR)
    else:
        backup_dir = os.path.join(
            run_dir, "workers", f"worker{task_id}", results_lib.BACKUP_DIR
        )
    # The epochs left: the training data of epoch e is a function of (seed,
    # e), so a resumed run sees the batches an uninterrupted one sees.
    initial_epoch = results_lib.backed_up_epoch(backup_dir)
    # Before anything is written, so a dataset that cannot be read leaves
    # no run directory behind.
    train_ds, info, steps_per_epoch = _datasets(
        config, strategy, training=True, initial_epoch=initial_epoch
    )
    test_ds, _, _ = _datasets(config, strategy, training=False)
    with _as_config_error():
        architectures.check_input(config.model, info.input_shape)

    if is_chief:
        work_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        results_lib.write_json(os.path.join(run_dir, results_lib.CONFIG_FILE), settings)
    else:
        work_dir = tempfile.mkdtemp(prefix=f"{name}-worker{task_id}-")
    history_path = os.path.join(work_dir, results_lib.HISTORY_FILE)
    # Rows of epochs after the backup (a run killed between the history's
    # write and the backup's) will be trained again: drop them.
    results_lib.truncate_history(history_path, initial_epoch)

    previous_policy = keras.config.dtype_policy()
    try:
        if config.mixed_precision:
            keras.config.set_dtype_policy("mixed_float16")
        net, model = build_model(config, info, steps_per_epoch, strategy)
        method = getattr(model, "method", None)
        timer = _Timer()
        monitors, loggers = [], []
        if config.curvature:
            monitors, loggers = curvature.curvature_callbacks(
                curvature.probe_batch(config, num_replicas),
                work_dir,
                method=method,
                seed=config.seed,
            )
        run_callbacks = [
            timer,
            # The monitors write into the epoch logs: before the loggers.
            *monitors,
            # Before the backup, so a kill between the two re-trains (and
            # re-logs) the epoch instead of losing its row.
            keras.callbacks.CSVLogger(history_path, append=True),
            keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
            keras.callbacks.TensorBoard(
                os.path.join(work_dir, results_lib.TENSORBOARD_DIR)
            ),
            *loggers,
            *callbacks,
        ]
        if config.verbose:
            resumed = f", resuming after epoch {initial_epoch}" if initial_epoch else ""
            print(f"Strategy: {strategies.describe(strategy)}", flush=True)
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
            steps_per_epoch=steps_per_epoch,
            validation_data=test_ds,
            callbacks=run_callbacks,
            verbose=config.verbose,
            shuffle=False,  # `data.load` shuffles, with the run's seed.
        )
        fit_seconds = time.perf_counter() - fit_start
        net.save(os.path.join(work_dir, results_lib.MODEL_FILE))
    finally:
        keras.config.set_dtype_policy(previous_policy)

    results = results_lib.results(
        config=config,
        name=name,
        run_dir=run_dir,
        history_rows=results_lib.read_history(history_path),
        net=net,
        method_config=_method_config(config, method),
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
        results["files"]["curvature_plot"] = curvature.plot_runs(
            {config.method: work_dir},
            os.path.join(work_dir, curvature.PLOT_FILE),
            steps_per_epoch,
            title=name,
        )
    results_lib.write_json(os.path.join(work_dir, results_lib.RESULTS_FILE), results)
    if not is_chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    return results


def _check_same_settings(run_dir, settings):
    """The settings of the run in `run_dir` (`None` if none), if they are
    `settings`; raises if they are not."""
    previous = results_lib.read_json(os.path.join(run_dir, results_lib.CONFIG_FILE))
    current = json.loads(results_lib.to_json(settings))
    if previous is None or previous == current:
        return previous
    changed = sorted(
        k for k in set(current) | set(previous) if current.get(k) != previous.get(k)
    )
    differences = ", ".join(
        f"{k}: {previous.get(k)!r} there, {current.get(k)!r} now" for k in changed
    )
    raise ConfigError(
        f"The run directory {run_dir} holds a run with other settings "
        f"({differences}): pass another `output_dir` or `run_name`, or "
        "delete the directory."
    )


def _method_config(config, method):
    """The built method's constructor arguments, as its `get_config` says."""
    if method is None:
        return None
    arguments = registry.defaults(config.method)
    return {k: v for k, v in method.get_config().items() if k in arguments}


def build_model(config, info, steps_per_epoch, strategy):
    """The network and the compiled model that trains it, in `strategy`'s scope.

    Returns:
        `(net, model)`: the `architectures.build` network (logits), and
        either the network itself (`method="sgd"`) or a
        `SharpnessAwareModel` wrapping it, compiled with the base optimizer,
        the softmax cross-entropy of one-hot labels and an `accuracy`
        metric.
    """
    config = config.resolved()
    with strategy.scope():
        with _as_config_error():
            net = architectures.build(
                config.model,
                info.input_shape,
                info.num_classes,
                **optimizers.architecture_kwargs(config),
            )
        method = make_method(config)
        if method is None:
            model = net
        else:
            model = SharpnessAwareModel(
                net, method=method, perturbation_scope=config.perturbation_scope
            )
        model.compile(
            optimizer=optimizers.make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing
            ),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile="auto" if config.jit_compile is None else config.jit_compile,
            steps_per_execution=config.steps_per_execution,
        )
    return net, model


@contextlib.contextmanager
def _as_config_error():
    """Settings that do not go together (a 2-D architecture on signals,
    image augmentation of signals) are found where the data and the network
    meet; they are configuration errors, reported as such by the scripts."""
    try:
        yield
    except data.DatasetUnavailableError:
        raise
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


def _datasets(config, strategy, *, training, initial_epoch=0):
    """`(dataset, info, steps_per_epoch)` of the train or test split.

    One-hot labels; `steps_per_epoch` is `None` for the test split. The
    train split holds the epochs `initial_epoch … config.epochs − 1`, each a
    function of the seed and its index (`data.load(epochs=...)`).
    """
    with _as_config_error():
        ds, info = data.load(
            config.dataset,
            "train" if training else "test",
            config.batch_size,
            training=training,
            data_dir=config.data_dir,
            download=config.download,
            seed=config.seed,
            num_replicas=strategy.num_replicas_in_sync,
            augment=config.augment,
            **(
                dict(
                    epochs=config.epochs,
                    initial_epoch=initial_epoch,
                    steps_per_epoch=config.max_steps_per_epoch,
                )
                if training
                else {}
            ),
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
