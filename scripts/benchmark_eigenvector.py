r"""Quality of the tracked eigenvector, refresh setting by refresh setting.

A cheaper refresh (fewer warm-started products, a Hessian sub-batch, power
iteration instead of Lanczos) is only worth having if the tracked vector
stays close to the top Hessian eigenvector. For each `--settings` entry
(tracker arguments, e.g. `num_matvecs=2` or `hessian_batch_size=32`), this
trains X-SAM (ρ 0.05, α 0.2, its reference period `k = 5`) on mini-batches
of scikit-learn's digits, and at every refresh compares the tracked vector
with a converged top eigenvector of the same batch's Hessian at the same
weights (Lanczos, `--reference_matvecs` products, model in inference mode as
the tracker's): |cos|, and the tracked eigenvalue against the converged one.
Every setting sees the same batches in the same order; each trains its own
trajectory (X-SAM's update depends on its vector).

The cost column is the refresh's work relative to the default's
(`num_matvecs × examples per product`), not a time: step times for these
settings on ResNet-18 are in `scripts/benchmark.py` (variants
`eigensam(key=value;...)`).

Writes `<output_dir>/<output_name>.json` and `.md` (`eigenvector` by
default), and rebuilds `<output_dir>/RESULTS.md`.

    python scripts/benchmark_eigenvector.py                    # ~10 min on 2 CPUs
    python scripts/benchmark_eigenvector.py --settings='num_matvecs=2,which=magnitude;num_matvecs=1'
    python scripts/benchmark_eigenvector.py --model=resnet18 --steps=30 \
        --reference_matvecs=30 --output_name=eigenvector_resnet18 \
        --settings='num_matvecs=5,hessian_batch_size=64,hessian_batch_size=32,num_matvecs=2'
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from benchmark_results import command_line  # noqa: E402
from benchmark_results import write_results  # noqa: E402
from method_flags import parse_method_args  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "settings",
    [
        "num_matvecs=5",
        "num_matvecs=2",
        "num_matvecs=3",
        "num_matvecs=10",
        "which=magnitude",
        "which=magnitude;num_matvecs=1",
        "which=magnitude;num_matvecs=2",
        "hessian_batch_size=64",
        "hessian_batch_size=32",
        "hessian_batch_size=16",
        "hessian_batch_size=32;num_matvecs=3",
    ],
    "Tracker settings to compare, each key=value;key=value (EigenvectorTracker "
    "arguments); the first is the baseline of the cost column.",
)
flags.DEFINE_integer("steps", 60, "Training steps per setting.", lower_bound=1)
flags.DEFINE_integer("refresh_every", 5, "k: steps between refreshes.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=2)
flags.DEFINE_integer("warmup_refreshes", 2, "Refreshes left out of the medians.", lower_bound=0)
flags.DEFINE_integer(
    "reference_matvecs", 40, "Lanczos products of the converged eigenvector.", lower_bound=2
)
flags.DEFINE_string("model", "small_cnn", "Architecture name.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate.")
flags.DEFINE_string("output_dir", "benchmarks", "Where results are written.")
flags.DEFINE_string(
    "output_name", "eigenvector", "Results go to <output_dir>/<output_name>.{json,md}."
)

TRACKER_DEFAULTS = {"num_matvecs": 5, "which": "largest", "hessian_batch_size": None}


def _data():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    rng = np.random.default_rng(0)
    needed = FLAGS.steps * FLAGS.batch_size
    rows = np.concatenate([rng.permutation(len(x)) for _ in range(-(-needed // len(x)))])
    batches = []
    for step in range(FLAGS.steps):
        batch = rows[step * FLAGS.batch_size: (step + 1) * FLAGS.batch_size]
        batches.append((x[batch], y[batch]))
    return batches


def _setting(text):
    arguments = parse_method_args([item for item in text.split(";") if item])
    return {**TRACKER_DEFAULTS, **arguments}, arguments


def _cost(arguments):
    """The refresh's products × examples per product."""
    examples = arguments["hessian_batch_size"] or FLAGS.batch_size
    return arguments["num_matvecs"] * min(examples, FLAGS.batch_size)


