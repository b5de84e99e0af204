r"""Compares training methods on one task: the README's main command.

    python scripts/compare.py           # sgd, sam, eigensam on digits, 3 seeds: ~1 min
    python scripts/compare.py --methods=all --seeds=0,1,2,3,4
    python scripts/compare.py --dataset=mnist1d --model=small_cnn --epochs=30
    python scripts/compare.py --methods=sam,eigensam --method_args=rho=0.1,alpha=0.1

Trains every method of `--methods` (`sgd` or names of
`keras_eigensam.methods.registry`; `all` is every one) with every seed of
`--seeds` through `keras_eigensam.experiments.compare` (each run as
`scripts/train.py` would, in its own run directory, so finished runs are
reused) and writes `comparison.md` and `comparison.json` into
`<output_dir>/compare-<dataset>-<model>-...`. The table (printed too) gives,
per method, its arguments, the final and best test accuracy as mean ±
standard deviation over the seeds, and the paired difference from the first
method: with one seed all methods start from the same weights and see the
same batches.

`--method_args` (and `--rho`) apply to the methods that take them; unset,
each method takes its defaults (the README's method table).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import method_flags  # noqa: E402

from keras_eigensam import experiments  # noqa: E402
from keras_eigensam.experiments import config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "methods",
    ["sgd", "sam", "eigensam"],
    f"Methods to compare, from {list(config.METHODS)}, or `all`. "
    + method_flags.method_help(),
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method runs with each.")
flags.DEFINE_enum(
    "dataset", "digits", config.DATASETS, "Dataset (digits and mnist1d are offline)."
)
flags.DEFINE_string("data_dir", None, "Directory of prepared TFDS datasets.")
flags.DEFINE_bool(
    "download", False, "Download and prepare a TFDS dataset missing from --data_dir."
)
flags.DEFINE_enum("model", "mlp", config.MODELS, "Architecture.")
flags.DEFINE_enum(
    "augment",
    "none",
    config.AUGMENTATIONS,
    "Training augmentation (none by default: on digits the 1-pixel shifts "
    "halve the speed and did not help).",
)
method_flags.define_method_args_flags()
flags.DEFINE_enum("optimizer", "sgd", config.OPTIMIZERS, "Base optimizer.")
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (unset: sgd 0.1, adamw 1e-3)."
)
flags.DEFINE_float(
    "weight_decay", 5e-4, "Coupled L2 for sgd, decoupled decay for adamw."
)
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("epochs", 10, "Epochs per run.")
flags.DEFINE_bool(
    "jit_compile", None,
    "XLA (unset: Keras's auto, on for GPU/TPU; on CPU the offline defaults run "
    "faster without it: its compile time dominates short runs).",
)
flags.DEFINE_enum("strategy", "auto", config.STRATEGIES, "Distribution strategy.")
flags.DEFINE_string(
    "tpu", None, "TPU address for --strategy=tpu/auto (unset: look for one)."
)
flags.DEFINE_bool(
    "curvature", False, "Measure curvature in every run; plot the methods together."
)
flags.DEFINE_string("output_dir", "runs", "Parent of the comparison directory.")
method_flags.register_method_args_validator("methods")
flags.adopt_module_key_flags(method_flags)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(
            f"--seeds must be integers. Received: {FLAGS.seeds}"
        ) from None
    start = time.perf_counter()
    methods = method_flags.methods(FLAGS.methods)
    given = method_flags.method_args(FLAGS.method_args, FLAGS.rho)
    values = FLAGS.flag_values_dict()
    settings = {
        f: values[f] for f in experiments.TrainConfig.__dataclass_fields__ if f in values
    }
    settings.pop("method_args")
    name = "-".join(
        [
            f"compare-{FLAGS.dataset}-{FLAGS.model}",
            "_".join(methods),
            *config.argument_strings(given),
            FLAGS.optimizer,
            f"bs{FLAGS.batch_size}-e{FLAGS.epochs}",
            "seeds" + "_".join(map(str, seeds)),
        ]
    )
    if FLAGS.learning_rate is not None:
        name += f"-lr{FLAGS.learning_rate:g}"
    name += f"-wd{FLAGS.weight_decay:g}-aug-{FLAGS.augment}" + (
        "-curv" if FLAGS.curvature else ""
    )
    compare_dir = os.path.join(FLAGS.output_dir, name)
    settings.update(output_dir=compare_dir, verbose=0)
    try:
        configs = experiments.configs_for_methods(methods, seeds, given, **settings)
        record = dict(settings, methods=methods, seeds=seeds, method_args=given)
        comparison = experiments.compare(
            configs,
            metadata={"flags": record},
            progress=lambda line: print(line, flush=True),
        )
    except (
        experiments.ConfigError,
        experiments.data.DatasetUnavailableError,
        ImportError,
    ) as e:
        sys.exit(f"compare.py: error: {e}")
    table = experiments.comparison_markdown(comparison)
    if comparison["curvature_plot"]:
        table += f"\nCurvature: ![curvature]({os.path.basename(comparison['curvature_plot'])})\n"
    with open(os.path.join(compare_dir, "comparison.md"), "w") as f:
        f.write(f"# {name}\n\n{table}")
    experiments.results.write_json(
        os.path.join(compare_dir, "comparison.json"), comparison
    )
    print(table, end="")
    print(
        f"{len(comparison['runs'])} runs in {time.perf_counter() - start:.0f} s -> "
        f"{os.path.join(compare_dir, 'comparison.md')}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
