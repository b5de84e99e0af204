"""Bad flags of `scripts/train.py`, `compare.py`, `benchmark.py` and
`reproduce_curvature.py`, in process.

Each script is loaded with its own `absl.flags.FlagValues` (the absl
`DEFINE_*` functions are bound to it while the script runs its top level),
so no flag touches the process's `FLAGS` and no TensorFlow start-up is paid
per script. Every flag a script defines must refuse a bad value with a
message that names the flag and shows the value: enumerations and bounded
numbers at parse time, the others as listed in `AT_PARSE` (a validator) or
`IN_MAIN` (the script's `main` answers before any work). Flags that are
`TrainConfig` fields are checked by `TrainConfig`
(tests/experiments/test_bad_config.py); `THROUGH_CONFIG` shows, per script,
that its `main` hands such an error to the user. `FREE` lists the flags
with no domain to check. The end-to-end answer (one line, no traceback) is
tests/test_scripts.py::test_bad_flags_exit_with_one_line.
"""

import dataclasses
import functools
import importlib.util
import inspect
import os
import sys
import types

import absl
import pytest
from absl import app
from absl import flags
from absl.flags import _argument_parser

from keras_eigensam import experiments
from keras_eigensam.experiments import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train", "compare", "benchmark", "reproduce_curvature")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(config.TrainConfig)}

#: Flags a validator checks at parse time: `(value, phrase of the message)`.
AT_PARSE = {
    ("train", "method_args"): ("alpha", "--method_args must be key=value pairs"),
    ("compare", "method_args"): ("alpha=-1", "`alpha` must be a float >= 0.0. Received: alpha=-1"),
    ("compare", "methods"): ("sam,adam", "--methods: unknown ['adam']"),
    ("benchmark", "input_shape"): ("32,a", "flag --input_shape=['32', 'a']: --input_shape takes integers >= 1"),
    ("benchmark", "refresh_periods"): ("0", "flag --refresh_periods=['0']: --refresh_periods takes integers >= 1"),
}
#: Flags `main` checks before any work: `(value, phrase of the message)`.
IN_MAIN = {
    ("compare", "seeds"): ("0,a", "--seeds must be integers. Received: ['0', 'a']"),
    ("reproduce_curvature", "seeds"): ("x", "--seeds must be integers. Received: ['x']"),
    ("reproduce_curvature", "methods"): ("sam,adam", "--methods: unknown ['adam']"),
    ("benchmark", "methods"): ("sam", "--methods must include sgd and name only"),
    ("benchmark", "suites"): ("steps,speed", "--suites takes steps, hvp, eigenvector; got ['steps', 'speed']"),
    ("benchmark", "memory_methods"): ("adam", "--memory_methods takes methods timed, ['sgd', 'sam',"),
    ("benchmark", "xla_skip"): ("sam_on_step", "--xla_skip takes kinds of step of the methods timed"),
}
#: One `TrainConfig` field per script that maps flags onto it, through `main`.
THROUGH_CONFIG = {
    "train": ("momentum", "1.5", "train.py: error: `momentum` must be a float <= 1.0. Received: momentum=1.5"),
    "compare": ("epochs", "0", "compare.py: error: `epochs` must be an integer >= 1. Received: epochs=0"),
    "reproduce_curvature": (
        "learning_rate", "0", "reproduce_curvature.py: error: `learning_rate` must be a float "
        "> 0.0. Received: learning_rate=0.0"
    ),
}
#: Flags without a domain to check, and why.
FREE = {
    **{(s, "output_dir"): "any directory" for s in ("benchmark", "reproduce_curvature")},
    ("reproduce_curvature", "data_dir"): "any directory (`TrainConfig` checks its type)",
    ("benchmark", "output_name"): "any file name stem",
    ("benchmark", "worker_method"): "internal: set by the script for its worker",
    ("benchmark", "worker_label"): "internal: set by the script for its worker",
}


