"""Comparisons of methods over seeds: what `scripts/compare.py` does."""

import os

import keras
import numpy as np

from keras_eigensam.experiments import curvature
from keras_eigensam.experiments import results as results_lib
from keras_eigensam.experiments import runner
from keras_eigensam.experiments import strategies
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments.config import TrainConfig
from keras_eigensam.experiments.config import argument_strings
from keras_eigensam.experiments.config import method_label
from keras_eigensam.experiments.config import run_name
from keras_eigensam.methods import registry


def compare(configs, *, strategy=None, metadata=None, progress=None):
    """Runs every config of `configs` and tabulates the results by method.

    Each config is a `runner.run` in its own run directory (so finished runs
    are not trained again); build them with `configs_for_methods`. Runs of
    the same method are grouped, in the order methods first appear. When the
    methods share their seeds, the seeds are paired: with the same seed
    every method starts from the same weights and sees the batches in the
    same order, so `delta_vs_first` (the mean and spread over seeds of the
    per-seed difference in final test accuracy from the first method) is
    less noisy than the difference of the means.

    Args:
        configs: A list of `TrainConfig`s.
        strategy: A strategy for all runs; `None` builds the first config's
            `strategy` once. Defaults to `None`.
        metadata: Stored in every run's results and in the comparison.
            Defaults to `None`.
        progress: Called with a one-line summary after every run (e.g.
            `print`), or `None`. Defaults to `None`.

    Returns:
        A dict with `rows` (one per method: `method`, `method_args` (its
        `config.method_label`: `rho` and the arguments not at their
        default), `seeds`, mean and standard deviation over the runs of the
        final and best test accuracy, the final test and train loss and the
        training time, `delta_vs_first` where seeds pair up, the per-seed
        final accuracies and the run directories), `first_method`,
        `curvature_plot` (with `curvature=True` in every config:
        `curvature.png` in the first config's `output_dir`, one line per
        method, its first seed's run; else `None`), `runs` (every run's
        results), `metadata`, `versions` and `device`.
    """
    if not configs:
        raise ConfigError("`configs` must hold at least one TrainConfig. Received: []")
    if strategy is None:
        strategy = strategies.make_strategy(configs[0].strategy, tpu=configs[0].tpu)
    by_method = {}
    labels = {}
    for index, config in enumerate(configs, start=1):
        keras.utils.clear_session()
        stored = results_lib.read_json(
            os.path.join(
                config.output_dir,
                config.run_name or run_name(config),
                results_lib.RESULTS_FILE,
            )
        )
        results = runner.run(config, strategy=strategy, metadata=metadata)
        by_method.setdefault(config.method, {})[config.seed] = results
        labels.setdefault(config.method, method_label(config))
        if progress is not None:
            reused = (
                " (finished before: its stored results, not trained again)"
                if stored is not None and stored == results
                else f", {results['train_time_s']:.1f} s"
            )
            progress(
                f"[{index}/{len(configs)}] {results['run_name']}: final test accuracy "
                f"{results['final_test_accuracy']:.4f}{reused}"
            )
    first = next(iter(by_method))
    curvature_plot = None
    if all(config.curvature for config in configs):
        # One line per method: its run with the first seed.
        first_runs = {
            method: next(iter(runs.values())) for method, runs in by_method.items()
        }
        plot_name = curvature.plot_runs(
            {method: r["run_dir"] for method, r in first_runs.items()},
            os.path.join(configs[0].output_dir, curvature.PLOT_FILE),
            next(iter(first_runs.values()))["steps_per_epoch"],
            title=f"{configs[0].dataset}, {configs[0].model}: seed {configs[0].seed}",
        )
        curvature_plot = os.path.join(configs[0].output_dir, plot_name)
    rows = []
    for method, runs in by_method.items():
        results = list(runs.values())
        final = np.array([r["final_test_accuracy"] for r in results], dtype=float)
        paired = [seed for seed in runs if seed in by_method[first]]
        delta = [
            runs[seed]["final_test_accuracy"]
            - by_method[first][seed]["final_test_accuracy"]
            for seed in paired
        ]
        rows.append(
            {
                "method": method,
                "method_args": labels[method],
                "seeds": list(runs),
                "final_test_accuracy": _mean_std(final),
                "best_test_accuracy": _mean_std(
                    [r["best_test_accuracy"] for r in results]
                ),
                "final_test_loss": _mean_std([r["final_test_loss"] for r in results]),
                "final_train_loss": _mean_std([r["final_train_loss"] for r in results]),
                "train_time_s": _mean_std([r["train_time_s"] for r in results]),
                "delta_vs_first": _mean_std(delta) if delta else None,
                # With curvature=True: λ_max of the loss on the fixed probe
                # set after the last epoch (inference mode, every method
                # measured alike).
                "final_top_eigenvalue": _final_metric(results, PROBE_EIGENVALUE),
                "per_seed_final_test_accuracy": final.tolist(),
                "run_dirs": [r["run_dir"] for r in results],
            }
        )
    return {
        "rows": rows,
        "first_method": first,
        "curvature_plot": curvature_plot,
        "runs": [r for runs in by_method.values() for r in runs.values()],
        "metadata": metadata or {},
        "versions": results_lib.versions(),
        "device": results_lib.device_info(strategy),
    }