def _run(text, batches):
    import keras
    import numpy as np

    import keras_eigensam as ks
    from keras_eigensam import hessian
    from keras_eigensam.experiments import architectures

    arguments, given = _setting(text)
    keras.utils.set_random_seed(0)
    net = architectures.build(FLAGS.model, batches[0][0].shape[1:], 10)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = ks.SharpnessAwareModel(
        net,
        method=ks.XSAM(
            rho=0.05, alpha=0.2, refresh_every=FLAGS.refresh_every, seed=0, **arguments
        ),
    )
    model.compile(optimizer=keras.optimizers.SGD(FLAGS.learning_rate, momentum=0.9), loss=loss)
    tracker = model.method.tracker
    cosines, eigenvalues, gaps, step_times = [], [], [], []
    for step, (x, y) in enumerate(batches):
        due = step % FLAGS.refresh_every == 0
        if due:
            operator = hessian.HessianOperator(net, loss, (x, y), training=False)
            lam, vectors = operator.top_eigenpairs(
                k=2, method="lanczos", num_matvecs=FLAGS.reference_matvecs, tol=None, seed=0
            )
            gaps.append(abs(float(lam[1]) / float(lam[0])))
            reference = np.concatenate([np.ravel(v) for v in vectors[0]])
        start = time.perf_counter()
        model.train_on_batch(x, y)
        step_times.append(time.perf_counter() - start)
        if due:
            tracked = np.concatenate(
                [np.ravel(keras.ops.convert_to_numpy(v)) for v in tracker.vector]
            )
            tracked /= np.linalg.norm(tracked)
            cosines.append(abs(float(tracked @ reference)))
            eigenvalues.append((float(tracker.eigenvalue), float(lam[0])))
    after = cosines[FLAGS.warmup_refreshes:] or cosines
    ratios = [t / c for t, c in eigenvalues[FLAGS.warmup_refreshes:] or eigenvalues if c]
    return {
        "setting": text,
        "arguments": given,
        "cost": _cost(arguments),
        "cosines": cosines,
        "eigenvalues": eigenvalues,
        "median_cosine_after_warmup": statistics.median(after),
        "min_cosine_after_warmup": min(after),
        "fraction_above_0_9": sum(c >= 0.9 for c in after) / len(after),
        "median_eigenvalue_ratio": statistics.median(ratios) if ratios else None,
        "median_gap_ratio": statistics.median(gaps),
        "median_step_s": statistics.median(step_times),
    }


def _markdown(result):
    baseline = result["runs"][0]["cost"]
    lines = [
        f"## The tracked eigenvector: quality per refresh setting ({result['model']})",
        "",
        f"X-SAM (ρ 0.05, α 0.2, k = {result['refresh_every']}) on {result['model']}, "
        f"scikit-learn's digits in batches of {result['batch_size']}, {result['steps']} "
        "steps, the same batches for every setting. At each refresh, |cos| between the "
        "tracked vector and a converged top eigenvector of the same batch's Hessian at the "
        f"same weights (Lanczos, {result['reference_matvecs']} products, inference mode); "
        f"medians leave out the first {result['warmup_refreshes']} refreshes (warm-up). "
        "λ ratio: the tracked eigenvalue over the converged one. Cost: products × examples "
        "per product, relative to the first setting. |λ2/λ1| (converged) is power "
        "iteration's convergence rate per product.",
        "",
        f"`{result['command']}`",
        "",
        "| setting | cost | median \\|cos\\| | min \\|cos\\| | refreshes with \\|cos\\| ≥ 0.9 "
        "| median λ ratio | median \\|λ2/λ1\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        ratio = run["median_eigenvalue_ratio"]
        lines.append(
            f"| `{run['setting']}` | {run['cost'] / baseline:.2f} | "
            f"{run['median_cosine_after_warmup']:.3f} | {run['min_cosine_after_warmup']:.3f} | "
            f"{100 * run['fraction_above_0_9']:.0f} % | "
            f"{'–' if ratio is None else f'{ratio:.3f}'} | {run['median_gap_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    for text in FLAGS.settings:
        try:
            from keras_eigensam.methods.eigenvector_tracker import EigenvectorTracker

            EigenvectorTracker(**_setting(text)[0])
        except (ValueError, TypeError) as error:
            sys.exit(f"--settings: {text!r}: {error}")
    batches = _data()
    started = time.time()
    runs = [_run(text, batches) for text in FLAGS.settings]
    import keras
    import tensorflow as tf

    result = {
        "command": command_line(),
        "model": FLAGS.model,
        "batch_size": FLAGS.batch_size,
        "steps": FLAGS.steps,
        "refresh_every": FLAGS.refresh_every,
        "warmup_refreshes": FLAGS.warmup_refreshes,
        "reference_matvecs": FLAGS.reference_matvecs,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": sys.version.split()[0]},
        "wall_s": time.time() - started,
        "runs": runs,
    }
    write_results(FLAGS.output_dir, FLAGS.output_name, result, _markdown(result))


if __name__ == "__main__":
    app.run(main)
