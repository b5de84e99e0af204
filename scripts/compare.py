r"""Compares training methods on one task: the README's main command.

    python scripts/compare.py           # sgd, sam, eigensam on digits, 3 seeds: ~1 min
    python scripts/compare.py --methods=sgd,sam,asam,eigensam,xsam --seeds=0,1,2,3,4
    python scripts/compare.py --dataset=mnist1d --model=small_cnn --epochs=30

Trains every method of `--methods` with every seed of `--seeds` through
`keras_eigensam.training.compare` (each run as `scripts/train.py` would, in
its own run directory, so finished runs are reused) and writes
`comparison.md` and `comparison.json` into
`<output_dir>/compare-<dataset>-<model>-...`. The table (printed too) gives,
per method, the final and best test accuracy as mean ± standard deviation
over the seeds, and the paired difference from the first method: with one
seed all methods start from the same weights and see the same batches.

`--rho` and `--alpha` apply to the methods that use them; unset, each method
takes its default (rho: SAM 0.05, ASAM 0.5, Eigen-SAM 0.05, X-SAM 0.05).
"""

import os
import sys
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METHODS = ["sgd", "sam", "asam", "eigensam", "xsam"]

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "methods", ["sgd", "sam", "eigensam"], f"Methods to compare, from {METHODS}."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method runs with each.")
flags.DEFINE_enum(
    "dataset",
    "digits",
    ["digits", "mnist1d", "cifar10", "cifar100", "fashion_mnist", "svhn_cropped"],
    "Dataset (digits and mnist1d are offline).",
)
flags.DEFINE_string("data_dir", None, "Directory of prepared TFDS datasets.")
flags.DEFINE_enum(
    "model",
    "mlp",
    ["mlp", "small_cnn", "cnn6", "resnet18", "resnet34", "resnet50", "wrn28_10"],
    "Architecture.",
)
flags.DEFINE_enum(
    "augment",
    "none",
    ["none", "standard", "cutout", "randaugment"],
    "Training augmentation (none by default: on digits the 1-pixel shifts "
    "halve the speed and did not help).",
)
flags.DEFINE_float(
    "rho",
    None,
    "Perturbation radius of the SAM-family methods (unset: per method).",
    lower_bound=0.0,
)
flags.DEFINE_float(
    "alpha", None, "Eigen-SAM/X-SAM eigenvector weight (unset: 0.2).", lower_bound=0.0
)
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Base optimizer.")
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (unset: sgd 0.1, adamw 1e-3)."
)
flags.DEFINE_float(
    "weight_decay", 5e-4, "Coupled L2 for sgd, decoupled decay for adamw."
)
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("epochs", 10, "Epochs per run.")
flags.DEFINE_enum(
    "strategy",
    "auto",
    ["auto", "default", "mirrored", "multi_worker", "tpu"],
    "Distribution strategy.",
)
flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu.")
flags.DEFINE_bool(
    "curvature", False, "Measure curvature in every run; plot the methods together."
)
flags.DEFINE_string("output_dir", "runs", "Parent of the comparison directory.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    unknown = sorted(set(FLAGS.methods) - set(METHODS))
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; choose from {METHODS}.")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(
            f"--seeds must be integers. Received: {FLAGS.seeds}"
        ) from None
    # Imported after flag parsing: TensorFlow takes seconds to import.
    from keras_eigensam import data
    from keras_eigensam import training

    start = time.perf_counter()
    values = FLAGS.flag_values_dict()
    settings = {
        f: values[f] for f in training.TrainConfig.__dataclass_fields__ if f in values
    }
    name = "-".join(
        [
            f"compare-{FLAGS.dataset}-{FLAGS.model}",
            "_".join(FLAGS.methods),
            FLAGS.optimizer,
            f"bs{FLAGS.batch_size}-e{FLAGS.epochs}",
            "seeds" + "_".join(map(str, seeds)),
        ]
    )
    for flag in ("learning_rate", "rho", "alpha"):
        if values[flag] is not None:
            name += f"-{flag}{values[flag]:g}"
    name += f"-wd{FLAGS.weight_decay:g}-aug-{FLAGS.augment}" + (
        "-curv" if FLAGS.curvature else ""
    )
    compare_dir = os.path.join(FLAGS.output_dir, name)
    settings.update(output_dir=compare_dir, verbose=0)
    try:
        configs = training.configs_for_methods(FLAGS.methods, seeds, **settings)
        record = dict(settings, methods=FLAGS.methods, seeds=seeds)
        comparison = training.compare(
            configs,
            metadata={"flags": record},
            progress=lambda line: print(line, flush=True),
        )
    except (training.ConfigError, data.DatasetUnavailableError, ImportError) as e:
        sys.exit(f"compare.py: error: {e}")
    table = training.comparison_markdown(comparison)
    if comparison["curvature_plot"]:
        table += f"\nCurvature: ![curvature]({os.path.basename(comparison['curvature_plot'])})\n"
    with open(os.path.join(compare_dir, "comparison.md"), "w") as f:
        f.write(f"# {name}\n\n{table}")
    training.write_json(os.path.join(compare_dir, "comparison.json"), comparison)
    print(table, end="")
    print(
        f"{len(comparison['runs'])} runs in {time.perf_counter() - start:.0f} s -> "
        f"{os.path.join(compare_dir, 'comparison.md')}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)
