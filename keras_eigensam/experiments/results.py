"""What a run leaves on disk: its files, `results.json`, versions and device."""

import csv
import dataclasses
import json
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from keras_eigensam.experiments import strategies

#: The keys of `results.json` (see `runner.run`).
RESULT_KEYS = (
    "run_name",
    "run_dir",
    "dataset",
    "model",
    "method",
    "method_config",
    "final_test_accuracy",
    "best_test_accuracy",
    "best_epoch",
    "final_test_loss",
    "final_train_loss",
    "final_train_accuracy",
    "final_metrics",
    "num_params",
    "num_trainable_params",
    "epochs",
    "epochs_completed",
    "initial_epoch",
    "epochs_run",
    "steps_per_epoch",
    "wall_time_s",
    "fit_time_s",
    "train_time_s",
    "first_epoch_time_s",
    "steps_per_second",
    "versions",
    "device",
    "config",
    "metadata",
    "files",
)

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"


def results(
    *,
    config,
    name,
    run_dir,
    history_rows,
    net,
    method_config,
    strategy,
    steps_per_epoch,
    initial_epoch,
    epochs_run,
    epoch_seconds,
    fit_seconds,
    wall_seconds,
    metadata,
):
    """The dict `runner.run` writes to `results.json` (keys: `RESULT_KEYS`).

    `method_config` is what the built method reports of its constructor
    arguments (`None` for SGD), a check on `config.method_args`.
    """
    last = history_rows[-1] if history_rows else {}
    test_accuracy = [row.get("val_accuracy") for row in history_rows]
    best_index = (
        int(np.nanargmax(np.array(test_accuracy, dtype=float)))
        if history_rows
        else None
    )
    # The first epoch of a process includes tracing (and XLA compilation).
    steady = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    return {
        "run_name": name,
        "run_dir": os.path.abspath(run_dir),
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "method_config": method_config,
        "final_test_accuracy": last.get("val_accuracy"),
        "best_test_accuracy": None if best_index is None else test_accuracy[best_index],
        "best_epoch": None if best_index is None else best_index + 1,
        "final_test_loss": last.get("val_loss"),
        "final_train_loss": last.get("loss"),
        "final_train_accuracy": last.get("accuracy"),
        "final_metrics": {k: v for k, v in last.items() if k != "epoch"},
        "num_params": int(net.count_params()),
        "num_trainable_params": int(
            sum(int(np.prod(v.shape)) for v in net.trainable_weights)
        ),
        "epochs": config.epochs,
        "epochs_completed": len(history_rows),
        "initial_epoch": initial_epoch,
        "epochs_run": epochs_run,
        "steps_per_epoch": steps_per_epoch,
        "wall_time_s": wall_seconds,
        "fit_time_s": fit_seconds,
        "train_time_s": float(sum(epoch_seconds)),
        "first_epoch_time_s": epoch_seconds[0] if epoch_seconds else None,
        "steps_per_second": (
            steps_per_epoch * len(steady) / sum(steady)
            if steady and sum(steady) > 0
            else None
        ),
        "versions": versions(),
        "device": device_info(strategy),
        "config": dataclasses.asdict(config),
        "metadata": metadata or {},
        "files": {
            "history": HISTORY_FILE,
            "tensorboard": TENSORBOARD_DIR,
            "backup": BACKUP_DIR,
            "model": MODEL_FILE,
            "config": CONFIG_FILE,
        },
    }


def versions():
    """Versions of Python, TensorFlow, Keras, NumPy and keras_eigensam."""
    import keras_eigensam

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "keras_eigensam": keras_eigensam.__version__,
    }


def device_info(strategy):
    """The strategy, its replicas and the hardware they run on."""
    gpu_names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            gpu_names.append(
                tf.config.experimental.get_device_details(gpu).get("device_name")
            )
        except (ValueError, RuntimeError):
            gpu_names.append(gpu.name)
    return {
        "strategy": type(strategy).__name__,
        # How it was found: `strategies.describe`.
        "strategy_found": strategies.describe(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "num_workers": strategies.num_workers(strategy),
        "devices": strategies.replica_devices(strategy),
        "gpus": gpu_names,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def cpu_name():
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_json(path):
    """The JSON value in `path`, or `None` if there is no such file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_json(path, value):
    """Writes `value` as indented JSON, atomically (write, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(to_json(value))
    os.replace(tmp, path)


def to_json(value):
    """`value` as the indented JSON text `write_json` writes."""
    return json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def backed_up_epoch(backup_dir):
    """Epochs finished according to `BackupAndRestore`'s metadata (0 if none)."""
    metadata = read_json(os.path.join(backup_dir, "training_metadata.json"))
    return int(metadata["epoch"]) if metadata else 0


def read_history(path):
    """`history.csv` as a list of dicts of floats (`None` for missing)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    return [{k: _float_or_none(v) for k, v in row.items()} for row in rows]


def _float_or_none(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def truncate_history(path, num_epochs):
    """Drops the rows of epochs `>= num_epochs` from a `history.csv`."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    if not lines:
        return
    kept = [lines[0]] + [
        line for line in lines[1:] if int(line.split(",", 1)[0]) < num_epochs
    ]
    if len(kept) != len(lines):
        with open(path, "w", newline="") as f:
            f.writelines(kept)
