"""Sharpness-aware methods: the pluggable part of `SharpnessAwareModel`."""

from keras_eigensam.methods.asam import ASAM
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.base import StepContext
from keras_eigensam.methods.sam import SAM
