r"""Checks the Eigen-SAM paper's curvature claims with this library (issue #13).

    python scripts/reproduce_curvature.py                    # digits, small_cnn, 4 methods x 5 seeds
    python scripts/reproduce_curvature.py --methods=sgd,sam --seeds=0,1 --epochs=1
    python scripts/reproduce_curvature.py --config=paper_cifar10_resnet18 \
        --data_dir=~/tensorflow_datasets --download          # GPU/TPU, see below

The claims (Luo et al., 2024, arXiv 2501.12666):

(a) during SAM training the perturbation is poorly aligned with the top
    Hessian eigenvector (the paper's figure, a 6-layer CNN on CIFAR-10);
(b) the final top eigenvalue is lowest with Eigen-SAM, then SAM, then SGD;
(c) Eigen-SAM (and X-SAM) generalise at least as well as SAM.

Every method of `--methods` (default SGD, SAM, Eigen-SAM, X-SAM; any other
registered method can be added) trains with every seed of `--seeds` through
`keras_eigensam.experiments.compare`, with `curvature=True`: with one seed
every method starts from the same weights and sees the same batches. Runs
live in `<output_dir>/runs/` and are reused when finished (a killed
reproduction resumes). Then, for every run, the final network's top
Hessian eigenvalue is estimated again, independently of the per-epoch
monitor (Lanczos, `--final_matvecs` products, inference mode, on the same
fixed probe set of 256 training examples), and its trace (Hutch++,
`--trace_matvecs` products). Written into `--output_dir`:

    alignment.png       |cos(perturbation, v)| per step, mean and 95 % band over seeds
    eigenvalue.png      probe-set λ_max per epoch, every method, mean and 95 % band
    reproduce.md        the table, the paired effects and the settings
    reproduce.json      the same, with every per-seed number

What is measured, and how:

- Alignment: `eigen_alignment` of the train step, |cos(e, v)| between the
  perturbation `e` and the tracked top eigenvector `v` (Lanczos,
  `num_matvecs=5`, warm-started, on the training batch, inference mode).
  Eigen-SAM and X-SAM track `v` for their update (every
  `--eigensam_refresh_every` / X-SAM's default 5 steps); the other methods
  are given a tracker that does not change their update, refreshed every
  `--alignment_refresh_every` steps (1 on digits: a fresh `v` at every
  step). Between refreshes `v` is the last one computed; the table also
  gives the mean over refresh steps only, where `v` is fresh.
- λ_max over training: `HessianEigenvalueMonitor` (Lanczos, 30 products)
  on the fixed probe set after every epoch.
- Bands and intervals: mean ± t(0.975, n−1) · sd / √n over seeds (the
  95 % confidence interval of the mean). Paired effects: per-seed
  differences A − B with the same seed, their mean, its 95 % CI, the
  paired t-test and the Wilcoxon signed-rank p-values (with 5 seeds the
  smallest two-sided Wilcoxon p is 0.0625).

Presets (`--config`; any flag given overrides the preset):

- `digits` (default): offline `digits` (8×8×1, 1,437 train / 360 test),
  `small_cnn` (3 convolutions, 25,866 parameters, no BatchNorm), 15 epochs,
  batch 64, SGD momentum 0.9, lr 0.05 cosine (at 0.1, in single 15-epoch
  trials, SGD reached 89 % but SAM 47 % and Eigen-SAM stayed at 10 %; at
  0.05 Eigen-SAM reached 91 %), coupled L2 5e-4, no augmentation, ρ 0.05,
  α 0.2, Eigen-SAM refresh every 10 steps (22 steps per epoch: about two
  refreshes per epoch, as the paper's k = 100 gives on CIFAR at batch
  256), SAM's tracker refreshed every step, seeds 0–4. `small_cnn` rather
  than `cnn6`: `cnn6` fits 8×8 inputs (two 2× pools leave 2×2×64) but is
  5× larger, mostly its 256-unit dense layer on 256 features, and in a
  3-epoch trial at lr 0.1 its SAM run had not started learning (10 % test
  accuracy) while SGD reached 62 %; `small_cnn` trains with every method
  and keeps 20 runs within the time this machine has.
- `paper_cifar10_resnet18`: the paper's CIFAR-10 ResNet-18 setting as in
  `/work/shared/ALGORITHMS.md` (Eigen-SAM section): 200 epochs, batch 256,
  lr 0.1 cosine, momentum 0.9, standard augmentation (4-pixel crop and
  flip), ρ 0.05, α 0.2, refresh every k = 100 steps with 5 products;
  weight decay 5e-4 (the usual CIFAR value of the SAM code bases; the notes
  do not state the paper's); SAM's tracker every 10 steps (every step would
  add 5 Hessian-vector products, about 15 gradients, to every SAM step);
  seeds 0–2. Reads CIFAR-10 from `--data_dir` (`--download` fetches and
  prepares it there once). Not run
  here. Expected time, an estimate, not a measurement: 196 steps per epoch,
  39,200 steps per run. On a 2-core CPU a ResNet-18 SGD step at batch 64
  takes 1.5–6.9 s (`benchmarks/steps.md`, `benchmarks/steps_epyc_avx2.md`),
  so about 4× that at batch 256: 3 to 12 days per SGD run, not feasible.
  On one modern GPU (A100/H100 class) a ResNet-18 CIFAR-10 SGD epoch
  typically takes 10–20 s, SAM about twice, Eigen-SAM about 1.0–1.1× SAM
  and X-SAM about 1.7–1.8× SAM (ratios from `benchmarks/steps.md`), plus
  the per-epoch monitors: about 1 h for SGD, 2 h for SAM and Eigen-SAM,
  3.5 h for X-SAM, so about 9 h per seed and
  about a day for 3 seeds on one GPU.
"""

