r"""Step-time benchmarks of SGD and the SAM family, with tf_keras's SAM as incumbent.

Times one training step (`train_on_batch` on a fixed batch, through Keras's
compiled train function) of every method on the same architecture, warm-up
excluded, the methods interleaved round by round so that machine noise hits
all of them alike, and reports medians and ratios to SGD. The methods are
`sgd` and those of `keras_eigensam.methods.registry`, with their default
arguments; those that refresh an eigenvector (Eigen-SAM, X-SAM) are timed
separately on steps with and without a refresh (the step counter is set
before each step), and their cost at a refresh period `k` is amortised as
`t_plain + (t_refresh − t_plain) / k`.

tf_keras's `SharpnessAwareMinimization` (Keras 2) is timed in its own process
on the same architecture (built by the same code with tf_keras's layers), with
its own SGD baseline, so its ratio is measured like ours.

Results go to `<output_dir>/steps.json` and `<output_dir>/steps.md`, and
`<output_dir>/RESULTS.md` is rebuilt from every `*.md` section there.

    python scripts/benchmark.py --model=resnet18 --batch_size=128
    python scripts/benchmark.py --model=small_cnn --rounds=2 --steps_per_round=2
    python scripts/benchmark.py --suites=steps,hvp,eigenvector   # everything
"""

import json
import os
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from benchmark_results import write_results_index  # noqa: E402

from keras_eigensam.experiments import config  # noqa: E402
from keras_eigensam.methods import registry  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet18", "Architecture name (keras_eigensam.experiments.architectures).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_list("input_shape", ["32", "32", "3"], "Input shape.")
flags.DEFINE_integer("num_classes", 10, "Number of classes.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
flags.DEFINE_integer("steps_per_round", 3, "Timed steps per method per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per method before timing.")
flags.DEFINE_list("methods", list(config.METHODS), "Methods to time (sgd first).")
flags.DEFINE_list("refresh_periods", ["100", "5"], "k for the amortised figures.")
flags.DEFINE_integer("num_matvecs", 5, "Hessian-vector products per eigenvector refresh.")
flags.DEFINE_enum(
    "hvp_mode", "reverse_over_reverse",
    ["reverse_over_reverse", "forward_over_backward"], "HVP mode of the refresh.",
)
flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_boolean("tf_keras", True, "Also time tf_keras's SAM in a subprocess.")
flags.DEFINE_string("output_dir", "benchmarks", "Where results are written.")
flags.DEFINE_list(
    "suites", ["steps"],
    "What to run: steps (this script's step times), hvp (scripts/benchmark_hessian.py "
    "with its defaults), eigenvector (scripts/benchmark_eigenvector.py).",
)
flags.DEFINE_enum("worker", None, ["tf_keras"], "Internal: run as a worker process.")

_OTHER_SUITES = {"hvp": "benchmark_hessian.py", "eigenvector": "benchmark_eigenvector.py"}


def _versions():
    from keras_eigensam.experiments import results

    return {**results.versions(), "device": results.cpu_name()}


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    shape = tuple(int(s) for s in FLAGS.input_shape)
    x = rng.normal(size=(FLAGS.batch_size,) + shape).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, size=FLAGS.batch_size)
    return x, y


def _make_method(name):
    """The method with its defaults; one that refreshes an eigenvector with
    the flags' refresh settings."""
    method = registry.create(name)
    if _refreshes(method):
        method = registry.create(
            name, num_matvecs=FLAGS.num_matvecs, hvp_mode=FLAGS.hvp_mode, seed=0
        )
    return method


def _refreshes(method):
    return bool(method is not None and method.metric_names)


def _build(name):
    import keras

    import keras_eigensam as ks
    from keras_eigensam.experiments import architectures

    shape = tuple(int(s) for s in FLAGS.input_shape)
    net = architectures.build(FLAGS.model, shape, FLAGS.num_classes)
    model = net if name == "sgd" else ks.SharpnessAwareModel(net, method=_make_method(name))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=FLAGS.jit_compile,
    )
    return model


def _time(model, x, y, steps, iteration=None):
    times = []
    for _ in range(steps):
        if iteration is not None:
            model.optimizer.iterations.assign(iteration)
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return times