#: The probe monitor's top eigenvalue in a run's `final_metrics`.
PROBE_EIGENVALUE = "hessian_top_eigenvalue"


def _final_metric(results, key):
    values = [r["final_metrics"].get(key) for r in results]
    if any(v is None for v in values):
        return None
    return _mean_std(values)


def configs_for_methods(methods, seeds, method_args=None, **settings):
    """One `TrainConfig` per method and seed, from settings shared by all.

    Each method gets the keys of `method_args` its constructor takes
    (`split_method_args`), so
    `configs_for_methods(["sgd", "asam", "eigensam"], [0], {"rho": 0.1, "alpha": 0.1})`
    gives SGD neither, ASAM `rho` and Eigen-SAM both; a key no method takes
    is an error. `perturbation_scope` is likewise left out for `"sgd"`.
    """
    per_method = split_method_args(methods, method_args or {})
    configs = []
    for method in methods:
        fields = dict(settings, method=method, method_args=per_method[method])
        if method == "sgd":
            fields.pop("perturbation_scope", None)
        configs += [TrainConfig(**fields, seed=seed) for seed in seeds]
    return configs


def split_method_args(methods, method_args):
    """`{method: the part of method_args it takes}` for each of `methods`.

    Lets one set of arguments serve several methods (`compare.py`'s
    `--method_args`): each method gets the keys its constructor takes
    (`registry.split_arguments`), `"sgd"` none.

    Raises:
        ConfigError: if no method of `methods` takes some key, naming the
            keys and the ones the methods take.
    """
    registered = [method for method in methods if method != "sgd"]
    if method_args and not registered:
        raise ConfigError(
            "method='sgd' (the base optimizer alone) takes no method "
            f"arguments: leave them unset. Received: {dict(method_args)}"
        )
    try:
        split = registry.split_arguments(registered, method_args)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {method: split.get(method, {}) for method in methods}


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


def comparison_markdown(comparison):
    """The comparison as a markdown table (accuracies in %)."""
    first = comparison["first_method"]
    seeds = sorted({seed for row in comparison["rows"] for seed in row["seeds"]})
    curvature = any(row.get("final_top_eigenvalue") for row in comparison["rows"])
    lines = [
        "| method | method args | final test acc. (%) | best test acc. (%) "
        f"| Δ vs {first} (pts) | final test loss |"
        + (" final λ_max (probe) |" if curvature else "")
        + " train time (s) |",
        "|---|---|---|---|---|---|" + ("---|" if curvature else "") + "---|",
    ]
    for row in comparison["rows"]:
        args = ", ".join(argument_strings(row["method_args"]))
        loss = row["final_test_loss"]
        cells = [
            row["method"],
            args or "–",
            _pct(row["final_test_accuracy"]),
            _pct(row["best_test_accuracy"]),
            _pct(row["delta_vs_first"], signed=True),
            f"{loss['mean']:.4f} ± {loss['std']:.4f}",
        ]
        if curvature:
            eigenvalue = row.get("final_top_eigenvalue")
            cells.append(
                f"{eigenvalue['mean']:.3g} ± {eigenvalue['std']:.2g}" if eigenvalue else "–"
            )
        cells.append(f"{row['train_time_s']['mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}; "
        f"Δ is the per-seed difference from {first} (same initial weights and "
        "batch order), averaged."
        + (
            " λ_max: the largest Hessian eigenvalue of the loss on the fixed "
            "probe set after the last epoch (inference mode)."
            if curvature
            else ""
        )
    )
    return "\n".join(lines) + "\n"


def _pct(stats, signed=False):
    if stats is None:
        return "–"
    sign = "+" if signed else ""
    return f"{100 * stats['mean']:{sign}.2f} ± {100 * stats['std']:.2f}"
