"""Tests of `keras_eigensam.training`, in-process (scripts: test_scripts.py)."""

import ast
import csv
import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_eigensam as ks
from keras_eigensam import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    return training.TrainConfig(**settings)


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "method, rho", [("sam", 0.05), ("asam", 0.5), ("eigensam", 0.05), ("xsam", 0.05)]
)
def test_default_rho_per_method(method, rho):
    config = training.TrainConfig(method=method).resolved()
    assert config.rho == rho
    assert config.perturbation_scope == "replica"
    assert training.make_method(config).rho == rho


def test_defaults_resolve_per_optimizer_and_method():
    assert training.TrainConfig(optimizer="sgd").resolved().learning_rate == 0.1
    assert training.TrainConfig(optimizer="adamw").resolved().learning_rate == 1e-3
    sgd = training.TrainConfig(method="sgd").resolved()
    assert sgd.rho is None and sgd.perturbation_scope is None
    eigensam = training.TrainConfig(method="eigensam").resolved()
    assert (eigensam.alpha, eigensam.refresh_every, eigensam.power_iterations) == (
        0.2,
        100,
        5,
    )
    xsam = training.TrainConfig(method="xsam").resolved()
    assert (xsam.refresh_every, xsam.correction) == (5, "reference")
    assert training.TrainConfig(method="asam").resolved().eta == 0.01


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(method="sgd", rho=0.1),
            "`rho` is a setting of method sam/asam/eigensam/xsam only",
        ),
        (
            dict(method="sam", alpha=0.1),
            "`alpha` is a setting of method eigensam/xsam only",
        ),
        (dict(method="sam", refresh_every=5), "`refresh_every` is a setting of method"),
        (dict(method="eigensam", correction="projection"), "`correction` is a setting"),
        (dict(rho=-0.1), r"`rho` must be a float >= 0.0. Received: rho=-0.1"),
        (dict(dataset="imagenet"), "`dataset` must be one of"),
        (dict(batch_size=0), "`batch_size` must be an integer >= 1"),
        (dict(epochs=2, warmup_epochs=3), "`warmup_epochs` must not exceed `epochs`"),
        (dict(strategy="tpu"), "strategy='tpu' needs the TPU's address"),
        (dict(jit_compile="yes"), "`jit_compile` must be True, False or None"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, message):
    with pytest.raises(
        training.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        training.TrainConfig(**kwargs)


def test_sam_accepts_eigen_settings_with_curvature():
    config = training.TrainConfig(
        method="sam", curvature=True, refresh_every=7
    ).resolved()
    method = training.make_method(config)
    assert method.eigenvector is not None
    assert method.eigenvector.refresh_every == 7


def test_make_method_builds_each_method():
    assert training.make_method(training.TrainConfig(method="sgd")) is None
    sam = training.make_method(training.TrainConfig(method="sam", rho=0.1))
    assert type(sam) is ks.SAM and sam.rho == 0.1 and sam.eigenvector is None
    asam = training.make_method(training.TrainConfig(method="asam", eta=0.02))
    assert type(asam) is ks.ASAM and asam.eta == 0.02
    eigensam = training.make_method(
        training.TrainConfig(
            method="eigensam", alpha=0.1, refresh_every=10, power_iterations=3
        )
    )
    assert type(eigensam) is ks.EigenSAM and eigensam.alpha == 0.1
    assert (
        eigensam.eigenvector.refresh_every,
        eigensam.eigenvector.power_iterations,
    ) == (10, 3)
    xsam = training.make_method(
        training.TrainConfig(method="xsam", correction="projection")
    )
    assert type(xsam) is ks.XSAM and xsam.correction == "projection"


def test_run_name_shows_hyperparameters():
    assert (
        training.run_name(training.TrainConfig())
        == "digits-mlp-sam-rho0.05-lr0.1-bs64-e10-s0"
    )
    assert (
        training.run_name(training.TrainConfig(method="sgd"))
        == "digits-mlp-sgd-lr0.1-bs64-e10-s0"
    )
    assert (
        training.run_name(
            training.TrainConfig(
                method="xsam", refresh_every=1, correction="projection"
            )
        )
        == "digits-mlp-xsam-rho0.05-a0.2-lr0.1-bs64-e10-s0-k1-projection"
    )
    name = training.run_name(
        training.TrainConfig(
            optimizer="adamw",
            weight_decay=0.01,
            schedule="constant",
            warmup_epochs=1,
            label_smoothing=0.1,
            augment="none",
            perturbation_scope="global",
            mixed_precision=True,
            curvature=True,
            max_steps_per_epoch=3,
        )
    )
    assert name == (
        "digits-mlp-sam-rho0.05-lr0.001-bs64-e10-s0-adamw-wd0.01-constant-wu1-ls0.1"
        "-aug-none-scope-global-mp-curv-steps3"
    )


def test_settings_exclude_what_does_not_change_the_run():
    a = training.TrainConfig(strategy="mirrored", steps_per_execution=4, verbose=0)
    b = training.TrainConfig(output_dir="elsewhere", jit_compile=False)
    assert a.settings() == b.settings()
    assert training.TrainConfig(seed=1).settings() != b.settings()


# ---------------------------------------------------------------- optimizer


def test_cosine_schedule_with_and_without_warmup():
    # rtol: float32 arithmetic of the Keras schedule.
    cosine = training.learning_rate_schedule(
        training.TrainConfig(epochs=4), steps_per_epoch=10
    )
    np.testing.assert_allclose(
        [float(cosine(s)) for s in (0, 20, 40)], [0.1, 0.05, 0.0], rtol=1e-5, atol=1e-7
    )
    warm = training.learning_rate_schedule(
        training.TrainConfig(epochs=4, warmup_epochs=1), steps_per_epoch=10
    )
    np.testing.assert_allclose(
        [float(warm(s)) for s in (0, 5, 10, 25, 40)],
        [0.0, 0.05, 0.1, 0.05, 0.0],
        rtol=1e-5,
        atol=1e-7,
    )
    constant = training.learning_rate_schedule(
        training.TrainConfig(epochs=4, schedule="constant", warmup_epochs=1),
        steps_per_epoch=10,
    )
    np.testing.assert_allclose(
        [float(constant(s)) for s in (0, 5, 10, 40)],
        [0.0, 0.05, 0.1, 0.1],
        rtol=1e-5,
        atol=1e-7,
    )
    assert training.learning_rate_schedule(
        training.TrainConfig(schedule="constant"), steps_per_epoch=10
    ) == pytest.approx(0.1)


def test_weight_decay_is_coupled_for_sgd_and_decoupled_on_kernels_for_adamw():
    assert training.architecture_kwargs(training.TrainConfig(weight_decay=1e-3)) == {
        "weight_decay": 1e-3
    }
    adamw = training.TrainConfig(
        optimizer="adamw", weight_decay=0.1, schedule="constant"
    )
    assert training.architecture_kwargs(adamw) == {"weight_decay": 0.0}
    optimizer = training.make_optimizer(adamw, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    layer = keras.layers.Dense(2, bias_initializer="ones")
    layer.build((None, 3))
    kernel, bias = np.array(layer.kernel), np.array(layer.bias)
    # With zero gradients AdamW's step is the decay alone: w ← w (1 − lr·wd).
    optimizer.apply(
        [tf.zeros_like(kernel), tf.zeros_like(bias)], layer.trainable_variables
    )
    np.testing.assert_allclose(
        np.array(layer.kernel), kernel * (1 - 1e-3 * 0.1), rtol=1e-6
    )
    np.testing.assert_allclose(np.array(layer.bias), bias, rtol=0, atol=0)
    sgd = training.make_optimizer(
        training.TrainConfig(momentum=0.8), steps_per_epoch=10
    )
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.8


# ---------------------------------------------------------------- distribution


def test_split_cpu_after_tensorflow_started():
    # conftest split the CPU in two before TensorFlow started.
    training.split_cpu(2)  # the same split: nothing to do
    with pytest.raises(training.ConfigError, match="before TensorFlow initialises"):
        training.split_cpu(3)


def test_default_strategy_is_one_device():
    strategy = training.make_strategy("default")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert isinstance(training.make_strategy("auto"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(training.ConfigError, match="`strategy` must be one of"):
        training.make_strategy("horovod")


def test_chief_is_worker_zero_or_the_chief_task():
    def fake(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert training.worker_info(fake(workers, "worker", 0)) == (True, 0)
    assert training.worker_info(fake(workers, "worker", 1)) == (False, 1)
    with_chief = dict(workers, chief=["127.0.0.1:3"])
    assert training.worker_info(fake(with_chief, "chief", 0)) == (True, 0)
    assert training.worker_info(fake(with_chief, "worker", 0)) == (False, 0)
    assert training.worker_info(training.make_strategy("default")) == (True, 0)


def test_batch_size_must_divide_over_replicas(tmp_path, mirrored_strategy):
    with pytest.raises(
        training.ConfigError, match="pass a multiple of 2, e.g. batch_size=62"
    ):
        training.run(tiny(tmp_path, batch_size=63), strategy=mirrored_strategy)
    assert not os.listdir(tmp_path)  # nothing was written


# ---------------------------------------------------------------- a run


def test_run_writes_the_run_directory_and_reuses_a_finished_run(tmp_path):
    config = tiny(tmp_path, method="sgd")
    results = training.run(config, metadata={"flags": {"method": "sgd"}})
    run_dir = tmp_path / training.run_name(config)
    assert set(training.RESULT_KEYS) == set(results)
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
    assert results["versions"]["keras_eigensam"] == ks.__version__
    assert results["device"]["num_replicas"] == 1

    # Finished: the stored results come back, nothing is trained.
    again = training.run(config)
    assert again == on_disk

    # Other settings in the same directory are refused.
    other = tiny(
        tmp_path, method="sgd", momentum=0.5, run_name=training.run_name(config)
    )
    with pytest.raises(training.ConfigError, match=r"momentum: 0.9 there, 0.5 now"):
        training.run(other)


def test_curvature_monitors_and_plot(tmp_path):
    config = tiny(
        tmp_path, method="eigensam", refresh_every=2, curvature=True, epochs=1
    )
    results = training.run(config)
    run_dir = tmp_path / training.run_name(config)
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for key in (
        "hessian_top_eigenvalue",
        "sharpness_ascent",
        "sharpness_average",
        "sharpness_worst_case",
        "top_eigenvalue",
        "eigen_alignment",
    ):
        assert all(np.isfinite(float(row[key])) for row in rows), key
    assert float(rows[-1]["hessian_top_eigenvalue"]) > 0
    with open(run_dir / "alignment" / "alignment.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [1, 2, 3]
    assert results["files"]["curvature_plot"] == "curvature.png"
    assert (run_dir / "curvature.png").stat().st_size > 0


def test_a_run_does_not_depend_on_earlier_runs_in_the_process(tmp_path):
    # The global seed enters the weights and the shuffling: each run sets its own.
    first = training.run(tiny(tmp_path / "a", method="sgd", epochs=1))
    training.run(tiny(tmp_path / "b", method="sgd", epochs=1, seed=1))
    again = training.run(tiny(tmp_path / "c", method="sgd", epochs=1))
    assert again["final_train_loss"] == first["final_train_loss"]
    assert again["final_test_loss"] == first["final_test_loss"]


def test_run_restores_the_global_dtype_policy(tmp_path):
    training.run(
        tiny(
            tmp_path,
            method="sgd",
            mixed_precision=True,
            epochs=1,
            max_steps_per_epoch=1,
        )
    )
    assert keras.config.dtype_policy().name == "float32"


def test_history_rows_after_the_backup_are_dropped(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    training._truncate_history(str(path), 2)
    assert path.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"


def test_compare_pairs_seeds_and_drops_unused_settings(tmp_path):
    configs = training.configs_for_methods(
        ["sgd", "sam"],
        [0],
        rho=0.1,
        output_dir=str(tmp_path),
        epochs=1,
        max_steps_per_epoch=2,
        augment="none",
        verbose=0,
    )
    assert [(c.method, c.rho) for c in configs] == [("sgd", None), ("sam", 0.1)]
    lines = []
    comparison = training.compare(configs, progress=lines.append)
    assert len(lines) == 2 and lines[0].startswith("[1/2] digits-mlp-sgd")
    sgd, sam = comparison["rows"]
    assert (sgd["method"], sam["method"], sam["rho"]) == ("sgd", "sam", 0.1)
    assert sgd["delta_vs_first"] == {"mean": 0.0, "std": 0.0}
    expected = (
        comparison["runs"][1]["final_test_accuracy"]
        - comparison["runs"][0]["final_test_accuracy"]
    )
    assert sam["delta_vs_first"]["mean"] == pytest.approx(expected)
    table = training.comparison_markdown(comparison)
    assert table.splitlines()[2].startswith("| sgd | – | ")
    assert table.splitlines()[3].startswith("| sam | 0.1 | ")


def test_script_choices_match_the_library():
    """The scripts name their enum choices without importing TensorFlow."""
    for script in ("train.py", "compare.py"):
        with open(os.path.join(REPO, "scripts", script)) as f:
            tree = ast.parse(f.read())
        choices = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "DEFINE_enum"
            ):
                choices[node.args[0].value] = node.args[2]
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
                choices[node.targets[0].id] = node.value

        def values(node):
            if isinstance(node, ast.Name):
                node = choices[node.id]
            return {element.value for element in node.elts}

        assert values(choices["dataset"]) == set(ks.data.NAMES)
        assert values(choices["model"]) == set(ks.architectures.NAMES)
        assert values(choices["augment"]) == set(ks.data.AUGMENTATIONS)
        assert values(choices["METHODS"]) == set(training.METHODS)
        assert values(choices["optimizer"]) == set(training.OPTIMIZERS)
        assert values(choices["strategy"]) == set(training.STRATEGIES)