def _variants(method, model):
    """(label, iteration to set before each step or None)."""
    if _refreshes(getattr(model, "method", None)):
        # A refresh when iterations % k == 0: with k > 1, 1 is a plain step.
        return [(method, 1), (f"{method}_refresh", 0)]
    return [(method, None)]


def _peak_step_memory_mb(model, x, y, iteration):
    """Peak of TensorFlow's CPU allocator during one step, above its level
    before the step (activations, gradients, perturbed copies, HVP buffers)."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        _time(model, x, y, 1, iteration)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except (ValueError, RuntimeError):  # no allocator statistics on this device
        return None
    return (peak - before) / 2**20


def _interleaved(builders, x, y, memory=None):
    models = {}
    for method in FLAGS.methods:
        models[method] = builders(method)
        for label, iteration in _variants(method, models[method]):
            _time(models[method], x, y, FLAGS.warmup, iteration)
            if memory is not None:
                memory[label] = _peak_step_memory_mb(models[method], x, y, iteration)
    samples = {
        label: [] for m in FLAGS.methods for label, _ in _variants(m, models[m])
    }
    for _ in range(FLAGS.rounds):
        for method in FLAGS.methods:
            for label, iteration in _variants(method, models[method]):
                steps = FLAGS.steps_per_round if iteration != 0 else 1
                samples[label] += _time(models[method], x, y, steps, iteration)
    return samples


def _tf_keras_worker():
    """Times tf_keras's SAM and SGD on the same architecture; prints JSON."""
    import tf_keras

    from keras_eigensam.experiments import architectures

    # Same architecture code, with Keras 2's layers and model classes.
    architectures.layers = tf_keras.layers
    architectures.keras = types.SimpleNamespace(
        Input=tf_keras.Input,
        Model=tf_keras.Model,
        regularizers=tf_keras.regularizers,
        initializers=tf_keras.initializers,
        config=types.SimpleNamespace(
            dtype_policy=lambda: types.SimpleNamespace(variable_dtype="float32")
        ),
    )
    x, y = _batch()
    shape = tuple(int(s) for s in FLAGS.input_shape)

    def build(name):
        net = architectures.build(FLAGS.model, shape, FLAGS.num_classes)
        model = net
        if name == "sam":
            model = tf_keras.models.experimental.SharpnessAwareMinimization(net, rho=0.05)
        model.compile(
            optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=FLAGS.jit_compile,
        )
        return model

    FLAGS.methods = ["sgd", "sam"]
    samples = _interleaved(build, x, y)
    print("RESULT " + json.dumps({"samples": samples, "tf_keras": tf_keras.__version__}))


def _run_tf_keras():
    cmd = [sys.executable, __file__, "--worker=tf_keras"] + [
        FLAGS[name].serialize()
        for name in ("model", "batch_size", "input_shape", "num_classes", "rounds",
                     "steps_per_round", "warmup", "jit_compile")
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)}


def _summary(samples, memory=None):
    medians = {label: statistics.median(times) for label, times in samples.items()}
    sgd = medians.get("sgd")
    rows = {}
    for label, median in medians.items():
        rows[label] = {
            "median_s": median,
            "n": len(samples[label]),
            "ratio_to_sgd": median / sgd if sgd else None,
            "peak_step_memory_mb": (memory or {}).get(label),
        }
    return rows


def _amortised(rows):
    out = {}
    sgd = rows["sgd"]["median_s"]
    for method in FLAGS.methods:
        if f"{method}_refresh" not in rows:
            continue
        plain = rows[method]["median_s"]
        refresh = rows[f"{method}_refresh"]["median_s"]
        extra = refresh - plain
        for k in (int(k) for k in FLAGS.refresh_periods):
            step = plain + extra / k
            out[f"{method}@k={k}"] = {
                "amortised_step_s": step,
                "ratio_to_sgd": step / sgd,
                "ratio_to_sam": step / rows["sam"]["median_s"] if "sam" in rows else None,
                "refresh_cost_in_gradients": extra / sgd,
            }
    return out


