"""Hessian toolkit: Hessian-vector products, eigenpairs, trace, density, sharpness.

Two layers:

1. A functional core that a compiled training step can call, in replica
   context, under `jit_compile=True`: `hvp` (one Hessian-vector product of a
   zero-argument loss function), `make_hvp` (a `matvec` that reuses one
   recorded forward and backward pass for many products),
   `make_microbatched_hvp` (a `matvec` accumulated over micro-batches, for
   bounded memory), `make_ggn_product` (the generalized Gauss-Newton
   matrix's, first derivatives only) and `power_iteration`. Nothing there
   all-reduces; the caller does.
2. Analysis tools, called eagerly between epochs or after training:
   curvature operators of a Keras model's mean loss over one batch or a
   whole data set (`HessianOperator`, `GGNOperator`,
   `EmpiricalFisherOperator`, all `CurvatureOperator`s with `matvec`,
   `top_eigenpairs`, `trace`, `diagonal`, `density` and `to_scipy`), the
   estimators they run, which are free functions over any `matvec`
   (`lanczos_eigenpairs`, `deflated_power_iteration`, `hutchinson_trace`,
   `hutchpp_trace`, `hutchinson_diagonal`, `spectral_density`), and
   `sharpness` of a `ProbeLoss`. They return NumPy numbers. Every
   estimator's budget is `num_matvecs`, the number of products it computes.

Modules: `hvp.py`, `power_iteration.py`, `lanczos.py`, `trace.py`,
`density.py`, `data.py` (`read_batches`, and `CurvatureData`: the
batches, in memory or streamed), `operator.py` (`CurvatureOperator`), `estimators.py` (its
estimators), `eigenpairs.py` (what
`top_eigenpairs` returns and its power-iteration route),
`hessian_operator.py`, `ggn.py`, `fisher.py`, `sharpness.py`, and
`probe.py` (the loss on probe data, shared with
`keras_eigensam.callbacks`). The functions
`hvp`, `power_iteration` and `sharpness` are re-exported under the names of
their modules, so `keras_eigensam.hessian.hvp` is the function; import from
a module with `from keras_eigensam.hessian.hvp import make_hvp`. TensorFlow
itself is only used through `keras_eigensam.backend`.

Vectors are lists of tensors shaped like the model's trainable variables (see
`keras_eigensam.linalg`), never one concatenated vector, so that the core works
for any model without copying its weights.
"""

from keras_eigensam.hessian.data import CurvatureData
from keras_eigensam.hessian.data import read_batches
from keras_eigensam.hessian.density import spectral_density
from keras_eigensam.hessian.fisher import EmpiricalFisherOperator
from keras_eigensam.hessian.ggn import GGNOperator
from keras_eigensam.hessian.ggn import make_ggn_product
from keras_eigensam.hessian.hvp import DEFAULT_HVP_MODE
from keras_eigensam.hessian.hvp import HVP_MODES
from keras_eigensam.hessian.hvp import hvp
from keras_eigensam.hessian.hvp import make_hvp
from keras_eigensam.hessian.hvp import make_microbatched_hvp
from keras_eigensam.hessian.lanczos import lanczos_eigenpairs
from keras_eigensam.hessian.lanczos import WHICH
from keras_eigensam.hessian.eigenpairs import EIGEN_METHODS
from keras_eigensam.hessian.eigenpairs import Eigenpairs
from keras_eigensam.hessian.operator import CurvatureOperator
from keras_eigensam.hessian.hessian_operator import HessianOperator
from keras_eigensam.hessian.power_iteration import deflated_power_iteration
from keras_eigensam.hessian.power_iteration import power_iteration
from keras_eigensam.hessian.probe import ProbeLoss
from keras_eigensam.hessian.sharpness import SHARPNESS_MEASURES
from keras_eigensam.hessian.sharpness import random_unit_directions
from keras_eigensam.hessian.sharpness import sharpness
from keras_eigensam.hessian.trace import TRACE_METHODS
from keras_eigensam.hessian.trace import Estimate
from keras_eigensam.hessian.trace import hutchinson_diagonal
from keras_eigensam.hessian.trace import hutchinson_trace
from keras_eigensam.hessian.trace import hutchpp_trace

__all__ = [
    "CurvatureData",
    "CurvatureOperator",
    "DEFAULT_HVP_MODE",
    "EIGEN_METHODS",
    "Eigenpairs",
    "EmpiricalFisherOperator",
    "Estimate",
    "GGNOperator",
    "HVP_MODES",
    "HessianOperator",
    "ProbeLoss",
    "SHARPNESS_MEASURES",
    "TRACE_METHODS",
    "WHICH",
    "deflated_power_iteration",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "hvp",
    "lanczos_eigenpairs",
    "make_ggn_product",
    "make_hvp",
    "make_microbatched_hvp",
    "power_iteration",
    "random_unit_directions",
    "read_batches",
    "sharpness",
    "spectral_density",
]
