r"""Step-time and step-memory benchmarks of SGD and the SAM family, with
tf_keras's SAM as incumbent.

Times one training step (`train_on_batch` on a fixed batch, through Keras's
compiled train function) of every method on the same architecture and the
same optimizer (`SGD(0.01, momentum=0.9)`: Momentum-SAM perturbs along its
momentum), with and without XLA (`--xla=both`), warm-up excluded. Every
(method, XLA mode) pair is timed in every round, in an order rotated from
round to round, so that machine noise hits all of them alike; the report
gives medians and ratios to SGD and to SAM in the same XLA mode. The methods
are `sgd` and those of `keras_eigensam.methods.registry`, with their default
arguments.

Methods whose cost changes from step to step are timed on each kind of step
separately (the optimizer's step counter is set before each step) and
amortised over their period:

- Eigen-SAM, X-SAM (an eigenvector refresh when `iterations % k == 0`):
  `t_plain + (t_refresh − t_plain)/k`, for each of `--refresh_periods` and
  the method's own `refresh_every`;
- LookSAM (a SAM step when `iterations % k == 0`, one pass otherwise):
  `(t_on + (k − 1)·t_off)/k` at the method's `k`.

Those kinds of step run their extra passes inside a conditional, and on CPU
XLA runs the convolution gradients inside a conditional far slower than
outside one (a ResNet-18 LookSAM SAM step takes minutes): `--xla_skip` leaves
such kinds of step out of the XLA timings, and their methods' amortised XLA
figures with them.

Peak step memory (`--memory`, without XLA unless `--memory_xla`): for each
method a fresh process builds the model, takes warm-up steps, and records
the process's peak resident memory during a step above its resident memory
just before it. The peak is the
kernel's high-water mark (`VmHWM`), reset before each step through
`/proc/self/clear_refs`; glibc is told to hand freed blocks back to the
system (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) so the level
before a step is the live memory, not the allocator's cache. Where the mark
cannot be reset, each figure gets its own process and the peak is
`ru_maxrss`, which then also holds the warm-up steps (an upper bound).
The same step also records the peak of TensorFlow's CPU allocator above its
level before the step (`tensor_peak_mib`): every tensor counted exactly and
the same from run to run, where resident memory misses buffers reused from
the warm-up and cannot resolve a SAM step at small batches. The reports
compare that figure where a run has it (without XLA: XLA's own buffers are
not TensorFlow tensors).

tf_keras's `SharpnessAwareMinimization` (Keras 2) is timed in its own process
on the same architecture (built by the same code with tf_keras's layers), with
its own SGD baseline, so its ratio is measured like ours.

Results go to `<output_dir>/steps.json` and `<output_dir>/steps.md` (`--output_name`),
and `<output_dir>/RESULTS.md` is rebuilt from every `*.md` section there;
`--markdown_only` rewrites the tables from the JSON.

    python scripts/benchmark.py --model=resnet18 --batch_size=128
    python scripts/benchmark.py --model=resnet18 --batch_size=32 --rounds=2 \
        --steps_per_round=1 --warmup=1 --methods=sgd,sam,eigensam,looksam \
        --nomemory --notf_keras --output_name=steps_xla_phases   # 2 CPUs, ~22 min
    python scripts/benchmark.py --model=small_cnn --rounds=2 --steps_per_round=2 --xla=off
    python scripts/benchmark.py --model=resnet18 --batch_size=32 --xla=on \
        --methods='sgd,sam,eigensam,eigensam(hessian_batch_size=16)'   # variants
    python scripts/benchmark.py --suites=steps,hvp,eigenvector   # everything
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from benchmark_memory import HOW as _MEMORY_HOW  # noqa: E402
from benchmark_memory import MALLOC_ENV  # noqa: E402
from benchmark_memory import peak_mib  # noqa: E402
from benchmark_memory import reset_peak  # noqa: E402
from benchmark_memory import reset_tensor_peak  # noqa: E402
from benchmark_memory import rss_mib  # noqa: E402
from benchmark_memory import run_worker  # noqa: E402
from benchmark_memory import step_peak  # noqa: E402
from benchmark_memory import tensor_peak_mib  # noqa: E402
from benchmark_results import command_line  # noqa: E402
from benchmark_results import write_results  # noqa: E402
from benchmark_results import write_results_index  # noqa: E402
from method_flags import parse_method_args  # noqa: E402

from keras_eigensam.experiments import config  # noqa: E402
from keras_eigensam.methods import registry  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "resnet18", config.MODELS, "Architecture (keras_eigensam.experiments.architectures).")
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_list("input_shape", ["32", "32", "3"], "Input shape.")
flags.DEFINE_integer("num_classes", 10, "Number of classes.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer(
    "steps_per_round", 3,
    "Timed steps per (method, XLA mode, kind of step) per round; a refresh step is timed "
    "once per round.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "warmup", 2,
    "Untimed steps per (method, XLA mode, kind of step) before timing (a refresh: 1; the "
    "first kind of step of each model: at least 1, its first call traces the step).",
    lower_bound=0,
)
flags.DEFINE_list(
    "methods", list(config.METHODS),
    "Methods to time (sgd among them), each a name or a variant "
    "name(key=value;key=value) with constructor arguments, e.g. "
    "'eigensam(hessian_batch_size=64;hvp_mode=forward_over_backward)'.",
)
flags.DEFINE_list("refresh_periods", ["100", "5"], "k for the amortised Eigen-SAM / X-SAM figures.")
flags.DEFINE_integer(
    "num_matvecs", 5, "Hessian-vector products per eigenvector refresh.", lower_bound=1
)
flags.DEFINE_enum(
    "hvp_mode", "reverse_over_reverse",
    ["reverse_over_reverse", "forward_over_backward"], "HVP mode of the refresh.",
)
flags.DEFINE_enum(
    "xla", "both", ["both", "on", "off"],
    "Compile the train step with XLA (on), without (off), or time both, interleaved (both).",
)
flags.DEFINE_list(
    "xla_skip", [],
    "Kinds of step not timed with XLA (labels as in the tables: looksam_on_step, "
    "eigensam_refresh, ...), e.g. to save their compile time.",
)
flags.DEFINE_boolean(
    "memory", True, "Also measure each method's peak step memory (a fresh process per method)."
)
flags.DEFINE_list(
    "memory_methods", [], "Methods whose memory is measured (default: every method timed)."
)
flags.DEFINE_boolean("memory_xla", False, "Measure the step memory with XLA (default: without).")
flags.DEFINE_integer(
    "memory_warmup", 1, "Untimed steps before the memory is measured (at least 1).", lower_bound=1
)
flags.DEFINE_boolean(
    "memory_only", False,
    "Only measure the peak step memory again, of the methods in "
    "<output_dir>/<output_name>.json, and rewrite it (after a change that moves "
    "memory, not time); the file records when and by which command.",
)
flags.DEFINE_boolean("tf_keras", True, "Also time tf_keras's SAM in a subprocess.")
flags.DEFINE_string("output_dir", "benchmarks", "Where results are written.")
flags.DEFINE_string("output_name", "steps", "Results go to <output_dir>/<output_name>.{json,md}.")
flags.DEFINE_boolean(
    "markdown_only", False,
    "Only rewrite <output_name>.md (and RESULTS.md) from <output_name>.json (its "
    "headline and expectations recomputed).",
)
flags.DEFINE_list(
    "suites", ["steps"],
    "What to run: steps (this script's step times), hvp (scripts/benchmark_hessian.py "
    "with its defaults), eigenvector (scripts/benchmark_eigenvector.py).",
)
flags.DEFINE_enum("worker", None, ["tf_keras", "memory"], "Internal: run as a worker process.")
flags.DEFINE_string("worker_method", None, "Internal: the memory worker's method.")
flags.DEFINE_string("worker_label", None, "Internal: the one figure a memory worker measures.")

for _name in ("input_shape", "refresh_periods"):
    flags.register_validator(
        _name,
        lambda values: all(v.isdigit() and int(v) >= 1 for v in values),
        f"--{_name} takes integers >= 1, e.g. --{_name}={','.join(FLAGS[_name].default)}",
    )

_OTHER_SUITES = {"hvp": "benchmark_hessian.py", "eigenvector": "benchmark_eigenvector.py"}
_MODES = {"both": (True, False), "on": (True,), "off": (False,)}
# The expectations of issue #10: (method, reference, bound, strict).
_EXPECTATIONS = (
    ("gsam", "sam", 1.03, False),
    ("wsam", "sam", 1.03, False),
    ("friendlysam", "sam", 1.03, False),
    ("looksam", "sgd", 1.25, False),
    ("esam", "sam", 1.0, True),
    ("momentumsam", "sgd", 1.1, False),
)
# The first call of the train function traces (and compiles) it and creates
# the optimizer's slots: the first kind of step of every model is warmed up
# at least once, also for the memory figures.
_MIN_WARMUP = 1
_MODEL_FLAGS = ("model", "batch_size", "input_shape", "num_classes", "num_matvecs", "hvp_mode")


def _mode(jit_compile):
    return "xla" if jit_compile else "no_xla"


def _log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _versions():
    from keras_eigensam.experiments import results

    return results.versions()


def _machine():
    total = None
    try:
        with open("/proc/meminfo") as f:
            total = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    from keras_eigensam.experiments import results

    return {
        "cpu": results.cpu_name(),
        "cpus": os.cpu_count(),
        "memory_gib": total,
        "platform": platform.platform(),
    }


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    shape = tuple(int(s) for s in FLAGS.input_shape)
    x = rng.normal(size=(FLAGS.batch_size,) + shape).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, size=FLAGS.batch_size)
    return x, y


def _parse_entry(entry):
    """`(method name, constructor arguments)` of a `--methods` entry: a
    method's name, or a variant `name(key=value;key=value)` (values are
    Python literals, as in `train.py --method_args`).

    Raises:
        ValueError: if the entry is malformed or names an unknown method or
            argument.
    """
    name, paren, rest = entry.partition("(")
    if paren and not rest.endswith(")"):
        raise ValueError(f"a variant is name(key=value;...). Received: {entry!r}")
    name = name.strip()
    if name not in config.METHODS:
        raise ValueError(
            f"names are {', '.join(config.METHODS)} (or their variants "
            f"name(key=value;...)). Received: {entry!r}"
        )
    arguments = parse_method_args([i for i in rest[:-1].split(";") if i]) if paren else {}
    if arguments:
        if name == "sgd":
            raise ValueError(f"--methods: sgd takes no arguments. Received: {entry!r}")
        registry.check_arguments(name, arguments)
    return name, arguments


def _make_method(entry):
    """The method with its defaults (and the entry's arguments); one that
    refreshes an eigenvector with the flags' refresh settings unless the
    entry sets them."""
    name, arguments = _parse_entry(entry)
    if name == "sgd":
        return None
    method = registry.create(name, **arguments)
    if _refreshes(method):
        refresh = dict(num_matvecs=FLAGS.num_matvecs, hvp_mode=FLAGS.hvp_mode, seed=0)
        method = registry.create(name, **{**refresh, **arguments})
    return method


def _refreshes(method):
    return bool(method is not None and method.metric_names)


def _sam_period(method):
    """`k` of a method that takes a SAM step every `k` steps and one pass on
    the others (LookSAM), else None."""
    if isinstance(method, registry.get("looksam").cls) and method.k > 1:
        return method.k
    return None


def _variants(name, method):
    """The kinds of step of a method: (label, iteration to set before each
    step or None, timed steps per round)."""
    if _refreshes(method):
        # A refresh when iterations % k == 0: with k > 1, 1 is a plain step.
        return [(name, 1, FLAGS.steps_per_round), (f"{name}_refresh", 0, 1)]
    if _sam_period(method):
        return [
            (f"{name}_off_step", 1, FLAGS.steps_per_round),
            (f"{name}_on_step", 0, FLAGS.steps_per_round),
        ]
    return [(name, None, FLAGS.steps_per_round)]


def _build(name, jit_compile):
    import keras

    import keras_eigensam as ks
    from keras_eigensam.experiments import architectures

    shape = tuple(int(s) for s in FLAGS.input_shape)
    net = architectures.build(FLAGS.model, shape, FLAGS.num_classes)
    method = _make_method(name)
    model = net if method is None else ks.SharpnessAwareModel(net, method=method)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model, method


def _step(model, x, y, iteration=None):
    if iteration is not None:
        model.optimizer.iterations.assign(iteration)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return time.perf_counter() - start


def _interleaved(build, names, modes, x, y):
    """Times every (method, mode, kind of step), interleaved.

    Returns `(samples, rounds)`: `samples[mode][label]` every timed step,
    `rounds[mode][label]` the median of each round.
    """
    import keras

    # Once: setting the seed makes every traced function trace again at its
    # next call (which would then be timed).
    keras.utils.set_random_seed(0)
    units = []
    models = {}
    for name in names:
        for jit_compile in modes:
            start = time.perf_counter()
            model, method = build(name, jit_compile)
            models[name, jit_compile] = model
            first = True
            for label, iteration, steps in _variants(name, method):
                if jit_compile and label in FLAGS.xla_skip:
                    continue
                units.append((jit_compile, name, label, iteration, steps))
                # A once-per-round kind of step (a refresh) is warmed up once
                # at most; the first kind at least once (see _MIN_WARMUP).
                warmup = FLAGS.warmup if steps > 1 else min(FLAGS.warmup, 1)
                for _ in range(max(warmup, _MIN_WARMUP) if first else warmup):
                    _step(model, x, y, iteration)
                first = False
            _log(
                f"built and warmed up {name} ({_mode(jit_compile)}) in "
                f"{time.perf_counter() - start:.0f} s"
            )
    samples = {_mode(m): {} for m in modes}
    per_round = {_mode(m): {} for m in modes}
    for r in range(FLAGS.rounds):
        shift = (r * len(units)) // FLAGS.rounds
        for jit_compile, name, label, iteration, steps in units[shift:] + units[:shift]:
            times = [
                _step(models[name, jit_compile], x, y, iteration) for _ in range(steps)
            ]
            samples[_mode(jit_compile)].setdefault(label, []).extend(times)
            per_round[_mode(jit_compile)].setdefault(label, []).append(
                statistics.median(times)
            )
        _log(
            f"round {r + 1}/{FLAGS.rounds}: "
            + ", ".join(
                f"{label}[{mode}] {values[-1]:.3f}"
                for mode, labels in per_round.items()
                for label, values in labels.items()
            )
        )
    return samples, per_round


# ------------------------------------------------------------------ memory


def _memory_worker():
    """Peak resident memory of each kind of step of one method above the
    level before it; prints JSON."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = _batch()
    model, method = _build(FLAGS.worker_method, FLAGS.memory_xla)
    variants = _variants(FLAGS.worker_method, method)
    if FLAGS.worker_label:
        variants = [v for v in variants if v[0] == FLAGS.worker_label]
    # Warm-up on the cheapest kind of step: it traces (and compiles) the step
    # for every kind, and creates the optimizer's slots.
    for _ in range(max(FLAGS.memory_warmup, _MIN_WARMUP)):
        _step(model, x, y, variants[0][1])
    resettable = True
    figures = {}
    for label, iteration, _ in variants:  # cheapest first: ru_maxrss only grows
        resettable = resettable and reset_peak()
        before = rss_mib()
        tensors_before = reset_tensor_peak()
        _step(model, x, y, iteration)
        figures[label] = {
            "peak_mib": peak_mib(resettable) - before,
            "before_mib": before,
            "tensor_peak_mib": tensor_peak_mib(tensors_before),
        }
    how = _MEMORY_HOW[resettable]
    print("RESULT " + json.dumps({"figures": figures, "how": how}))


def _memory(names):
    """`{label: {peak_mib, before_mib}}` of every kind of step, a fresh
    process per method (per figure where the peak cannot be reset)."""
    env = dict(os.environ, **MALLOC_ENV)
    common = [FLAGS[n].serialize() for n in _MODEL_FLAGS] + [
        FLAGS["memory_xla"].serialize(), FLAGS["memory_warmup"].serialize(),
    ]
    per_figure = not reset_peak()
    figures, notes = {}, {}
    for name in names:
        labels = [None]
        if per_figure:
            labels = [label for label, _, _ in _variants(name, _make_method(name))]
        for label in labels:
            start = time.perf_counter()
            args = ["--worker=memory", f"--worker_method={name}"] + common
            if label:
                args.append(f"--worker_label={label}")
            result = run_worker(__file__, args, env)
            if "error" in result:
                notes[label or name] = result["error"]
                _log(f"memory of {label or name} failed: {result['error']}")
                continue
            figures.update(result["figures"])
            notes["how"] = result["how"]
            _log(
                f"memory of {label or name}: "
                + ", ".join(f"{k} {v['peak_mib']:.0f} MiB" for k, v in result["figures"].items())
                + f" ({time.perf_counter() - start:.0f} s)"
            )
    return figures, notes


# ---------------------------------------------------------------- tf_keras


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

    def build(name, jit_compile):
        net = architectures.build(FLAGS.model, shape, FLAGS.num_classes)
        model = net
        if name == "sam":
            model = tf_keras.models.experimental.SharpnessAwareMinimization(net, rho=0.05)
        model.compile(
            optimizer=tf_keras.optimizers.SGD(0.01, momentum=0.9),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        return model, None

    samples, _ = _interleaved(build, ["sgd", "sam"], _MODES[FLAGS.xla], x, y)
    print("RESULT " + json.dumps({"samples": samples, "tf_keras": tf_keras.__version__}))


def _run_tf_keras():
    return run_worker(
        __file__,
        ["--worker=tf_keras"]
        + [FLAGS[name].serialize()
           for name in ("model", "batch_size", "input_shape", "num_classes", "rounds",
                        "steps_per_round", "warmup", "xla")]
    )


# ----------------------------------------------------------------- summary


def _ratio(a, b):
    return a / b if a is not None and b else None


def _summary(samples, per_round=None):
    """Per label: median, steps, × SGD, × SAM (same mode), and the ratio to
    SGD within each round."""
    medians = {label: statistics.median(times) for label, times in samples.items()}
    rows = {}
    for label, median in medians.items():
        rows[label] = {
            "median_s": median,
            "n": len(samples[label]),
            "min_s": min(samples[label]),
            "max_s": max(samples[label]),
            "ratio_to_sgd": _ratio(median, medians.get("sgd")),
            "ratio_to_sam": _ratio(median, medians.get("sam")),
        }
        if per_round and "sgd" in per_round:
            rows[label]["ratio_to_sgd_per_round"] = [
                a / b for a, b in zip(per_round[label], per_round["sgd"])
            ]
    return rows


def _amortised(rows, methods):
    """Eigen-SAM / X-SAM at each refresh period (and their own), LookSAM at
    its `k`: `{label: {step_s, ratio_to_sgd, ratio_to_sam, ...}}`."""
    out = {}
    sgd = rows["sgd"]["median_s"]
    sam = rows["sam"]["median_s"] if "sam" in rows else None
    for name, method in methods.items():
        if _refreshes(method) and f"{name}_refresh" in rows:
            plain = rows[name]["median_s"]
            extra = rows[f"{name}_refresh"]["median_s"] - plain
            periods = [int(k) for k in FLAGS.refresh_periods]
            own = method.tracker.refresh_every
            for k in dict.fromkeys(periods + [own]):
                out[f"{name}@k={k}"] = {
                    "method": name,
                    "k": k,
                    "default_k": k == own,
                    "step_s": plain + extra / k,
                    "refresh_cost_in_gradients": extra / sgd,
                }
        elif _sam_period(method) and f"{name}_on_step" in rows:
            k = _sam_period(method)
            on, off = rows[f"{name}_on_step"]["median_s"], rows[f"{name}_off_step"]["median_s"]
            out[f"{name}@k={k}"] = {
                "method": name,
                "k": k,
                "default_k": True,
                "step_s": (on + (k - 1) * off) / k,
            }
    for row in out.values():
        row["ratio_to_sgd"] = row["step_s"] / sgd
        row["ratio_to_sam"] = _ratio(row["step_s"], sam)
    return out


def _headline(result):
    """One row per method: its step (amortised at its own period where it
    has one) in each mode, passes, peak memory."""
    rows = []
    memory = result.get("memory") or {}
    sam_memory = _method_memory(memory, "sam", result)
    for name in result["methods"]:
        row = {
            "method": name,
            "passes": "1" if name == "sgd" else registry.get(_parse_entry(name)[0]).passes,
            "label": name,
        }
        for mode, figures in result["modes"].items():
            # A method with several kinds of step has only an amortised figure.
            step = figures["steps"].get(name) if len(result["variants"][name]) == 1 else None
            for label, amortised in figures["amortised"].items():
                if amortised["method"] == name and amortised["default_k"]:
                    row["label"], step = label, {
                        "median_s": amortised["step_s"], **amortised
                    }
            row[mode] = step and {
                "step_s": step["median_s"],
                "ratio_to_sgd": step["ratio_to_sgd"],
                "ratio_to_sam": step["ratio_to_sam"],
            }
        mib = _method_memory(memory, name, result)
        row["peak_step_memory_mib"] = mib
        row["memory_ratio_to_sam"] = _ratio(mib, sam_memory)
        rows.append(row)
    return rows


def _method_memory(memory, name, result):
    """The largest peak over the method's kinds of step."""
    labels = result["variants"].get(name, [name])
    values = [step_peak(memory[label]) for label in labels if label in memory]
    return max(values) if values else None


def _noise(result):
    """Per mode, the median over kinds of step of the half-spread of their
    per-round ratios to SGD, relative to their median: how far a ratio moves
    with the machine's load from round to round."""
    out = {}
    for mode, figures in result["modes"].items():
        spreads = [
            (max(r) - min(r)) / (2 * statistics.median(r))
            for label, row in figures["steps"].items()
            if label != "sgd" and len(r := row.get("ratio_to_sgd_per_round", [])) > 1
        ]
        out[mode] = statistics.median(spreads) if spreads else None
    return out


def _expectations(headline, noise=None):
    """Each expectation of issue #10 in each mode: the ratio, whether it is
    met, and whether it is closer to the bound than the round-to-round noise."""
    noise = noise or {}
    by_name = {row["method"]: row for row in headline}
    out = []
    for name, reference, bound, strict in _EXPECTATIONS:
        if name not in by_name or reference not in by_name:
            continue
        row = {
            "method": name,
            "expectation": f"{'<' if strict else '≤'} {bound:g} × {reference.upper()}",
        }
        for mode in ("xla", "no_xla"):
            figures = by_name[name].get(mode)
            if not figures:
                continue
            value = figures[f"ratio_to_{reference}"]
            row[mode] = {
                "value": value,
                "met": value is not None and (value < bound if strict else value <= bound),
                "within_noise": bool(
                    value is not None and noise.get(mode)
                    and abs(value / bound - 1) < noise[mode]
                ),
            }
        out.append(row)
    return out


# ---------------------------------------------------------------- markdown


def _ms(seconds):
    if seconds is None:
        return "–"
    return f"{1000 * seconds:.0f}" if seconds >= 0.1 else f"{1000 * seconds:.1f}"


def _x(ratio, digits=2):
    return "–" if ratio is None else f"{ratio:.{digits}f}"


def _union(dicts):
    """The keys of `dicts`, first seen first."""
    return list(dict.fromkeys(key for d in dicts for key in d))


def _markdown(result):
    modes = list(result["modes"])  # xla first
    names = {"xla": "XLA", "no_xla": "no XLA"}
    machine = result["machine"]
    lines = [
        f"## Step time{' and memory' if result.get('memory') else ''}: SGD and the SAM "
        f"family ({result['model']}, batch {result['batch_size']})",
        "",
        f"{result['model']}, batch {result['batch_size']}, input "
        f"{'×'.join(result['input_shape'])}, `SGD(0.01, momentum=0.9)`, every method with "
        f"its defaults; {' and '.join(names[m] for m in modes)} "
        f"(`jit_compile`), interleaved: each of {result['rounds']} rounds times every "
        f"(method, mode, kind of step) for {result['steps_per_round']} steps (refresh steps: "
        f"1) in an order rotated from round to round, after {result['warmup']} warm-up "
        "steps (refresh: at most 1). "
        "Medians; × SGD and × SAM in the same mode. One SGD step ≈ one pass.",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['platform']}; shared with other work (load average "
        f"{result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at "
        f"the end); wall time {result['wall_s'] / 60:.0f} min.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.",
        "",
        f"`{result['command']}`",
        "",
    ]
    header = "| method | passes per step |"
    rule = "|---|---|"
    for mode in modes:
        header += f" {names[mode]} ms | {names[mode]} × SGD | {names[mode]} × SAM |"
        rule += "---|---|---|"
    has_memory = bool(result.get("memory"))
    if has_memory:
        header += " peak step memory (MiB) | memory × SAM |"
        rule += "---|---|"
    lines += [header, rule]
    for row in result["headline"]:
        cells = [f"{row['label']}", row["passes"]]
        for mode in modes:
            figures = row.get(mode) or {}
            cells += [
                _ms(figures.get("step_s")),
                _x(figures.get("ratio_to_sgd")),
                _x(figures.get("ratio_to_sam")),
            ]
        if has_memory:
            mib = row["peak_step_memory_mib"]
            cells += ["–" if mib is None else f"{mib:.0f}", _x(row["memory_ratio_to_sam"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Eigen-SAM and X-SAM are amortised over their own `refresh_every` "
        f"(`t_plain + (t_refresh − t_plain)/k`, {result['num_matvecs']} Hessian-vector "
        f"products per refresh, {result['hvp_mode']}); LookSAM over its `k` "
        "(`(t_on + (k−1)·t_off)/k`). Passes per step: the method table's.",
    ]
    if result["xla_skip"] and "xla" in modes:
        lines += [
            "",
            "Not timed with XLA (`--xla_skip`): "
            + ", ".join(f"`{label}`" for label in result["xla_skip"])
            + ", so their methods have no amortised XLA figure (–).",
        ]
    if has_memory:
        mode = "XLA" if result["memory_xla"] else "without XLA"
        tensors = any(
            row.get("tensor_peak_mib") is not None for row in result["memory"].values()
        )
        how = result["memory_notes"].get("how", "")
        what = (
            "the peak of TensorFlow's CPU allocator during one step above its level "
            "before the step (every tensor, counted exactly; the process's resident "
            f"memory ({how}), which cannot resolve figures below about 100 MiB, is in "
            "the table of every kind of step below)"
            if tensors else
            f"the process's peak resident memory ({how}) during one step above its "
            "resident memory before the step"
        )
        lines += [
            "",
            f"Peak step memory ({mode}): "
            f"{what}, in a fresh process per method after "
            f"{max(result['memory_warmup'], _MIN_WARMUP)} warm-up step(s), glibc returning freed "
            "blocks "
            "(activations, gradients, perturbed weights, HVP buffers; weights and optimizer "
            "state excluded); the largest over the method's kinds of step.",
        ]
        again = result.get("memory_remeasured")
        if again:
            lines += [
                "",
                f"Memory of {', '.join(f'`{m}`' for m in again['methods'])} measured "
                f"again on {again['date']}, after the times, by `{again['command']}`.",
            ]
    if result["expectations"]:
        lines += [
            "",
            "Expectations (issue #10); *within noise*: the ratio is closer to the bound "
            "than the round-to-round noise, the median half-spread of a step's per-round × "
            "SGD relative to its median ("
            + ", ".join(
                f"{names[m]} ±{100 * result['noise'][m]:.0f}%"
                for m in modes if (result.get("noise") or {}).get(m) is not None
            )
            + "):",
            "",
            "| method | expected | " + " | ".join(names[m] for m in modes) + " |",
            "|---|---|" + "---|" * len(modes),
        ]
        for row in result["expectations"]:
            cells = [row["method"], row["expectation"]]
            for mode in modes:
                check = row.get(mode)
                verdict = "met" if check and check["met"] else "**missed**"
                if check and check.get("within_noise"):
                    verdict += " (within noise)"
                cells.append("–" if not check else f"{_x(check['value'], 3)} {verdict}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every kind of step (refresh: an eigenvector refresh step; on/off step: LookSAM's "
        "SAM step and its one-pass step), median ms (min–max), steps timed, × SGD, × SAM, "
        "and × SGD within each round:",
        "",
        "| step | " + " | ".join(
            f"{names[m]} ms | n | × SGD | × SAM | × SGD per round" for m in modes
        ) + " |",
        "|---|" + "---|---|---|---|---|" * len(modes),
    ]
    for label in _union(result["modes"][m]["steps"] for m in modes):
        cells = [label]
        for mode in modes:
            row = result["modes"][mode]["steps"].get(label)
            if row is None:
                cells += ["–"] * 5
                continue
            cells += [
                f"{_ms(row['median_s'])} ({_ms(row['min_s'])}–{_ms(row['max_s'])})",
                str(row["n"]),
                _x(row["ratio_to_sgd"]),
                _x(row["ratio_to_sam"]),
                ", ".join(_x(r) for r in row.get("ratio_to_sgd_per_round", [])),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    amortised = {}
    for mode in modes:
        for label, row in result["modes"][mode]["amortised"].items():
            amortised.setdefault(label, row)
    if amortised:
        lines += [
            "",
            "Amortised steps (`*`: the method's own period):",
            "",
            "| method | " + " | ".join(f"{names[m]} ms | × SGD | × SAM" for m in modes)
            + " | one refresh, in SGD steps |",
            "|---|" + "---|---|---|" * len(modes) + "---|",
        ]
        for label, first in amortised.items():
            cells = [label + (" *" if first["default_k"] else "")]
            for mode in modes:
                row = result["modes"][mode]["amortised"].get(label, {})
                cells += [
                    _ms(row.get("step_s")),
                    _x(row.get("ratio_to_sgd"), 3),
                    _x(row.get("ratio_to_sam"), 3),
                ]
            cost = [
                result["modes"][m]["amortised"].get(label, {}).get("refresh_cost_in_gradients")
                for m in modes
            ]
            cells.append(" / ".join(_x(c, 1) for c in cost) if any(cost) else "–")
            lines.append("| " + " | ".join(cells) + " |")
    if has_memory:
        lines += [
            "",
            "Peak step memory of every kind of step, MiB above the level before the step: "
            "TensorFlow's CPU allocator (every tensor, counted exactly; – where not "
            "recorded) and the process's resident memory (level before it in the last "
            "column):",
            "",
            "| step | tensors (MiB) | × SAM | resident (MiB) | × SAM | resident before (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        sam = result["memory"].get("sam") or {}
        for label, row in result["memory"].items():
            tensors = row.get("tensor_peak_mib")
            lines.append(
                f"| {label} | {'–' if tensors is None else f'{tensors:.0f}'} | "
                f"{_x(_ratio(tensors, sam.get('tensor_peak_mib')))} | {row['peak_mib']:.0f} | "
                f"{_x(_ratio(row['peak_mib'], sam.get('peak_mib')))} | {row['before_mib']:.0f} |"
            )
        for label, note in result["memory_notes"].items():
            if label != "how":
                lines.append(f"\n{label}: memory not measured: {note}")
    tk = result.get("tf_keras")
    if tk:
        lines.append("")
        if "error" in tk:
            lines.append(f"tf_keras's SAM could not be timed: {tk['error']}")
        else:
            for mode, samples in tk["samples"].items():
                rows = _summary(samples)
                ours = result["modes"].get(mode, {}).get("steps", {}).get("sam")
                lines.append(
                    f"tf_keras {tk['tf_keras']} `SharpnessAwareMinimization`, {names[mode]} "
                    f"(own process, own SGD baseline): SGD {_ms(rows['sgd']['median_s'])} ms, "
                    f"SAM {_ms(rows['sam']['median_s'])} ms, "
                    f"**{rows['sam']['ratio_to_sgd']:.2f} × SGD**"
                    + (f" (ours: {ours['ratio_to_sgd']:.2f} × SGD)." if ours else ".")
                )
                lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv):
    del argv
    if FLAGS.worker == "tf_keras":
        _tf_keras_worker()
        return
    if FLAGS.worker == "memory":
        _memory_worker()
        return
    if FLAGS.markdown_only or FLAGS.memory_only:
        path = os.path.join(FLAGS.output_dir, f"{FLAGS.output_name}.json")
        with open(path) as f:
            result = json.load(f)
        if FLAGS.memory_only:
            for name in _MODEL_FLAGS:  # the model and batch of the timed run
                if name in result:
                    FLAGS[name].value = result[name]
            memory, notes = _memory(FLAGS.memory_methods or result["methods"])
            result["memory"] = {**result.get("memory", {}), **memory}
            result["memory_notes"] = {**result.get("memory_notes", {}), **notes}
            result.update(
                memory_xla=FLAGS.memory_xla, memory_warmup=FLAGS.memory_warmup,
                memory_remeasured={
                    "command": command_line(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "methods": FLAGS.memory_methods or result["methods"],
                },
            )
        result["headline"] = _headline(result)
        result["noise"] = _noise(result)
        result["expectations"] = _expectations(result["headline"], result["noise"])
        _write(result)
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
    if "sgd" not in FLAGS.methods:
        sys.exit(
            f"--methods must include sgd and name only {', '.join(config.METHODS)} (or "
            f"their variants name(key=value;...)); got {FLAGS.methods}"
        )
    try:
        for entry in FLAGS.methods:
            _make_method(entry)
    except (ValueError, TypeError, config.ConfigError) as error:
        sys.exit(f"--methods: {error}")
    names = ["sgd"] + [m for m in FLAGS.methods if m != "sgd"]
    labels = [label for n in names for label, _, _ in _variants(n, _make_method(n))]
    if set(FLAGS.memory_methods) - set(names):
        sys.exit(f"--memory_methods takes methods timed, {names}; got {FLAGS.memory_methods}")
    if set(FLAGS.xla_skip) - set(labels):
        sys.exit(f"--xla_skip takes kinds of step of the methods timed, {labels}; "
                 f"got {FLAGS.xla_skip}")
    command = command_line()
    started, load_start = time.time(), os.getloadavg()[0]
    x, y = _batch()
    modes = _MODES[FLAGS.xla]
    samples, per_round = _interleaved(_build, names, modes, x, y)
    methods = {name: _make_method(name) for name in names}
    result = {
        "command": command,
        "model": FLAGS.model,
        "batch_size": FLAGS.batch_size,
        "input_shape": FLAGS.input_shape,
        "num_classes": FLAGS.num_classes,
        "optimizer": "SGD(0.01, momentum=0.9)",
        "methods": names,
        "rounds": FLAGS.rounds,
        "steps_per_round": FLAGS.steps_per_round,
        "warmup": FLAGS.warmup,
        "num_matvecs": FLAGS.num_matvecs,
        "hvp_mode": FLAGS.hvp_mode,
        "xla_skip": FLAGS.xla_skip,
        "versions": _versions(),
        "machine": _machine(),
        "variants": {
            name: [label for label, _, _ in _variants(name, methods[name])] for name in names
        },
        "modes": {},
    }
    for mode in (_mode(m) for m in modes):
        steps = _summary(samples[mode], per_round[mode])
        result["modes"][mode] = {
            "steps": steps,
            "amortised": _amortised(steps, methods),
            "samples": samples[mode],
        }
    if FLAGS.memory:
        memory, notes = _memory(FLAGS.memory_methods or names)
        result.update(
            memory=memory, memory_notes=notes, memory_xla=FLAGS.memory_xla,
            memory_warmup=FLAGS.memory_warmup,
        )
    if FLAGS.tf_keras:
        _log("timing tf_keras's SAM")
        result["tf_keras"] = _run_tf_keras()
    result["headline"] = _headline(result)
    result["noise"] = _noise(result)
    result["expectations"] = _expectations(result["headline"], result["noise"])
    result["wall_s"] = time.time() - started
    result["load_average"] = [load_start, os.getloadavg()[0]]
    _write(result)


def _write(result):
    write_results(FLAGS.output_dir, FLAGS.output_name, result, _markdown(result))


if __name__ == "__main__":
    app.run(main)