def _markdown(result):
    lines = [
        "## Step time: SGD and the SAM family",
        "",
        f"{result['model']}, batch {result['batch_size']}, input {result['input_shape']}, "
        f"jit_compile={result['jit_compile']}; median of {result['rounds']} interleaved rounds "
        f"× {result['steps_per_round']} steps after {result['warmup']} warm-up steps "
        f"(refresh steps: 1 per round). One SGD step ≈ one gradient.",
        f"Versions: {result['versions']}",
        "",
        "Peak memory: TensorFlow's CPU allocator during one step above its level before the "
        "step (activations, gradients, perturbed copies, HVP buffers; weights excluded).",
        "",
        "| step | median (s) | steps | × SGD | peak step memory (MB) |",
        "|---|---|---|---|---|",
    ]
    for label, row in result["steps"].items():
        memory = row.get("peak_step_memory_mb")
        memory = "n/a" if memory is None else f"{memory:.1f}"
        lines.append(
            f"| {label} | {row['median_s']:.3f} | {row['n']} | {row['ratio_to_sgd']:.2f} | {memory} |"
        )
    if result["amortised"]:
        lines += [
            "",
            f"Amortised steps of the methods that refresh an eigenvector "
            f"({result['num_matvecs']} Hessian-vector products, "
            f"{result['hvp_mode']}): `t_plain + (t_refresh − t_plain)/k`.",
            "",
            "| method | step (s) | × SGD | × SAM | one refresh, in gradients |",
            "|---|---|---|---|---|",
        ]
        for label, row in result["amortised"].items():
            lines.append(
                f"| {label} | {row['amortised_step_s']:.3f} | {row['ratio_to_sgd']:.3f} | "
                f"{row['ratio_to_sam']:.3f} | {row['refresh_cost_in_gradients']:.1f} |"
            )
    tk = result.get("tf_keras")
    if tk:
        lines.append("")
        if "error" in tk:
            lines.append(f"tf_keras's SAM could not be timed: {tk['error']}")
        else:
            rows = _summary(tk["samples"])
            lines.append(
                f"tf_keras {tk['tf_keras']} `SharpnessAwareMinimization` (own process, own "
                f"SGD baseline): SGD {rows['sgd']['median_s']:.3f} s, SAM "
                f"{rows['sam']['median_s']:.3f} s, **{rows['sam']['ratio_to_sgd']:.2f} × SGD** "
                f"(ours: {result['steps']['sam']['ratio_to_sgd']:.2f} × SGD)."
                if "sam" in result["steps"] else ""
            )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.worker == "tf_keras":
        _tf_keras_worker()
        return
    unknown_suites = set(FLAGS.suites) - {"steps", *_OTHER_SUITES}
    if unknown_suites:
        sys.exit(f"--suites takes steps, hvp, eigenvector; got {FLAGS.suites}")
    for suite in FLAGS.suites:
        if suite in _OTHER_SUITES:
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), _OTHER_SUITES[suite])
            subprocess.run(
                [sys.executable, script, f"--output_dir={FLAGS.output_dir}"], check=True
            )
    if "steps" not in FLAGS.suites:
        write_results_index(FLAGS.output_dir)
        return
    unknown = set(FLAGS.methods) - set(config.METHODS)
    if unknown or "sgd" not in FLAGS.methods:
        sys.exit(
            f"--methods must include sgd and name only {', '.join(config.METHODS)}; "
            f"got {FLAGS.methods}"
        )
    x, y = _batch()
    memory = {}
    samples = _interleaved(_build, x, y, memory)
    steps = _summary(samples, memory)
    result = {
        "model": FLAGS.model,
        "batch_size": FLAGS.batch_size,
        "input_shape": FLAGS.input_shape,
        "jit_compile": FLAGS.jit_compile,
        "rounds": FLAGS.rounds,
        "steps_per_round": FLAGS.steps_per_round,
        "warmup": FLAGS.warmup,
        "num_matvecs": FLAGS.num_matvecs,
        "hvp_mode": FLAGS.hvp_mode,
        "versions": _versions(),
        "samples": samples,
        "steps": steps,
        "amortised": _amortised(steps),
    }
    if FLAGS.tf_keras:
        result["tf_keras"] = _run_tf_keras()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, "steps.json"), "w") as f:
        json.dump(result, f, indent=2)
    markdown = _markdown(result)
    with open(os.path.join(FLAGS.output_dir, "steps.md"), "w") as f:
        f.write(markdown)
    write_results_index(FLAGS.output_dir)
    print(markdown)


if __name__ == "__main__":
    app.run(main)
