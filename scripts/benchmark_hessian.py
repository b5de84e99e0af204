"""Benchmark: the cost of a Hessian-vector product relative to a gradient.

Times, under `tf.function` (optionally with XLA), on one batch and with the
model in inference mode (the operator Eigen-SAM uses):

- `gradient`: one forward and backward pass, the unit of cost;
- `hvp_forward_over_backward` and `hvp_reverse_over_reverse`: one HVP;
- `power_<mode>`: `--iterations` power iterations, each a full HVP;
- `power_persistent`: the same iterations from one recorded forward and
  backward pass (`hessian.make_hvp`, a persistent tape).

The functions are warmed up, then called in interleaved rounds (a different
rotation of the order in every round) so that drifts of the shared machine
hit all of them alike; the table reports medians and ratios to the gradient.
Peak memory is the peak of TensorFlow's CPU allocator during one call above
what it held before (`tf.config.experimental.get_memory_info`, which works
on CPU in TF 2.21).

    python scripts/benchmark_hessian.py                      # small CNN, batch 128
    python scripts/benchmark_hessian.py --model=resnet18 --batch_size=32 --repeats=5

Results are merged into `<output_dir>/hessian.json` (one entry per model,
batch size and compilation) and the table `<output_dir>/hessian.md` is
rewritten from all entries.
"""

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_eigensam.experiments import architectures  # noqa: E402
from keras_eigensam import hessian  # noqa: E402
from keras_eigensam import linalg  # noqa: E402
from keras_eigensam.experiments import results  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "small_cnn", ["small_cnn", "cnn6", "resnet18"], "Architecture.")
flags.DEFINE_integer("batch_size", 128, "Examples per batch (CIFAR-shaped 32x32x3).")
flags.DEFINE_integer("iterations", 5, "Power iterations per refresh.")
flags.DEFINE_integer("warmup", 2, "Untimed calls of each function after tracing.")
flags.DEFINE_integer("repeats", 15, "Timed rounds; each calls every function once.")
flags.DEFINE_bool("jit_compile", False, "Compile the functions with XLA.")
flags.DEFINE_string("output_dir", "benchmarks", "Where hessian.json/.md go.")
flags.DEFINE_integer("seed", 0, "Seed of the weights, data and vectors.")