import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_eigensam import experiments  # noqa: E402
from keras_eigensam import hessian  # noqa: E402
from keras_eigensam.experiments import config as config_lib  # noqa: E402
from keras_eigensam.experiments import curvature  # noqa: E402
from keras_eigensam.experiments import results as results_lib  # noqa: E402
from keras_eigensam.methods import registry  # noqa: E402

PRESETS = {
    "digits": dict(
        dataset="digits",
        model="small_cnn",
        augment="none",
        batch_size=64,
        epochs=15,
        learning_rate=0.05,
        weight_decay=5e-4,
        rho=0.05,
        alpha=0.2,
        eigensam_refresh_every=10,
        alignment_refresh_every=1,
        seeds=[0, 1, 2, 3, 4],
    ),
    "paper_cifar10_resnet18": dict(
        dataset="cifar10",
        model="resnet18",
        augment="standard",
        batch_size=256,
        epochs=200,
        learning_rate=0.1,
        weight_decay=5e-4,
        rho=0.05,
        alpha=0.2,
        eigensam_refresh_every=100,
        alignment_refresh_every=10,
        seeds=[0, 1, 2],
    ),
}
#: Methods whose `rho` is `--rho`; the others keep their class default (ASAM's
#: radius, for one, is on another scale).
RHO_METHODS = ("sam", "eigensam", "xsam")
#: Paired comparisons `(A, B)` reported as A − B, when both ran.
PAIRS = (("eigensam", "sam"), ("xsam", "sam"), ("sam", "sgd"), ("eigensam", "sgd"))
#: Per-run quantities of the table and of the paired effects.
METRICS = (
    ("final_test_accuracy", "final test acc. (%)", 100.0),
    ("lambda_max", "final λ_max (Lanczos)", 1.0),
    ("trace", "final tr(H) (Hutch++)", 1.0),
)
FINAL_CURVATURE_FILE = "final_curvature.json"

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "digits", list(PRESETS), "Preset; other flags override it.")
flags.DEFINE_list(
    "methods",
    ["sgd", "sam", "eigensam", "xsam"],
    f"Methods, from {list(config_lib.METHODS)}.",
)
flags.DEFINE_list("seeds", None, "Seeds (preset: digits 0-4, CIFAR 0-2).")
flags.DEFINE_integer(
    "epochs", None, "Epochs per run (preset: digits 15, CIFAR 200).", lower_bound=1
)
flags.DEFINE_integer(
    "max_steps_per_epoch", None, "Cut every epoch to this many steps (smoke tests).",
    lower_bound=1,
)
flags.DEFINE_enum("model", None, config_lib.MODELS, "Architecture (preset: digits small_cnn).")
flags.DEFINE_integer("batch_size", None, "Global batch size.", lower_bound=1)
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (cosine schedule), > 0.", lower_bound=0.0
)
flags.DEFINE_float("weight_decay", None, "Coupled L2 coefficient.", lower_bound=0.0)
flags.DEFINE_float(
    "rho", None, f"Perturbation radius of {list(RHO_METHODS)}.", lower_bound=0.0
)
flags.DEFINE_float("alpha", None, "Eigen-SAM's α.", lower_bound=0.0)
flags.DEFINE_integer(
    "eigensam_refresh_every", None, "Eigen-SAM's refresh period k.", lower_bound=1
)
flags.DEFINE_integer(
    "alignment_refresh_every",
    None,
    "Refresh period of the tracker given to methods that do not need one "
    "(SAM...) to measure their alignment; it does not change their update.",
    lower_bound=1,
)
flags.DEFINE_string("data_dir", None, "Directory of prepared TFDS datasets.")
flags.DEFINE_bool(
    "download", False, "Download and prepare a TFDS dataset missing from --data_dir."
)
flags.DEFINE_integer(
    "final_matvecs", 100, "Lanczos products of the final λ_max estimate.", lower_bound=2
)
flags.DEFINE_integer(
    "trace_matvecs", 99, "Hutch++ products of the final trace estimate.", lower_bound=3
)
flags.DEFINE_string(
    "output_dir", None, "Output directory (default: runs/reproduce-<config>)."
)


