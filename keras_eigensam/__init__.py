"""keras-eigensam: the SAM family (SAM, ASAM, Eigen-SAM, X-SAM, GSAM, WSAM,
FriendlySAM, LookSAM, ESAM, Momentum-SAM) for Keras 3 on TensorFlow."""

import importlib.util as _importlib_util

from keras_eigensam import install as _install

if _importlib_util.find_spec("tensorflow") is None:  # pragma: no cover
    raise ImportError(
        "keras_eigensam needs TensorFlow 2.21. Install it with the `cpu` or "
        f"`gpu` extra: `{_install.pip_install('cpu')}` (or `[gpu]`)."
    )

import keras as _keras

if _keras.backend.backend() != "tensorflow":  # pragma: no cover
    raise ImportError(
        "keras_eigensam needs Keras's TensorFlow backend; Keras is using "
        f"{_keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before "
        "importing keras."
    )

from keras_eigensam import callbacks
from keras_eigensam import hessian
from keras_eigensam import linalg
from keras_eigensam.methods import ASAM
from keras_eigensam.methods import ESAM
from keras_eigensam.methods import GSAM
from keras_eigensam.methods import SAM
from keras_eigensam.methods import WSAM
from keras_eigensam.methods import EigenSAM
from keras_eigensam.methods import EigenvectorTracker
from keras_eigensam.methods import FriendlySAM
from keras_eigensam.methods import LookSAM
from keras_eigensam.methods import MomentumSAM
from keras_eigensam.methods import XSAM
from keras_eigensam.methods import SharpnessMethod
from keras_eigensam.methods import StepContext
from keras_eigensam.model import SharpnessAwareModel

# Last: the experiment harness builds on everything above.
from keras_eigensam import experiments  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ASAM",
    "ESAM",
    "EigenSAM",
    "EigenvectorTracker",
    "FriendlySAM",
    "GSAM",
    "LookSAM",
    "MomentumSAM",
    "SAM",
    "SharpnessAwareModel",
    "SharpnessMethod",
    "StepContext",
    "WSAM",
    "XSAM",
    "callbacks",
    "experiments",
    "hessian",
    "linalg",
]