def _peak_memory(function, v):
    """Bytes TensorFlow's CPU allocator held at the peak of one call, above
    what it held before (None where `get_memory_info` is unsupported)."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        float(function(v))
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    except (ValueError, RuntimeError):
        return None


def build_functions(model, x, y, iterations, jit_compile):
    variables = model.trainable_variables
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_fn():
        # As a train step would: inference mode, writes discarded, weights
        # read from their own variables so the tapes see them.
        mapping = [(v, v.value) for v in variables]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            loss = loss_object(y, model(x, training=False))
            return loss + sum(model.losses) if model.losses else loss

    def gradient(v):
        primals = [w.value for w in variables]
        with tf.GradientTape() as tape:
            tape.watch(primals)
            loss = loss_fn()
        grads = tape.gradient(loss, primals)
        # Returning a scalar that reads every output keeps all of the
        # computation (nothing can be pruned) without copying the vectors.
        return linalg.inner(grads, v)

    def one_hvp(mode):
        return lambda v: linalg.inner(hessian.hvp(loss_fn, variables, v, mode), v)

    def power(mode):
        def run(v):
            lam, u = hessian.power_iteration(
                lambda w: hessian.hvp(loss_fn, variables, w, mode), v, iterations
            )
            return lam + linalg.inner(u, u)

        return run

    def power_persistent(v):
        matvec = hessian.make_hvp(loss_fn, variables, "reverse_over_reverse")
        lam, u = hessian.power_iteration(matvec, v, iterations)
        return lam + linalg.inner(u, u)

    functions = {
        "gradient": gradient,
        "hvp_forward_over_backward": one_hvp("forward_over_backward"),
        "hvp_reverse_over_reverse": one_hvp("reverse_over_reverse"),
        "power_forward_over_backward": power("forward_over_backward"),
        "power_reverse_over_reverse": power("reverse_over_reverse"),
        "power_persistent": power_persistent,
    }
    return {
        name: tf.function(fn, jit_compile=jit_compile) for name, fn in functions.items()
    }


def run_benchmark():
    keras.utils.set_random_seed(FLAGS.seed)
    model = architectures.build(FLAGS.model, (32, 32, 3), 10)
    rng = np.random.default_rng(FLAGS.seed)
    x = tf.constant(rng.standard_normal((FLAGS.batch_size, 32, 32, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 10, FLAGS.batch_size))
    v = [tf.constant(rng.standard_normal(w.shape), w.dtype) for w in model.trainable_variables]
    functions = build_functions(model, x, y, FLAGS.iterations, FLAGS.jit_compile)
    names = list(functions)

    trace_seconds, memory = {}, {}
    for name in names:
        start = time.perf_counter()
        float(functions[name](v))
        trace_seconds[name] = time.perf_counter() - start
        memory[name] = _peak_memory(functions[name], v)
        for _ in range(FLAGS.warmup):
            float(functions[name](v))

    times = {name: [] for name in names}
    for round_index in range(FLAGS.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            float(functions[name](v))  # fetching the scalar waits for the call
            times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in times.items()}
    unit = median["gradient"]
    rows = {}
    for name in names:
        products = FLAGS.iterations if name.startswith("power") else 1
        rows[name] = {
            "median_ms": 1e3 * median[name],
            "min_ms": 1e3 * min(times[name]),
            "gradients": median[name] / unit,
            "gradients_per_hvp": median[name] / unit / products,
            "first_call_s": trace_seconds[name],
            "peak_memory_mb": None if memory[name] is None else memory[name] / 2**20,
        }
    return {
        "model": FLAGS.model,
        "parameters": int(sum(np.prod(w.shape) for w in model.trainable_variables)),
        "batch_size": FLAGS.batch_size,
        "iterations": FLAGS.iterations,
        "jit_compile": FLAGS.jit_compile,
        "warmup": FLAGS.warmup,
        "repeats": FLAGS.repeats,
        "results": rows,
        "environment": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "cpu": results.cpu_name(),
            "cpu_count": os.cpu_count(),
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }


def _mb(value):
    return "n/a" if value is None else f"{value:.0f}"


def write_table(entries, path):
    lines = [
        "# Hessian-vector product cost",
        "",
        "Written by `scripts/benchmark_hessian.py`; each row is the median of "
        "interleaved timed rounds after warm-up, under `tf.function`, model in "
        "inference mode, one batch of CIFAR-shaped (32x32x3) inputs. "
        "`gradients` = median time / median time of one gradient; "
        "`per HVP` divides power iterations by their number of products. "
        "`peak MB` is the peak of TensorFlow's CPU allocator during one call "
        "above what it held before the call "
        "(`tf.config.experimental.get_memory_info('CPU:0')` after "
        "`reset_memory_stats`): the call's working memory (activations, "
        "gradients, products), not the weights. The machine is shared (2 "
        "cores): sections with few rounds are noisy, compare `min ms` too.",
        "",
    ]
    for key in sorted(entries):
        entry = entries[key]
        env = entry["environment"]
        lines += [
            f"## {entry['model']}, batch {entry['batch_size']}, "
            f"jit_compile={entry['jit_compile']}",
            "",
            f"{entry['parameters']:,} trainable parameters; {entry['iterations']} "
            f"power iterations; {entry['warmup']} warm-up calls, "
            f"{entry['repeats']} timed rounds. TF {env['tensorflow']}, Keras "
            f"{env['keras']}, {env['cpu']} ({env['cpu_count']} cores), "
            f"{env['date']}.",
            "",
            "| function | median ms | min ms | gradients | per HVP | peak MB | first call s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in entry["results"].items():
            lines.append(
                f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
                f"{row['gradients']:.2f} | "
                f"{row['gradients_per_hvp']:.2f} | {_mb(row['peak_memory_mb'])} | "
                f"{row['first_call_s']:.1f} |"
            )
        lines += [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv):
    del argv
    entry = run_benchmark()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    json_path = os.path.join(FLAGS.output_dir, "hessian.json")
    entries = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            entries = json.load(f)
    key = f"{entry['model']}-b{entry['batch_size']}-jit{int(entry['jit_compile'])}"
    entries[key] = entry
    with open(json_path, "w") as f:
        json.dump(entries, f, indent=2, sort_keys=True)
    write_table(entries, os.path.join(FLAGS.output_dir, "hessian.md"))
    for name, row in entry["results"].items():
        print(
            f"{name:30s} {row['median_ms']:9.1f} ms  {row['gradients']:6.2f} gradients  "
            f"{row['gradients_per_hvp']:5.2f} per HVP  {_mb(row['peak_memory_mb']):>7} MB"
        )


if __name__ == "__main__":
    app.run(main)