def settings_from_flags():
    """The preset of `--config` with every flag given laid over it."""
    settings = dict(PRESETS[FLAGS.config])
    for name in settings:
        value = getattr(FLAGS, name, None)
        if value is not None:
            settings[name] = [int(s) for s in value] if name == "seeds" else value
    settings["max_steps_per_epoch"] = FLAGS.max_steps_per_epoch
    return settings


def method_args(method, settings):
    """The arguments `method` is run with (see the module docstring)."""
    if method == "sgd":
        return {}
    args = {}
    if method in RHO_METHODS:
        args["rho"] = settings["rho"]
    if method == "eigensam":
        args.update(alpha=settings["alpha"], refresh_every=settings["eigensam_refresh_every"])
    elif not registry.get(method).cls.requires_tracker:
        args["refresh_every"] = settings["alignment_refresh_every"]
    return args


def make_configs(methods, settings, output_dir):
    shared = {
        k: settings[k]
        for k in (
            "dataset",
            "model",
            "augment",
            "batch_size",
            "epochs",
            "learning_rate",
            "weight_decay",
            "max_steps_per_epoch",
        )
    }
    configs = []
    for method in methods:
        configs += experiments.configs_for_methods(
            [method],
            settings["seeds"],
            method_args(method, settings),
            data_dir=FLAGS.data_dir,
            download=FLAGS.download,
            curvature=True,
            output_dir=os.path.join(output_dir, "runs"),
            verbose=0,
            **shared,
        )
    return configs


