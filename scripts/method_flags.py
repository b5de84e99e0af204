"""The method flags of `train.py` and `compare.py`, from the method registry.

`--method` (or `--methods`) takes `sgd` or a registered name, `--method_args`
the method's constructor arguments as `key=value` pairs, and `--rho` is
shorthand for `--method_args=rho=...`. Bad names, keys and values are flag
errors at parse time: one line naming the bad key and the accepted ones.
"""

import ast

from absl import flags

from keras_eigensam.experiments import comparison
from keras_eigensam.experiments import config
from keras_eigensam.methods import registry


def method_help():
    """What each `--method` choice is, one clause per method."""
    clauses = ["sgd: the base optimizer alone (Keras's own train step)"]
    clauses += [f"{e.name} ({e.cls.__name__}): {e.summary}" for e in registry.entries()]
    return "; ".join(clauses) + "."


def define_method_args_flags():
    """Defines `--method_args` and `--rho`."""
    flags.DEFINE_list(
        "method_args",
        [],
        "The method's constructor arguments as key=value pairs, e.g. "
        "--method_args=alpha=0.1,refresh_every=10 (values are Python literals; "
        "other text is a string); unset ones take the class defaults listed in "
        "the README's method table. With several methods, each takes the keys "
        "it has.",
    )
    flags.DEFINE_float(
        "rho",
        None,
        "Perturbation radius: shorthand for --method_args=rho=RHO (unset: each "
        "method's default).",
        lower_bound=0.0,
    )


def methods(names):
    """The `--methods` list with `all` expanded to every method."""
    return list(config.METHODS) if "all" in names else list(names)


def parse_method_args(items):
    """`{key: value}` from `["key=value", ...]`, the value of `--method_args`.

    Values are Python literals (`0.1`, `10`, `True`, `None`, `'text'`); a
    value that is not one is taken as a string (`correction=projection`).

    Raises:
        keras_eigensam.experiments.config.ConfigError: if an item is not
            `key=value` or a key repeats.
    """
    args = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise config.ConfigError(
                "--method_args must be key=value pairs, e.g. "
                f"alpha=0.1,refresh_every=10. Received: {item!r}"
            )
        if key in args:
            raise config.ConfigError(
                f"--method_args sets `{key}` twice: pass it once. Received: {item!r}"
            )
        try:
            args[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            args[key] = text.strip()
    return args


def method_args(items, rho):
    """`--method_args` as a dict, with `--rho` in it.

    Raises:
        keras_eigensam.experiments.config.ConfigError: if an item is
            malformed or `rho` is set twice.
    """
    args = parse_method_args(items)
    if rho is not None:
        if "rho" in args:
            raise config.ConfigError(
                "`rho` is set by both --rho and --method_args: pass it once. "
                f"Received: --rho={rho}, --method_args=rho={args['rho']!r}"
            )
        args["rho"] = rho
    return args


def register_method_args_validator(methods_flag):
    """Checks `--<methods_flag>`, `--method_args` and `--rho` together.

    Every method must be known, every key taken by one of them and every
    value in its range (the constructors check), before anything runs.
    """

    def check(values):
        names = values[methods_flag]
        names = methods([names] if isinstance(names, str) else names)
        unknown = sorted(set(names) - set(config.METHODS))
        if unknown:
            raise flags.ValidationError(
                f"--{methods_flag}: unknown {unknown}; choose from "
                f"{list(config.METHODS)} or all."
            )
        try:
            split = comparison.split_method_args(
                names, method_args(values["method_args"], values["rho"])
            )
            for method, args in split.items():
                if method != "sgd":
                    registry.create(method, **args)
        except (TypeError, ValueError) as e:
            raise flags.ValidationError(str(e)) from None
        return True

    flags.register_multi_flags_validator([methods_flag, "method_args", "rho"], check)
