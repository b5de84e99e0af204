"""Tests of `keras_eigensam.experiments.config`."""

import pytest

import keras_eigensam as ks
from keras_eigensam.experiments import config
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments.config import TrainConfig
from keras_eigensam.methods import registry


def test_choices_come_from_their_modules():
    assert config.METHODS == ("sgd",) + registry.names()
    assert config.DATASETS == ks.experiments.data.NAMES
    assert config.MODELS == ks.experiments.architectures.NAMES


@pytest.mark.parametrize("method", registry.names())
def test_method_args_resolve_to_the_constructor_defaults(method):
    resolved = TrainConfig(method=method, seed=3).resolved()
    expected = registry.defaults(method)
    if "seed" in expected:
        expected["seed"] = 3  # the run's seed
    assert resolved.method_args == expected
    assert resolved.perturbation_scope == "replica"  # SharpnessAwareModel's


def test_defaults_resolve_per_optimizer_and_method():
    assert TrainConfig(optimizer="sgd").resolved().learning_rate == 0.1
    assert TrainConfig(optimizer="adamw").resolved().learning_rate == 1e-3
    sgd = TrainConfig(method="sgd").resolved()
    assert sgd.method_args == {} and sgd.perturbation_scope is None
    eigensam = TrainConfig(method="eigensam").resolved().method_args
    assert (eigensam["rho"], eigensam["alpha"], eigensam["refresh_every"]) == (0.05, 0.2, 100)
    xsam = TrainConfig(method="xsam").resolved().method_args
    assert (xsam["refresh_every"], xsam["correction"]) == (5, "reference")
    assert TrainConfig(method="asam").resolved().method_args == {"eta": 0.01, "rho": 0.5}


def test_given_method_args_override_the_defaults_and_are_copied():
    given = {"refresh_every": 10, "alpha": 0.1}
    c = TrainConfig(method="eigensam", method_args=given)
    assert list(c.method_args) == ["alpha", "refresh_every"]  # sorted copy
    given["alpha"] = 0.5
    assert c.method_args["alpha"] == 0.1
    resolved = c.resolved().method_args
    assert (resolved["alpha"], resolved["refresh_every"], resolved["rho"]) == (0.1, 10, 0.05)
    assert c.resolved().resolved() == c.resolved()


def test_curvature_makes_sam_track_the_eigenvector():
    assert "tracker" not in TrainConfig(method="sam").resolved().method_args
    sam = TrainConfig(method="sam", curvature=True, method_args={"refresh_every": 7})
    assert sam.resolved().method_args["tracker"] is True
    # A method that always tracks gets nothing more; any other is asked to.
    assert config.eigenvector_tracking_args("eigensam") == {}
    assert config.eigenvector_tracking_args("asam") == {"tracker": True}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(method="sgd", method_args={"rho": 0.1}),
            "method='sgd' (the base optimizer alone) takes no `method_args`",
        ),
        (
            dict(method="sgd", perturbation_scope="global"),
            "takes no `perturbation_scope`: leave it unset",
        ),
        (
            dict(method="sam", method_args={"alpha": 0.1}),
            "Method 'sam' (SAM) takes no argument `alpha`; its arguments are "
            "['curvature', 'hessian_batch_size', 'hessian_microbatch_size', 'hessian_training', 'hvp_mode', 'interval', 'lanczos_basis_dtype', 'num_matvecs', "
            "'perturbed_variables', 'refresh_every', 'rho', 'seed', 'track_eigen', "
            "'tracker', 'which']. Received: alpha=0.1",
        ),
        (dict(method="asam", method_args={"rho": -0.1}), "`rho` must be a float >= 0.0"),
        (
            dict(method="xsam", method_args={"correction": "other"}),
            "`correction` must be one of ['projection', 'reference']",
        ),
        (
            dict(method="sam", method_args={"rho": [0.1]}),
            "`method_args` values must be numbers, strings, booleans or None",
        ),
        (dict(method_args=[("rho", 0.1)]), "`method_args` must be a dict"),
        (dict(method="adam"), "`method` must be one of"),
        (dict(perturbation_scope="local"), "`perturbation_scope` must be one of"),
        (dict(dataset="imagenet"), "`dataset` must be one of"),
        (dict(batch_size=0), "`batch_size` must be an integer >= 1"),
        (dict(epochs=2, warmup_epochs=3), "`warmup_epochs` must not exceed `epochs`"),
        (dict(strategy="tpu", tpu=""), "`tpu` must be the TPU's address"),
        (dict(jit_compile="yes"), "`jit_compile` must be True, False or None"),
        (dict(curvature=1), "`curvature` must be a bool"),
        (dict(download="yes"), "`download` must be a bool. Received: download='yes'"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert message in str(info.value)


def test_run_name_shows_hyperparameters():
    assert config.run_name(TrainConfig()) == "digits-mlp-sam-rho=0.05-lr0.1-bs64-e10-s0"
    assert config.run_name(TrainConfig(method="sgd")) == "digits-mlp-sgd-lr0.1-bs64-e10-s0"
    assert config.run_name(TrainConfig(method="asam")) == (
        "digits-mlp-asam-rho=0.5-lr0.1-bs64-e10-s0"
    )
    assert config.run_name(
        TrainConfig(method="xsam", method_args={"refresh_every": 1, "correction": "projection"})
    ) == "digits-mlp-xsam-correction=projection-refresh_every=1-rho=0.05-lr0.1-bs64-e10-s0"
    name = config.run_name(
        TrainConfig(
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
        "digits-mlp-sam-rho=0.05-lr0.001-bs64-e10-s0-adamw-wd0.01-constant-wu1-ls0.1"
        "-aug-none-scope-global-mp-curv-steps3"
    )


def test_different_method_args_never_share_a_run_directory():
    names = {
        config.run_name(TrainConfig(method="eigensam", method_args=args))
        for args in (
            {},
            {"alpha": 0.1},
            {"alpha": 0.1, "refresh_every": 10},
            {"hessian_training": True},
            {"hvp_mode": "forward_over_backward"},
            {"seed": 7},
        )
    }
    assert len(names) == 6
    # A default given explicitly is the same run.
    explicit = TrainConfig(method="eigensam", method_args={"alpha": 0.2})
    assert config.run_name(explicit) == config.run_name(TrainConfig(method="eigensam"))
    assert explicit.settings() == TrainConfig(method="eigensam").settings()


def test_settings_exclude_what_does_not_change_the_run():
    a = TrainConfig(strategy="mirrored", steps_per_execution=4, verbose=0)
    b = TrainConfig(output_dir="elsewhere", jit_compile=False, download=True)
    assert a.settings() == b.settings()
    assert TrainConfig(seed=1).settings() != b.settings()
    assert TrainConfig(method_args={"rho": 0.1}).settings() != b.settings()
