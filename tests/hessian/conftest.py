"""Fixtures of the Hessian tests."""

import keras
import pytest


@pytest.fixture
def float64():
    """float64 weights, so finite-difference references are accurate to ~1e-9."""
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")
