"""Argument checks shared by the public constructors.

Each check names the argument, the allowed range and what was received, so the
message tells the user what to change.
"""

import numbers
import os


def check_number(name, value, *, minimum=None, strict=False, maximum=None):
    """Returns `value` as a float after checking type and range.

    Raises:
        TypeError: if `value` is not a real number (bools are rejected too).
        ValueError: if `value` is not finite or lies outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r} "
            f"(of type {type(value).__name__})"
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value}")
    if minimum is not None:
        if strict and not value > minimum:
            raise ValueError(
                f"`{name}` must be a float > {minimum}. Received: {name}={value}"
            )
        if not strict and not value >= minimum:
            raise ValueError(
                f"`{name}` must be a float >= {minimum}. Received: {name}={value}"
            )
    if maximum is not None and value > maximum:
        raise ValueError(
            f"`{name}` must be a float <= {maximum}. Received: {name}={value}"
        )
    return value


def check_int(name, value, *, minimum=None):
    """Returns `value` as an int after checking type and lower bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r} "
            f"(of type {type(value).__name__})"
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value}"
        )
    return value


def check_bool(name, value):
    """Returns `value` after checking it is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a bool. Received: {name}={value!r} "
            f"(of type {type(value).__name__})"
        )
    return value


def check_choice(name, value, choices):
    """Returns `value` after checking it is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. Received: {name}={value!r}"
        )
    return value


def check_seed(name, value):
    """Returns `value` after checking it is `None` or a NumPy seed (an
    integer >= 0)."""
    return None if value is None else check_int(name, value, minimum=0)


def check_callable(name, value, what):
    """Returns `value` after checking it is callable; `what` says what it
    should be ("a function `vectors -> H·vectors`")."""
    if not callable(value):
        raise TypeError(
            f"`{name}` must be {what}. Received: {name}={value!r} "
            f"(of type {type(value).__name__})"
        )
    return value


def check_path(name, value):
    """Returns `value` after checking it is a path (a str or `os.PathLike`)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a path (a str or os.PathLike). Received: "
            f"{name}={value!r} (of type {type(value).__name__})"
        )
    return value
