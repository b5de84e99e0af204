"""Tests of `keras_eigensam.experiments.runner`, in-process (scripts:
tests/test_scripts.py)."""

import csv
import json
import os

import keras
import pytest
import tensorflow as tf

import keras_eigensam as ks
from keras_eigensam.experiments import results as results_lib
from keras_eigensam.experiments import runner
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments.config import TrainConfig
from keras_eigensam.experiments.config import run_name
from keras_eigensam.methods import registry


def tiny(tmp_path, **kwargs):
    """A run of a few steps, without augmentation."""
    settings = dict(
        output_dir=str(tmp_path),
        epochs=2,
        max_steps_per_epoch=3,
        augment="none",
        verbose=0,
    )
    settings.update(kwargs)
    return TrainConfig(**settings)


def test_make_method_builds_the_registered_class_with_the_config_arguments():
    assert runner.make_method(TrainConfig(method="sgd")) is None
    for name in registry.names():
        # GSAM's radius is `rho_max` (and `rho_min`), the others' `rho`.
        key = "rho_max" if name == "gsam" else "rho"
        method = runner.make_method(TrainConfig(method=name, method_args={key: 0.1}))
        assert type(method) is registry.get(name).cls and method.rho == 0.1
    sam = runner.make_method(TrainConfig(method="sam"))
    assert sam.tracker is None
    eigensam = runner.make_method(
        TrainConfig(method="eigensam", seed=4,
                    method_args={"alpha": 0.1, "refresh_every": 10, "num_matvecs": 3})
    )
    assert eigensam.alpha == 0.1
    assert (
        eigensam.tracker.refresh_every,
        eigensam.tracker.num_matvecs,
        eigensam.tracker.seed,  # the run's
    ) == (10, 3, 4)
    tracking = runner.make_method(
        TrainConfig(method="sam", curvature=True, seed=2, method_args={"refresh_every": 7})
    )
    assert (tracking.tracker.refresh_every, tracking.tracker.seed) == (7, 2)
    # Any method tracks when asked, ASAM too.
    asam = runner.make_method(TrainConfig(method="asam", curvature=True))
    assert asam.tracker is not None


def test_batch_size_must_divide_over_replicas(tmp_path, mirrored_strategy):
    with pytest.raises(ConfigError, match="pass a multiple of 2, e.g. batch_size=62"):
        runner.run(tiny(tmp_path, batch_size=63), strategy=mirrored_strategy)
    assert not os.listdir(tmp_path)  # nothing was written


def test_run_writes_the_run_directory_and_reuses_a_finished_run(tmp_path):
    config = tiny(tmp_path, method="sgd")
    results = runner.run(config, metadata={"flags": {"method": "sgd"}})
    run_dir = tmp_path / run_name(config)
    assert set(results_lib.RESULT_KEYS) == set(results)
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for name in (
        "config.json",
        "history.csv",
        "model.keras",
        "backup/latest.weights.h5",
    ):
        assert (run_dir / name).exists(), name
    assert any(
        "events.out.tfevents" in f
        for _, _, files in os.walk(run_dir / "tensorboard")
        for f in files
    )
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert results["final_test_accuracy"] == pytest.approx(
        float(rows[-1]["val_accuracy"])
    )
    assert results["best_test_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert (
        results["epochs_completed"],
        results["initial_epoch"],
        results["epochs_run"],
    ) == (2, 0, 2)
    assert results["steps_per_epoch"] == 3
    assert results["num_params"] == 26_122  # the digits MLP (architectures docstring)
    assert results["metadata"] == {"flags": {"method": "sgd"}}
    assert results["config"]["learning_rate"] == 0.1  # resolved
    assert results["method_config"] is None
    assert results["versions"]["keras_eigensam"] == ks.__version__
    assert results["device"]["num_replicas"] == 1
    # How strategy="auto" chose: no TPU here, so one device.
    assert results["device"]["strategy_found"].startswith("no TPU ('local' (TPU VM)")

    # Finished: the stored results come back, nothing is trained.
    again = runner.run(config)
    assert again == on_disk

    # Other settings in the same directory are refused.
    other = tiny(tmp_path, method="sgd", momentum=0.5, run_name=run_name(config))
    with pytest.raises(ConfigError, match=r"momentum: 0.9 there, 0.5 now"):
        runner.run(other)


def test_results_record_the_method_arguments(tmp_path):
    config = tiny(
        tmp_path, method="xsam", method_args={"correction": "projection"},
        epochs=1, max_steps_per_epoch=1,
    )
    results = runner.run(config)
    args = results["config"]["method_args"]
    assert args == {**registry.defaults("xsam"), "correction": "projection", "seed": 0}
    # What the built method reports agrees with the config.
    assert results["method_config"] == args


def test_a_run_does_not_depend_on_earlier_runs_in_the_process(tmp_path):
    # The global seed enters the weights and the shuffling: each run sets its own.
    first = runner.run(tiny(tmp_path / "a", method="sgd", epochs=1))
    runner.run(tiny(tmp_path / "b", method="sgd", epochs=1, seed=1))
    again = runner.run(tiny(tmp_path / "c", method="sgd", epochs=1))
    assert again["final_train_loss"] == first["final_train_loss"]
    assert again["final_test_loss"] == first["final_test_loss"]


def test_run_restores_the_global_dtype_policy(tmp_path):
    runner.run(
        tiny(
            tmp_path,
            method="sgd",
            mixed_precision=True,
            epochs=1,
            max_steps_per_epoch=1,
        )
    )
    assert keras.config.dtype_policy().name == "float32"


def test_run_passes_data_dir_and_download_to_the_data(tmp_path, monkeypatch):
    calls = []

    class Loaded(Exception):
        pass

    def load(*args, **kwargs):
        calls.append(kwargs)
        raise Loaded

    monkeypatch.setattr(runner.data, "load", load)
    config = tiny(tmp_path, dataset="cifar10", data_dir="/data", download=True)
    with pytest.raises(Loaded):
        runner.run(config, strategy=tf.distribute.get_strategy())
    assert (calls[0]["data_dir"], calls[0]["download"]) == ("/data", True)
    assert not os.path.exists(tmp_path / run_name(config))
