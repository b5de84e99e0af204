"""Sharpness-aware methods: the pluggable part of `SharpnessAwareModel`."""

from keras_eigensam.methods.asam import ASAM
from keras_eigensam.methods.base import SharpnessMethod
from keras_eigensam.methods.context import StepContext
from keras_eigensam.methods.eigen_sam import EigenSAM
from keras_eigensam.methods.eigenvector_tracker import EigenvectorTracker
from keras_eigensam.methods.esam import ESAM
from keras_eigensam.methods.friendly_sam import FriendlySAM
from keras_eigensam.methods.gsam import GSAM
from keras_eigensam.methods.look_sam import LookSAM
from keras_eigensam.methods.momentum_sam import MomentumSAM
from keras_eigensam.methods.sam import SAM
from keras_eigensam.methods.wsam import WSAM
from keras_eigensam.methods.x_sam import XSAM
from keras_eigensam.methods import registry
