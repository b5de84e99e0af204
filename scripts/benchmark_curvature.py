r"""Benchmark: the cost model of the curvature operators.

For `hessian.HessianOperator`, `hessian.GGNOperator` and
`hessian.EmpiricalFisherOperator` on one batch (model in inference mode):

- **time per product, in gradients**: the median seconds of one
  `op.matvec(v)` over the median seconds of one plain gradient (a
  `tf.GradientTape` of the same loss, `probe.model_loss`, through the same
  model, in a `tf.function` compiled the same way), without and with XLA
  (`jit_compile`). Every (function, compilation) pair is called once per
  round, in an order rotated from round to round, so drifts of the shared
  machine hit all of them alike; the spread is the min and max over rounds
  of the ratio of the two calls of the same round. An operator whose first
  call fails (XLA) is recorded with its error and left out of the rounds.
- **peak memory**: a fresh process per (model, function) builds the model
  and the operator, takes one untimed product (tracing), then records the
  peak resident memory during 5 more products above the resident memory
  just before them (`scripts/benchmark_memory.py`, as
  `scripts/benchmark.py --memory`: the kernel's `VmHWM`, reset through
  `/proc/self/clear_refs`, glibc told to return freed memory), without XLA.
- **products per call** of the estimators (without XLA; the count does
  not depend on compilation): `top_eigenpairs(k=1)` with the default
  `tol` (Lanczos stops when the residual is small) and with `tol=None`
  (all of its default 30 products), `trace(num_matvecs=30)`,
  `density(num_matvecs=40, num_probes=2)`, read from `matvec_count`, with
  the wall time of the one call.

Models (`--models`, from `keras_eigensam.experiments.architectures`): `mlp`
on the first `--batch_size` images of scikit-learn's digits (8×8 flattened,
offline); `small_cnn` (the CNN of `scripts/benchmark_hessian.py`) and
`cnn6` (a larger one) on a synthetic CIFAR-shaped batch (32×32×3).
`--estimator_models` chooses where the estimators are run. Writes
`<output_dir>/curvature_operators.json` and `.md`, and rebuilds
`<output_dir>/RESULTS.md`.

    python scripts/benchmark_curvature.py                    # ~11 min on 2 cores
    python scripts/benchmark_curvature.py --models=cnn6 --estimator_models=cnn6
    python scripts/benchmark_curvature.py --models=mlp --rounds=3 --xla=off
    python scripts/benchmark_curvature.py --quick --output_dir=/tmp/bench   # seconds
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from benchmark_memory import HOW as MEMORY_HOW  # noqa: E402
from benchmark_memory import MALLOC_ENV  # noqa: E402
from benchmark_memory import peak_mib  # noqa: E402
from benchmark_memory import reset_peak  # noqa: E402
from benchmark_memory import rss_mib  # noqa: E402
from benchmark_memory import run_worker  # noqa: E402
from benchmark_results import command_line  # noqa: E402
from benchmark_results import write_results_index  # noqa: E402

FLAGS = flags.FLAGS
#: model name -> (architecture, data): digits (8×8×1, or flat 64 for the MLP)
#: or a synthetic CIFAR-shaped batch.
MODELS = {
    "mlp": ("mlp", "digits_flat"),
    "small_cnn": ("small_cnn", "cifar_shaped"),
    "cnn6": ("cnn6", "cifar_shaped"),
}
OPERATORS = ("hessian", "ggn", "fisher")
FUNCTIONS = ("gradient",) + OPERATORS
flags.DEFINE_list("models", list(MODELS), f"Models to measure, of {list(MODELS)}.")
flags.DEFINE_integer("batch_size", 128, "Examples in the one batch.")
flags.DEFINE_integer("rounds", 5, "Interleaved timed rounds (each calls every function once).")
flags.DEFINE_integer("warmup", 2, "Untimed calls of each function after its first call.")
flags.DEFINE_enum("xla", "both", ["both", "on", "off"], "Time with XLA, without, or both.")
flags.DEFINE_bool("memory", True, "Measure peak memory (a fresh process per model and function).")
flags.DEFINE_integer("memory_products", 5, "Products (or gradients) in the memory figure.")
flags.DEFINE_list(
    "estimator_models", ["mlp", "small_cnn"],
    "Models whose estimators' products per call are counted (on cnn6 the four calls of the "
    "three operators take about 12 min on 2 cores).",
)
flags.DEFINE_bool(
    "quick", False,
    "Smoke test: the MLP only, hidden layers of 8 units, batch 16, one round, no warm-up, "
    "no XLA, no memory, estimators with few products.",
)
flags.DEFINE_string("output_dir", "benchmarks", "Where curvature_operators.json/.md go.")
flags.DEFINE_integer("seed", 0, "Seed of the weights, data and vectors.")
flags.DEFINE_enum("worker", None, ["memory"], "Internal: run as a memory worker process.")
flags.DEFINE_string("worker_model", None, "Internal: the memory worker's model.")
flags.DEFINE_enum("worker_function", None, list(FUNCTIONS), "Internal: the worker's function.")

_JSON = "curvature_operators.json"
_MARKDOWN = "curvature_operators.md"


def _log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ setup


def _settings():
    if FLAGS.quick:
        return {
            "models": ["mlp"], "batch_size": 16, "rounds": 1, "warmup": 0, "modes": [False],
            "memory": False, "hidden_units": (8,), "eig_matvecs": 6, "trace_matvecs": 4,
            "density_matvecs": 4, "density_probes": 2, "estimator_models": ["mlp"],
        }
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        sys.exit(f"--models takes {list(MODELS)}; got {unknown}")
    return {
        "models": list(FLAGS.models), "batch_size": FLAGS.batch_size, "rounds": FLAGS.rounds,
        "warmup": FLAGS.warmup,
        "modes": {"both": [False, True], "on": [True], "off": [False]}[FLAGS.xla],
        "memory": FLAGS.memory, "hidden_units": None, "eig_matvecs": None,
        "trace_matvecs": 30, "density_matvecs": 40, "density_probes": 2,
        "estimator_models": list(FLAGS.estimator_models),
    }


def _data(kind, batch_size, seed):
    import numpy as np

    if kind.startswith("digits"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images[:batch_size] / 16.0).astype("float32")
        x = x.reshape(len(x), -1) if kind == "digits_flat" else x[..., None]
        return x, digits.target[:batch_size].astype("int32")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, 10, batch_size).astype("int32")


def _setup(name, settings):
    """`(model, (x, y), vector, loss)` of one model, seeded."""
    import keras
    import numpy as np

    from keras_eigensam.experiments import architectures

    keras.utils.set_random_seed(FLAGS.seed)
    architecture, kind = MODELS[name]
    x, y = _data(kind, settings["batch_size"], FLAGS.seed)
    kwargs = {"hidden_units": settings["hidden_units"]} if settings["hidden_units"] else {}
    model = architectures.build(architecture, x.shape[1:], 10, **kwargs)
    rng = np.random.default_rng(FLAGS.seed)
    vector = [rng.standard_normal(w.shape).astype(w.dtype) for w in model.trainable_variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, (x, y), vector, loss


def _functions(model, data, loss, jit_compile):
    """`{name: zero-argument callable}`: the gradient and one product of each
    operator, each returning its list of tensors."""
    import tensorflow as tf

    from keras_eigensam import hessian
    from keras_eigensam.hessian import probe

    classes = {
        "hessian": hessian.HessianOperator,
        "ggn": hessian.GGNOperator,
        "fisher": hessian.EmpiricalFisherOperator,
    }
    operators = {
        name: cls(model, loss, data, training=False, jit_compile=jit_compile)
        for name, cls in classes.items()
    }
    batch = operators["hessian"].data.first()
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def gradient(batch):
        with tf.GradientTape() as tape:
            value = probe.model_loss(model, operators["hessian"].loss, batch, training=False)
        return tape.gradient(value, variables)

    return operators, {"gradient": lambda v: gradient(batch)} | {
        name: op.matvec for name, op in operators.items()
    }


def _call(function, vector):
    """Calls `function(vector)` and waits for every output tensor."""
    import numpy as np

    for t in function(vector):
        np.asarray(t)


# ----------------------------------------------------------------- timing


def _error_line(error):
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first}"[:400]


def _time_model(name, settings):
    """Interleaved medians of every (function, compilation); first-call
    errors; the operators without XLA (for the estimators)."""
    model, data, vector, loss = _setup(name, settings)
    callables, errors, first_call, plain_operators = {}, {}, {}, None
    for jit in settings["modes"]:
        operators, functions = _functions(model, data, loss, jit)
        if not jit:
            plain_operators = operators
        for fname, function in functions.items():
            key = (fname, jit)
            start = time.perf_counter()
            try:
                _call(function, vector)
            except Exception as error:  # noqa: BLE001 - recorded, the rest goes on
                errors[key] = _error_line(error)
                _log(f"{name} {fname} jit={jit}: first call failed: {errors[key]}")
                continue
            first_call[key] = time.perf_counter() - start
            for _ in range(settings["warmup"]):
                _call(function, vector)
            callables[key] = function
    keys = list(callables)
    times = {key: [] for key in keys}
    for round_index in range(settings["rounds"]):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            _call(callables[key], vector)
            times[key].append(time.perf_counter() - start)
        _log(f"{name}: round {round_index + 1}/{settings['rounds']}")
    params = int(sum(int(w.numpy().size) for w in model.trainable_variables))
    return params, times, errors, first_call, plain_operators


def _timing_rows(times, errors, first_call, modes):
    rows = {}
    for jit in modes:
        mode = "xla" if jit else "no_xla"
        unit = times.get(("gradient", jit))
        for fname in FUNCTIONS:
            key = (fname, jit)
            row = rows.setdefault(fname, {})
            if key in errors or unit is None:
                row[mode] = {"error": errors.get(key, "the gradient failed")}
                continue
            samples = times[key]
            ratios = [t / g for t, g in zip(samples, unit)]
            row[mode] = {
                "median_ms": 1e3 * statistics.median(samples),
                "min_ms": 1e3 * min(samples),
                "gradients": statistics.median(samples) / statistics.median(unit),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rounds": len(samples),
                "first_call_s": first_call[key],
            }
    return rows


# ------------------------------------------------------------- estimators


def _count(op, call):
    start_count, start = op.matvec_count, time.perf_counter()
    result = call()
    return op.matvec_count - start_count, time.perf_counter() - start, result


def _estimators(operators, settings):
    """Products (from `matvec_count`) and seconds of one call of each estimator."""
    eig = {} if settings["eig_matvecs"] is None else {"num_matvecs": settings["eig_matvecs"]}
    rows = {}
    for fname, op in operators.items():
        row = {}
        products, seconds, pairs = _count(op, lambda: op.top_eigenpairs(k=1, seed=0, **eig))
        row["top_eigenpairs_tol_default"] = {
            "products": products, "seconds": seconds,
            "eigenvalue": float(pairs.eigenvalues[0]), "residual": float(pairs.residuals[0]),
        }
        products, seconds, pairs = _count(
            op, lambda: op.top_eigenpairs(k=1, tol=None, seed=0, **eig)
        )
        row["top_eigenpairs_tol_none"] = {
            "products": products, "seconds": seconds,
            "eigenvalue": float(pairs.eigenvalues[0]), "residual": float(pairs.residuals[0]),
        }
        products, seconds, estimate = _count(
            op, lambda: op.trace(num_matvecs=settings["trace_matvecs"], seed=0)
        )
        row["trace"] = {
            "num_matvecs": settings["trace_matvecs"], "products": products,
            "seconds": seconds, "value": estimate.value, "std_error": estimate.std_error,
        }
        products, seconds, _ = _count(
            op,
            lambda: op.density(
                num_matvecs=settings["density_matvecs"],
                num_probes=settings["density_probes"], seed=0,
            ),
        )
        row["density"] = {
            "num_matvecs": settings["density_matvecs"],
            "num_probes": settings["density_probes"], "products": products, "seconds": seconds,
        }
        rows[fname] = row
        _log(f"estimators of {fname}: " + ", ".join(
            f"{k} {v['products']} products" for k, v in row.items()
        ))
    return rows


# ----------------------------------------------------------------- memory


def _memory_worker():
    """Peak resident memory of `--memory_products` calls of one function
    above the level before them, after one untimed call; prints JSON."""
    settings = _settings()
    model, data, vector, loss = _setup(FLAGS.worker_model, settings)
    _, functions = _functions(model, data, loss, jit_compile=False)
    function = functions[FLAGS.worker_function]
    _call(function, vector)  # traces
    resettable = reset_peak()
    before = rss_mib()
    for _ in range(FLAGS.memory_products):
        _call(function, vector)
    figure = {"peak_mib": peak_mib(resettable) - before, "before_mib": before}
    print("RESULT " + json.dumps({"figure": figure, "how": MEMORY_HOW[resettable]}))


def _memory(name):
    env = dict(os.environ, **MALLOC_ENV)
    figures = {}
    for fname in FUNCTIONS:
        args = [
            "--worker=memory", f"--worker_model={name}", f"--worker_function={fname}",
            FLAGS["batch_size"].serialize(), FLAGS["seed"].serialize(),
            FLAGS["memory_products"].serialize(),
        ]
        result = run_worker(__file__, args, env)
        if "error" in result:
            figures[fname] = {"error": result["error"]}
            _log(f"memory of {name} {fname} failed: {result['error']}")
            continue
        figures[fname] = dict(result["figure"], how=result["how"])
        _log(f"memory of {name} {fname}: {result['figure']['peak_mib']:.0f} MiB")
    return figures


# ---------------------------------------------------------------- reports


def _environment():
    from keras_eigensam.experiments import results

    return {
        "versions": results.versions(),
        "cpu": results.cpu_name(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command_line(),
    }


def _fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def _time_cell(cell):
    if cell is None:
        return "–", "–"
    if "error" in cell:
        return "failed¹", "–"
    return (
        f"{cell['gradients']:.2f} ({cell['ratio_min']:.2f}–{cell['ratio_max']:.2f})",
        f"{cell['median_ms']:.1f}",
    )


def _products(row, key):
    return "–" if row is None or key not in row else str(row[key]["products"])


def _markdown(result):
    env = result["environment"]
    versions = env["versions"]
    lines = [
        "# Curvature operators: the cost model",
        "",
        "Written by `scripts/benchmark_curvature.py`. One batch of "
        f"{result['batch_size']} examples, model in inference mode. **gradients** = median "
        "seconds of one `matvec` over the median seconds of one plain gradient "
        "(`tf.GradientTape` of the same loss through the same model, a `tf.function` "
        "compiled the same way), in brackets the min–max over the "
        f"{result['rounds']} interleaved rounds of the ratio within a round; **ms** = median "
        "milliseconds per call. **peak MiB**: peak resident memory of a fresh process "
        f"during {result['memory_products']} calls (after one untimed call) above its "
        "resident memory just before them, without XLA "
        f"({result.get('memory_how') or 'not measured'}; as `scripts/benchmark.py "
        "--memory`); it includes the inputs and outputs of the calls. **products**: "
        "`matvec_count` spent by one call, without XLA: `top_eigenpairs(k=1)` with the "
        "default `tol=1e-4` (Lanczos stops early) and with `tol=None`, "
        f"`trace(num_matvecs={result['trace_matvecs']})`, "
        f"`density(num_matvecs={result['density_matvecs']}, "
        f"num_probes={result['density_probes']})`.",
        "",
        f"TF {versions['tensorflow']}, Keras {versions['keras']}, {env['cpu']} "
        f"({env['cpu_count']} cores, shared with other jobs: compare the ratios), "
        f"{env['date']}. `{env['command']}`",
        "",
        "| model | params | function | no XLA: gradients | no XLA ms | XLA: gradients | "
        "XLA ms | peak MiB | eig tol=1e-4 | eig tol=None | trace | density |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failures = []
    for name, entry in result["models"].items():
        for fname in FUNCTIONS:
            timing = entry["timing"].get(fname, {})
            plain, plain_ms = _time_cell(timing.get("no_xla"))
            xla, xla_ms = _time_cell(timing.get("xla"))
            for mode in ("no_xla", "xla"):
                if "error" in timing.get(mode, {}):
                    failures.append(f"{name} {fname} ({mode}): {timing[mode]['error']}")
            memory = (entry.get("memory") or {}).get(fname) or {}
            if "error" in memory:
                failures.append(f"{name} {fname} (memory): {memory['error']}")
            est = (entry.get("estimators") or {}).get(fname)
            lines.append(
                f"| {name} | {entry['parameters']:,} | {fname} | {plain} | {plain_ms} | {xla} | "
                f"{xla_ms} | {_fmt(memory.get('peak_mib'), 1)} | "
                f"{_products(est, 'top_eigenpairs_tol_default')} | "
                f"{_products(est, 'top_eigenpairs_tol_none')} | {_products(est, 'trace')} | "
                f"{_products(est, 'density')} |"
            )
    lines.append("")
    for failure in failures:
        lines.append(f"¹ {failure}")
    if failures:
        lines.append("")
    lines += ["## What this means", "", _meaning(result), ""]
    return "\n".join(lines)


def _span(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "not measured"
    low, high = min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}–{high:.{digits}f}"


def _meaning(result):
    """Sentences built from the measured numbers only."""
    models = result["models"]
    labels = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}
    parts = []
    def per_model(functions, read, digits, unit=""):
        spans = []
        for fname in functions:
            values = [(m, read(models[m], fname)) for m in models]
            cells = [f"{v:.{digits}f}{unit} ({m})" for m, v in values if v is not None]
            if cells:
                spans.append(f"{labels.get(fname, fname)} " + ", ".join(cells))
        return "; ".join(spans)

    for mode, words in (("no_xla", "without XLA"), ("xla", "with XLA")):
        spans = per_model(
            OPERATORS,
            lambda entry, fname: entry["timing"].get(fname, {}).get(mode, {}).get("gradients"),
            2,
        )
        if spans:
            parts.append(f"One product cost, {words}, in gradients (median): {spans}.")
    memory = per_model(
        FUNCTIONS,
        lambda entry, fname: (entry.get("memory") or {}).get(fname, {}).get("peak_mib"),
        1, " MiB",
    )
    if memory:
        parts.append(
            f"Peak memory of {result['memory_products']} calls above the level before them: "
            f"{memory}."
        )
    early, full, exact, gaps = [], [], [], []
    for m in models:
        for fname, row in (models[m].get("estimators") or {}).items():
            early.append(row["top_eigenpairs_tol_default"]["products"])
            full.append(row["top_eigenpairs_tol_none"]["products"])
            lam, reference = (
                row[k]["eigenvalue"]
                for k in ("top_eigenpairs_tol_default", "top_eigenpairs_tol_none")
            )
            gaps.append(abs(lam - reference) / max(abs(reference), 1e-30))
            exact += [row[k]["products"] == row[k]["num_matvecs"] for k in ("trace", "density")]
    if early:
        parts.append(
            f"Lanczos for the top eigenvalue stopped after {_span(early, 0)} products at the "
            f"default tolerance, against {_span(full, 0)} with `tol=None`, and its eigenvalue "
            f"differed from the `tol=None` one by at most {max(gaps):.1e} (relative); `trace` and "
            "`density` spent "
            + ("exactly the `num_matvecs` they were given." if all(exact)
               else "other than the `num_matvecs` they were given (see the table).")
            + " The seconds of each call are in the JSON (`estimators`, one call each, "
            "not interleaved)."
        )
    return " ".join(parts)


# ------------------------------------------------------------------- main


def main(argv):
    del argv
    if FLAGS.worker == "memory":
        _memory_worker()
        return
    settings = _settings()
    result = {
        "batch_size": settings["batch_size"], "rounds": settings["rounds"],
        "warmup": settings["warmup"], "memory_products": FLAGS.memory_products,
        "trace_matvecs": settings["trace_matvecs"],
        "density_matvecs": settings["density_matvecs"],
        "density_probes": settings["density_probes"], "quick": FLAGS.quick, "models": {},
    }
    start = time.perf_counter()
    for name in settings["models"]:
        _log(f"{name}: timing")
        params, times, errors, first_call, operators = _time_model(name, settings)
        entry = {
            "architecture": MODELS[name][0], "data": MODELS[name][1], "parameters": params,
            "timing": _timing_rows(times, errors, first_call, settings["modes"]),
        }
        if name in settings["estimator_models"] and operators:
            entry["estimators"] = _estimators(operators, settings)
        if settings["memory"]:
            entry["memory"] = _memory(name)
            hows = {row["how"] for row in entry["memory"].values() if "how" in row}
            if hows:
                result["memory_how"] = " / ".join(sorted(hows))
        result["models"][name] = entry
    result["wall_s"] = time.perf_counter() - start
    result["environment"] = _environment()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(os.path.join(FLAGS.output_dir, _JSON), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    markdown = _markdown(result)
    with open(os.path.join(FLAGS.output_dir, _MARKDOWN), "w") as f:
        f.write(markdown)
    write_results_index(FLAGS.output_dir)
    print(markdown)
    _log(f"done in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
