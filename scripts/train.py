r"""Trains one network with SGD or one of the registered methods.

    python scripts/train.py                                  # digits, MLP, SAM: offline
    python scripts/train.py --method=eigensam --method_args=alpha=0.1 --epochs=30
    python scripts/train.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
        --model=resnet18 --method=sam --rho=0.05 --batch_size=128 --epochs=200 \
        --augment=cutout --learning_rate=0.1 --weight_decay=5e-4

The work is done by `keras_eigensam.experiments.run`; this script maps flags
to a `TrainConfig`. Everything goes to `<output_dir>/<run name>/`, the name
made of the hyperparameters (e.g.
`runs/digits-mlp-sam-rho=0.05-lr0.1-bs64-e10-s0`): `results.json`,
`config.json`, `history.csv`, `tensorboard/`, the `BackupAndRestore` state in
`backup/` (start a killed run again with the same flags and it resumes from
its last finished epoch; start a finished one and its results are printed
without training) and the trained network in `model.keras`; with
`--curvature` also `alignment/` (per-step eigenvector alignment, CSV and
TensorBoard) and `curvature.png`. The keys of `results.json` are listed in
`keras_eigensam.experiments.runner.run`: final and best test accuracy, final
test and train loss, `num_params`, wall time, steps/s, versions, device and
every setting (`config`, and the flags in `metadata`).

Defaults worth knowing:
- `--method` choices and `--method_args` keys come from
  `keras_eigensam.methods.registry`; unset arguments take the class defaults
  (the README's method table), `seed` the run's `--seed`.
- `--learning_rate` unset: 0.1 for `--optimizer=sgd`, 1e-3 for `adamw`.
- `--weight_decay` is coupled L2 on the kernels (in the loss, so it enters the
  SAM perturbation) for SGD, and decoupled for AdamW.
- `--batch_size` is global, split over the replicas.
- `--method=sgd` trains the plain Keras model (Keras's own train step).

TFDS datasets (`cifar10`, `cifar100`, `fashion_mnist`, `svhn_cropped`) are
read from `--data_dir` (unset: `~/tensorflow_datasets`) and downloaded only
with `--download`, which prepares them there once (the workers of a
multi-worker run wait for the one that prepares); or prepare them elsewhere
with `tfds build NAME --data_dir=DIR` and pass `--data_dir=DIR`. `digits`
and `mnist1d` need no files.

Distribution: `--strategy=auto` picks a TPU, else all GPUs, else one device;
`mirrored` with `--logical_cpus=2` mirrors over two logical CPUs;
`multi_worker` reads the cluster from `TF_CONFIG` (the chief writes the run
directory, the other workers a temporary one).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

# The choices come from the library. Importing it imports TensorFlow (it
# takes seconds) but does not start its runtime: `--logical_cpus` applies.
import keras  # noqa: E402
import method_flags  # noqa: E402

from keras_eigensam import experiments  # noqa: E402
from keras_eigensam.experiments import config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dataset", "digits", config.DATASETS, "Dataset (digits and mnist1d are offline)."
)
flags.DEFINE_string("data_dir", None, "Directory of prepared TFDS datasets.")
flags.DEFINE_bool(
    "download",
    False,
    "Download and prepare a TFDS dataset missing from --data_dir (once; "
    "workers starting together wait for the one that prepares).",
)
flags.DEFINE_enum(
    "model", "mlp", config.MODELS, "Architecture (experiments.architectures)."
)
flags.DEFINE_enum(
    "augment",
    "standard",
    config.AUGMENTATIONS,
    "Training augmentation; cutout and randaugment use keras-cv (images only).",
)
flags.DEFINE_enum("method", "sam", config.METHODS, method_flags.method_help())
method_flags.define_method_args_flags()
flags.DEFINE_enum(
    "perturbation_scope",
    None,
    config.PERTURBATION_SCOPES,
    "Perturb each replica with its own gradient, or all with the all-reduced "
    "one (unset: replica).",
)
flags.DEFINE_enum("optimizer", "sgd", config.OPTIMIZERS, "Base optimizer.")
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (unset: sgd 0.1, adamw 1e-3)."
)
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float(
    "weight_decay", 5e-4, "Coupled L2 for sgd, decoupled decay for adamw."
)
flags.DEFINE_enum("schedule", "cosine", config.SCHEDULES, "Learning-rate schedule.")
flags.DEFINE_float(
    "warmup_epochs", 0.0, "Epochs of linear learning-rate warm-up from 0."
)
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (divided over the replicas).")
flags.DEFINE_integer("epochs", 10, "Epochs.")
flags.DEFINE_integer(
    "max_steps_per_epoch", None, "Cut every epoch to this many steps (smoke tests)."
)
flags.DEFINE_integer(
    "seed", 0, "Seed of weights, data order, augmentation and the method's."
)
flags.DEFINE_integer("steps_per_execution", 1, "Train steps per compiled call.")
flags.DEFINE_bool("jit_compile", None, "XLA (unset: Keras's auto, on for GPU/TPU).")
flags.DEFINE_bool("mixed_precision", False, "Train under the mixed_float16 policy.")
flags.DEFINE_enum("strategy", "auto", config.STRATEGIES, "Distribution strategy.")
flags.DEFINE_string(
    "tpu",
    None,
    "TPU address for --strategy=tpu/auto ('local' on a TPU VM; unset: look for "
    "one on a TPU VM, at $COLAB_TPU_ADDR, then by TensorFlow's discovery).",
)
flags.DEFINE_integer(
    "logical_cpus", None, "Split the CPU into this many logical devices.", lower_bound=1
)
flags.DEFINE_bool(
    "curvature",
    False,
    "Measure the top Hessian eigenvalue and sharpness every epoch, the eigenvector "
    "alignment every step (methods that track the top eigenvector; SAM is made "
    "to), and plot curvature.png.",
)
flags.DEFINE_string("output_dir", "runs", "Parent of the run directory.")
flags.DEFINE_string(
    "run_name", None, "Run directory name (unset: made of the hyperparameters)."
)
flags.DEFINE_integer(
    "crash_at_step",
    None,
    "Testing only: SIGKILL this process when it has taken that training step "
    "(counted from 1 at the run's first step, across epochs and restarts).",
    lower_bound=1,
)

method_flags.register_method_args_validator("method")
flags.adopt_module_key_flags(method_flags)

# Flags that are not TrainConfig fields.
_SCRIPT_FLAGS = ("rho", "crash_at_step")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    class CrashAtStep(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch * self.params["steps"] + batch + 1 == FLAGS.crash_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

    values = FLAGS.flag_values_dict()
    fields = {
        f: values[f] for f in experiments.TrainConfig.__dataclass_fields__ if f in values
    }
    flag_record = {k: values[k] for k in [*fields, *_SCRIPT_FLAGS]}
    fields["verbose"] = 1 if sys.stdout.isatty() else 2
    callbacks = [CrashAtStep()] if FLAGS.crash_at_step else []
    try:
        fields["method_args"] = method_flags.method_args(FLAGS.method_args, FLAGS.rho)
        results = experiments.run(
            experiments.TrainConfig(**fields),
            callbacks=callbacks,
            metadata={"flags": flag_record},
        )
    except (
        experiments.ConfigError,
        experiments.data.DatasetUnavailableError,
        ImportError,
    ) as e:
        # A one-line answer, not a traceback: the user has a setting to fix.
        sys.exit(f"train.py: error: {e}")
    print(summary(results), flush=True)


def summary(results):
    """One line: accuracy, loss, time and where the results are."""
    speed = results["steps_per_second"]
    return (
        f"{results['run_name']}: test accuracy {results['final_test_accuracy']:.4f} "
        f"(best {results['best_test_accuracy']:.4f} at epoch {results['best_epoch']}), "
        f"test loss {results['final_test_loss']:.4f}, train loss "
        f"{results['final_train_loss']:.4f}; {results['epochs_run']} epoch(s) in "
        f"{results['wall_time_s']:.1f} s"
        + (f" ({speed:.1f} steps/s)" if speed else "")
        + f" -> {os.path.join(results['run_dir'], 'results.json')}"
    )


if __name__ == "__main__":
    app.run(main)
