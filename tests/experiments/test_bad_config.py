"""Bad settings of `TrainConfig`: every field.

Every field is either given one bad value here (a `ConfigError` whose
message names the field and shows the value) or listed in `ELSEWHERE` with
the test that does it; `test_every_field_is_accounted_for` keeps them
complete. The scripts map their flags onto these fields
(tests/test_script_flags.py).
"""

import dataclasses

from keras_eigensam.experiments import TrainConfig
from keras_eigensam.experiments.config import ConfigError
from tests.bad_values import assert_each_raises
from tests.bad_values import assert_tests_exist

_CONFIG_TEST = "experiments/test_config.py::test_invalid_settings_raise_config_error"

#: Fields checked by another test.
ELSEWHERE = {
    field: _CONFIG_TEST
    for field in (
        "method", "method_args", "perturbation_scope", "dataset", "batch_size", "tpu",
        "jit_compile", "curvature", "download",
    )
}

#: `field: (bad value, pattern)`.
BAD = {
    "model": ("vgg16", r"`model` must be one of .*Received: model='vgg16'"),
    "augment": ("mixup", r"`augment` must be one of .*Received: augment='mixup'"),
    "data_dir": (3, r"`data_dir` must be a path .*Received: data_dir=3"),
    "optimizer": ("adam", r"`optimizer` must be one of .*Received: optimizer='adam'"),
    "learning_rate": (0.0, r"`learning_rate` must be a float > 0.0. Received: learning_rate=0.0"),
    "momentum": (1.5, r"`momentum` must be a float <= 1.0. Received: momentum=1.5"),
    "weight_decay": (-1e-4, r"`weight_decay` must be a float >= 0.0. Received: weight_decay=-0.0001"),
    "schedule": ("step", r"`schedule` must be one of .*Received: schedule='step'"),
    "warmup_epochs": (-1.0, r"`warmup_epochs` must be a float >= 0.0. Received: warmup_epochs=-1.0"),
    "label_smoothing": ("0.1", r"`label_smoothing` must be a number. Received: label_smoothing='0.1'"),
    "epochs": (0, r"`epochs` must be an integer >= 1. Received: epochs=0"),
    "max_steps_per_epoch": (
        2.5, r"`max_steps_per_epoch` must be an integer. Received: max_steps_per_epoch=2.5"
    ),
    "seed": (-1, r"`seed` must be an integer >= 0. Received: seed=-1"),
    "steps_per_execution": (
        0, r"`steps_per_execution` must be an integer >= 1. Received: steps_per_execution=0"
    ),
    "mixed_precision": ("yes", r"`mixed_precision` must be a bool. Received: mixed_precision='yes'"),
    "strategy": ("horovod", r"`strategy` must be one of .*Received: strategy='horovod'"),
    "logical_cpus": (0, r"`logical_cpus` must be an integer >= 1. Received: logical_cpus=0"),
    "output_dir": ("", r"`output_dir` must be a directory. Received: output_dir=''"),
    "run_name": ("runs/a", r"`run_name` must be the name of the run directory.*Received: run_name='runs/a'"),
    "verbose": (3, r"`verbose` must be one of \[0, 1, 2\]. Received: verbose=3"),
}


def test_every_field_is_accounted_for():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not set(BAD) & set(ELSEWHERE), "checked twice"
    assert set(BAD) | set(ELSEWHERE) == fields
    assert_tests_exist([_CONFIG_TEST])


def test_every_field_names_the_bad_value():
    assert_each_raises([
        (f"TrainConfig({field}={value!r})", lambda f=field, v=value: TrainConfig(**{f: v}),
         ConfigError, match)
        for field, (value, match) in BAD.items()
    ])