def final_curvature(config, run, num_matvecs, trace_matvecs):
    """λ_max and tr(H) of a run's final network on the monitors' probe set.

    Stored in the run directory and reused.
    """
    path = os.path.join(run["run_dir"], FINAL_CURVATURE_FILE)
    stored = results_lib.read_json(path)
    wanted = {"num_matvecs": num_matvecs, "trace_matvecs": trace_matvecs}
    if stored is not None and all(stored.get(k) == v for k, v in wanted.items()):
        return stored
    keras.utils.clear_session()
    net = keras.models.load_model(
        os.path.join(run["run_dir"], results_lib.MODEL_FILE), compile=False
    )
    op = hessian.HessianOperator(
        net,
        keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        curvature.probe_batch(config, 1),
        training=False,
    )
    start = time.perf_counter()
    pairs = op.top_eigenpairs(
        k=1, method="lanczos", num_matvecs=num_matvecs, tol=1e-6, seed=config.seed
    )
    value, std_error = op.trace(
        num_matvecs=trace_matvecs, method="hutch++", seed=config.seed
    )
    stored = dict(
        wanted,
        lambda_max=float(pairs.eigenvalues[0]),
        lambda_max_residual=float(pairs.residuals[0]),
        lambda_max_matvecs=int(pairs.num_matvecs),
        trace=float(value),
        trace_std_error=float(std_error),
        monitor_lambda_max=run["final_metrics"].get(
            experiments.comparison.PROBE_EIGENVALUE
        ),
        seconds=time.perf_counter() - start,
    )
    results_lib.write_json(path, stored)
    return stored


def read_alignment(run):
    """`(steps, |cos(e, v)|)` of a run's alignment.csv, or `None`."""
    path = os.path.join(run["run_dir"], curvature.ALIGNMENT_DIR, "alignment.csv")
    if not os.path.exists(path):
        return None
    table = np.genfromtxt(path, delimiter=",", names=True)
    table = np.atleast_1d(table)
    return table["step"].astype(int), table["eigen_alignment"].astype(float)


def read_eigenvalues(run):
    """`(epochs from 1, probe λ_max)` of a run's history.csv."""
    rows = results_lib.read_history(os.path.join(run["run_dir"], results_lib.HISTORY_FILE))
    epochs = np.array([row["epoch"] + 1 for row in rows])
    values = np.array(
        [
            math.nan if row.get("hessian_top_eigenvalue") is None else row["hessian_top_eigenvalue"]
            for row in rows
        ]
    )
    return epochs, values