def _load(name):
    """The script `name` as a module, and the `FlagValues` it defined."""
    fresh = flags.FlagValues()
    bound = types.ModuleType("absl.flags")
    bound.__dict__.update(vars(flags))
    for attribute, value in vars(flags).items():
        if inspect.isfunction(value) and "flag_values" in inspect.signature(value).parameters:
            setattr(bound, attribute, functools.partial(value, flag_values=fresh))
    bound.FLAGS = fresh
    saved = {key: sys.modules.get(key) for key in ("absl.flags", "method_flags")}
    sys.modules["absl.flags"] = bound
    sys.modules.pop("method_flags", None)  # defines flags: load it again
    absl.flags = bound
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        path = os.path.join(REPO, "scripts", f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_flags_of_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
        absl.flags = flags
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module, fresh


@pytest.fixture(scope="module")
def scripts():
    return {name: _load(name) for name in SCRIPTS}


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    """A check that lets a bad value through fails instead of training."""

    def fail(*args, **kwargs):
        pytest.fail("a script started work on a bad flag")

    monkeypatch.setattr(experiments, "run", fail)
    monkeypatch.setattr(experiments, "compare", fail)


def _own_flags(values):
    """The flags the script (and its `method_flags`) defined: `{name: Flag}`.

    `values` was empty before the script ran.
    """
    return {name: values[name] for name in values}


def _bad_value(script, name, flag):
    """`(value, phrase, where)` for one flag, or `None` where it has no check here."""
    if (script, name) in AT_PARSE:
        return (*AT_PARSE[script, name], "parse")
    if (script, name) in IN_MAIN:
        return (*IN_MAIN[script, name], "main")
    parser = flag.parser
    if isinstance(parser, _argument_parser.EnumParser):
        return "bogus", f"flag --{name}=bogus: value should be one of", "parse"
    bound = getattr(parser, "lower_bound", None)
    if isinstance(parser, _argument_parser.NumericParser) and bound is not None:
        value = bound - 1
        return str(value), f"flag --{name}={value}: {value} is not", "parse"
    return None


def _answer(module, values, script, argv, where):
    """The message the script answers `argv` with, at parse or from `main`."""
    values.unparse_flags()
    try:
        values([script, *argv])
        if where == "parse":
            return None
        module.main([script])
    except (flags.Error, app.UsageError) as e:
        return str(e)
    except SystemExit as e:
        return str(e.code)
    finally:
        values.unparse_flags()
    return None


def test_every_flag_refuses_a_bad_value_naming_it(scripts, tmp_path):
    unchecked, wrong = [], []
    for script, (module, values) in scripts.items():
        for name, flag in sorted(_own_flags(values).items()):
            bad = _bad_value(script, name, flag)
            if bad is None:
                boolean = isinstance(flag.parser, _argument_parser.BooleanParser)
                mapped = script in ("train", "compare") and name in CONFIG_FIELDS
                if not (boolean or mapped or (script, name) in FREE):
                    unchecked.append(f"{script} --{name}")
                continue
            value, phrase, where = bad
            argv = [f"--{name}={value}"]
            if script in ("benchmark", "reproduce_curvature", "compare"):
                argv.append(f"--output_dir={tmp_path}")
            answer = _answer(module, values, script, argv, where)
            if answer is None or phrase not in answer or f"{name}" not in answer:
                wrong.append(f"{script} {argv}: {answer!r} lacks {phrase!r}")
    assert not unchecked, f"give these a bound, a check or a reason: {unchecked}"
    assert not wrong, "\n".join(wrong)


def test_train_config_errors_reach_the_user_from_main(scripts, tmp_path):
    wrong = []
    for script, (name, value, phrase) in THROUGH_CONFIG.items():
        module, values = scripts[script]
        argv = [f"--{name}={value}", f"--output_dir={tmp_path}"]
        answer = _answer(module, values, script, argv, "main")
        if answer is None or phrase not in answer:
            wrong.append(f"{script} {argv}: {answer!r} lacks {phrase!r}")
    assert not wrong, "\n".join(wrong)
