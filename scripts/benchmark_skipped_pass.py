"""Does a skipped second pass really cost nothing?

A method that decides its passes (LookSAM, interval SAM) skips the second
pass with `ctx.cond` on most steps. This times, interleaved, a plain Keras
SGD step, a SAM step, and the two kinds of step of interval SAM (SAM every
`k` steps, one plain pass otherwise; the method is defined here, as a
contributor would write it): its off-step should cost an SGD step, its
on-step a SAM step. Writes `<output_dir>/skipped_pass.{json,md}`.

    python scripts/benchmark_skipped_pass.py --model=resnet18 --batch_size=64
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

import benchmark_results

flags.DEFINE_string("model", "resnet18", "Architecture name (keras_eigensam.experiments.architectures).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_list("input_shape", ["32", "32", "3"], "Input shape.")
flags.DEFINE_integer("num_classes", 10, "Number of classes.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 2, "Timed steps per variant per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per variant before timing.")
flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_string("output_dir", "benchmarks", "Where results are written.")
FLAGS = flags.FLAGS


def _interval_sam(ks, ops):
    class IntervalSAM(ks.SharpnessMethod):
        """SAM when `step % k == 0`, one plain pass otherwise."""

        def __init__(self, rho=0.05, k=2, **kwargs):
            super().__init__(rho=rho, **kwargs)
            self.k = k

        def perturbation(self, ctx):
            return ks.linalg.scale(ctx.grads, self.rho / (ctx.grad_norm + 1e-12))

        def descent(self, ctx):
            due = ops.equal(ops.mod(ctx.step, self.k), 0)
            return ctx.cond(
                due, lambda: ctx.gradient_at(self.perturbation(ctx)), lambda: ctx.grads
            )

    return IntervalSAM


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import ops

    import keras_eigensam as ks
    from keras_eigensam.experiments import architectures

    shape = tuple(int(s) for s in FLAGS.input_shape)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch_size,) + shape).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, size=FLAGS.batch_size)
    interval_sam = _interval_sam(ks, ops)

    def build(method):
        keras.utils.set_random_seed(0)
        net = architectures.build(FLAGS.model, shape, FLAGS.num_classes)
        model = net if method is None else ks.SharpnessAwareModel(net, method=method)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=FLAGS.jit_compile,
        )
        return model

    models = {
        "sgd": build(None),
        "sam": build(ks.SAM(rho=0.05)),
        "interval_sam": build(interval_sam(rho=0.05, k=2)),
    }
    # (label, model, iteration set before each step): interval SAM takes its
    # second pass at even iterations only.
    variants = [
        ("sgd", "sgd", None),
        ("sam", "sam", None),
        ("interval_sam_off_step", "interval_sam", 1),
        ("interval_sam_on_step", "interval_sam", 0),
    ]

    def step(label, name, iteration):
        if iteration is not None:
            models[name].optimizer.iterations.assign(iteration)
        start = time.perf_counter()
        models[name].train_on_batch(x, y)
        return time.perf_counter() - start

    for label, name, iteration in variants:
        for _ in range(FLAGS.warmup):
            step(label, name, iteration)
    samples = {label: [] for label, _, _ in variants}
    for _ in range(FLAGS.rounds):
        for label, name, iteration in variants:
            for _ in range(FLAGS.steps_per_round):
                samples[label].append(step(label, name, iteration))
    medians = {label: statistics.median(times) for label, times in samples.items()}
    result = {
        "model": FLAGS.model,
        "batch_size": FLAGS.batch_size,
        "jit_compile": FLAGS.jit_compile,
        "rounds": FLAGS.rounds,
        "steps_per_round": FLAGS.steps_per_round,
        "median_step_seconds": medians,
        "ratio_to_sgd": {k: v / medians["sgd"] for k, v in medians.items()},
        "samples": samples,
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_eigensam": ks.__version__,
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "skipped_pass.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "## A skipped second pass costs nothing",
        "",
        f"`python scripts/benchmark_skipped_pass.py --model={FLAGS.model} "
        f"--batch_size={FLAGS.batch_size}"
        + (" --jit_compile" if FLAGS.jit_compile else "")
        + f"`: medians of {FLAGS.rounds} interleaved rounds of "
        f"{FLAGS.steps_per_round} steps, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}. Interval SAM (SAM every "
        "2 steps, defined in the script with `ctx.cond`) on its off-step "
        "should cost an SGD step.",
        "",
        "| step | median s | × SGD |",
        "|---|---|---|",
    ]
    for label, _, _ in variants:
        lines.append(
            f"| {label} | {medians[label]:.3f} | {result['ratio_to_sgd'][label]:.3f} |"
        )
    with open(os.path.join(FLAGS.output_dir, "skipped_pass.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    benchmark_results.write_results_index(FLAGS.output_dir)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