def mean_interval(values, axis=0):
    """Mean and half-width of the 95 % t-interval of the mean over `axis`."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.975, n - 1) * values.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, half


def paired_effect(a, b):
    """Mean of `a − b` over paired seeds, its 95 % CI and two p-values."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    mean, half = mean_interval(d)
    effect = {
        "n": int(d.size),
        "mean_difference": float(mean),
        "ci95": [float(mean - half), float(mean + half)],
        "sd_difference": float(d.std(ddof=1)) if d.size > 1 else 0.0,
        "t_test_p": None,
        "wilcoxon_p": None,
        "differences": d.tolist(),
    }
    if d.size > 1 and np.any(d != 0):
        effect["t_test_p"] = float(stats.ttest_rel(a, b).pvalue)
        effect["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return effect


def plot_bands(series, out_png, xlabel, ylabel, title, logy=False):
    """One line per method, mean with its 95 % band; `series` maps a label
    to `(x, per-seed values of shape (seeds, len(x)))`."""
    # matplotlib comes with the `scripts` extra, as for `experiments.plotting`.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for color, (label, (x, values)) in enumerate(series.items()):
        mean, half = mean_interval(values)
        ax.plot(x, mean, color=f"C{color}", label=f"{label} (n={len(values)})", lw=1.2)
        ax.fill_between(x, mean - half, mean + half, color=f"C{color}", alpha=0.25, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(out_png, dpi=100)
    return os.path.basename(out_png)


def stack_runs(runs, reader):
    """Per-seed series of `runs` cut to their common length."""
    read = [reader(run) for run in runs]
    read = [r for r in read if r is not None]
    if not read:
        return None
    length = min(len(x) for x, _ in read)
    return read[0][0][:length], np.stack([y[:length] for _, y in read])


def summarise(comparison, configs, settings, methods, output_dir):
    by_name = {r["run_name"]: r for r in comparison["runs"]}
    per_method = {m: {} for m in methods}
    for config in configs:
        run = by_name[config.run_name or config_lib.run_name(config)]
        final = final_curvature(config, run, FLAGS.final_matvecs, FLAGS.trace_matvecs)
        aligned = read_alignment(run)
        record = {
            "seed": config.seed,
            "run_name": run["run_name"],
            "final_test_accuracy": run["final_test_accuracy"],
            "train_time_s": run["train_time_s"],
            **{k: final[k] for k in final if k not in ("num_matvecs", "trace_matvecs")},
        }
        if aligned is not None:
            steps, cosines = aligned
            refresh = config.resolved().method_args.get("refresh_every", 1)
            # Step s is logged after the s-th update: v was refreshed in it
            # when (s − 1) % refresh_every == 0.
            fresh = (steps - 1) % refresh == 0
            record["mean_alignment"] = float(np.nanmean(cosines))
            record["mean_alignment_fresh_v"] = float(np.nanmean(cosines[fresh]))
        per_method[config.method][config.seed] = (record, run)

    rows = []
    for method in methods:
        records = [r for r, _ in per_method[method].values()]
        row = {"method": method, "method_args": method_args(method, settings), "seeds": []}
        row["seeds"] = [r["seed"] for r in records]
        for key in (
            "final_test_accuracy",
            "lambda_max",
            "monitor_lambda_max",
            "trace",
            "mean_alignment",
            "mean_alignment_fresh_v",
            "train_time_s",
        ):
            values = [r.get(key) for r in records]
            if any(v is None for v in values):
                continue
            values = np.array(values, dtype=float)
            row[key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "per_seed": values.tolist(),
            }
        # The monitor (30 products) against the independent estimate.
        relative = [
            abs(r["monitor_lambda_max"] - r["lambda_max"]) / max(abs(r["lambda_max"]), 1e-12)
            for r in records
            if r.get("monitor_lambda_max") is not None
        ]
        row["monitor_vs_lanczos_max_relative_difference"] = max(relative) if relative else None
        rows.append(row)

    effects = []
    for a, b in PAIRS:
        if a not in per_method or b not in per_method:
            continue
        seeds = sorted(set(per_method[a]) & set(per_method[b]))
        for key, _, _ in METRICS:
            effects.append(
                {
                    "a": a,
                    "b": b,
                    "metric": key,
                    "seeds": seeds,
                    **paired_effect(
                        [per_method[a][s][0][key] for s in seeds],
                        [per_method[b][s][0][key] for s in seeds],
                    ),
                }
            )

    figures = {}
    aligned = {
        m: stack_runs([run for _, run in per_method[m].values()], read_alignment)
        for m in methods
    }
    aligned = {m: s for m, s in aligned.items() if s is not None}
    if aligned:
        figures["alignment"] = plot_bands(
            aligned,
            os.path.join(output_dir, "alignment.png"),
            "training step",
            r"$|\cos(e, v)|$, perturbation vs top eigenvector",
            f"(a) alignment, {settings['dataset']} {settings['model']}, mean and 95 % CI",
        )
    eigen = {
        m: stack_runs([run for _, run in per_method[m].values()], read_eigenvalues)
        for m in methods
    }
    figures["eigenvalue"] = plot_bands(
        {m: s for m, s in eigen.items() if s is not None},
        os.path.join(output_dir, "eigenvalue.png"),
        "epoch",
        r"$\lambda_{\max}$ (probe set, inference mode)",
        f"(b) top Hessian eigenvalue, {settings['dataset']} {settings['model']}",
        logy=True,
    )
    return rows, effects, figures


def _cell(stats, scale=1.0, fmt=".3g"):
    if stats is None:
        return "–"
    return f"{scale * stats['mean']:{fmt}} ± {scale * stats['std']:{fmt}}"


def _p(value):
    return "–" if value is None else f"{value:.3g}"


def markdown(rows, effects, figures, settings, command, wall):
    lines = [
        "| method | args | final test acc. (%) | final λ_max (Lanczos) "
        "| λ_max (monitor) | max rel. diff. | tr(H) (Hutch++) "
        "| mean \\|cos(e,v)\\| | at fresh v | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        diff = row["monitor_vs_lanczos_max_relative_difference"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["method"],
                    ", ".join(config_lib.argument_strings(row["method_args"])) or "–",
                    _cell(row.get("final_test_accuracy"), 100, ".2f"),
                    _cell(row.get("lambda_max")),
                    _cell(row.get("monitor_lambda_max")),
                    "–" if diff is None else f"{diff:.1e}",
                    _cell(row.get("trace")),
                    _cell(row.get("mean_alignment"), fmt=".3f"),
                    _cell(row.get("mean_alignment_fresh_v"), fmt=".3f"),
                    _cell(row.get("train_time_s"), fmt=".0f"),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds "
        f"{', '.join(map(str, settings['seeds']))}. λ_max and tr(H): Hessian of "
        "the training loss (with L2) on a fixed probe set of 256 training "
        "examples, inference mode, after the last epoch; Lanczos with "
        f"{FLAGS.final_matvecs} products, Hutch++ with {FLAGS.trace_matvecs}. "
        "Monitor: `HessianEigenvalueMonitor` (Lanczos, 30 products) at the last "
        "epoch; max rel. diff.: its largest relative difference from the "
        "Lanczos estimate over seeds.",
        "",
        "Paired effects (A − B over the same seeds; accuracy in points):",
        "",
        "| A − B | metric | mean diff. | 95 % CI | sd of diff. | paired t p | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    scales = {key: scale for key, _, scale in METRICS}
    for e in effects:
        s = scales[e["metric"]]
        lines.append(
            f"| {e['a']} − {e['b']} | {e['metric']} | {s * e['mean_difference']:+.3g} "
            f"| [{s * e['ci95'][0]:+.3g}, {s * e['ci95'][1]:+.3g}] "
            f"| {s * e['sd_difference']:.3g} | {_p(e['t_test_p'])} | {_p(e['wilcoxon_p'])} |"
        )
    lines += ["", *(f"![{k}]({v})" for k, v in figures.items()), ""]
    lines += [f"Command: `{command}`", "", f"Wall time: {wall:.0f} s", ""]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    start = time.perf_counter()
    try:
        settings = settings_from_flags()
    except ValueError:
        raise app.UsageError(f"--seeds must be integers. Received: {FLAGS.seeds}") from None
    methods = list(FLAGS.methods)
    unknown = sorted(set(methods) - set(config_lib.METHODS))
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; choose from {list(config_lib.METHODS)}.")
    output_dir = FLAGS.output_dir or os.path.join("runs", f"reproduce-{FLAGS.config}")
    os.makedirs(output_dir, exist_ok=True)
    command = " ".join(["python", "scripts/reproduce_curvature.py", *sys.argv[1:]])
    try:
        configs = make_configs(methods, settings, output_dir)
        comparison = experiments.compare(
            configs,
            metadata={"settings": settings, "methods": methods, "command": command},
            progress=lambda line: print(line, flush=True),
        )
    except (
        experiments.ConfigError,
        experiments.data.DatasetUnavailableError,
        ImportError,
    ) as e:
        sys.exit(f"reproduce_curvature.py: error: {e}")
    rows, effects, figures = summarise(comparison, configs, settings, methods, output_dir)
    wall = time.perf_counter() - start
    text = markdown(rows, effects, figures, settings, command, wall)
    with open(os.path.join(output_dir, "reproduce.md"), "w") as f:
        f.write(f"# Curvature reproduction: {FLAGS.config}\n\n{text}")
    results_lib.write_json(
        os.path.join(output_dir, "reproduce.json"),
        {
            "config": FLAGS.config,
            "settings": settings,
            "methods": methods,
            "rows": rows,
            "effects": effects,
            "figures": figures,
            "command": command,
            "wall_time_s": wall,
            "final_matvecs": FLAGS.final_matvecs,
            "trace_matvecs": FLAGS.trace_matvecs,
            "versions": comparison["versions"],
            "device": comparison["device"],
        },
    )
    print(text, flush=True)
    print(json.dumps({"output_dir": output_dir}))


if __name__ == "__main__":
    app.run(main)
