"""Keras callbacks that measure the loss landscape while a model trains.

Three callbacks, for any Keras model (a plain `keras.Model` trained with SGD
as well as a `SharpnessAwareModel`), one per module:

- `HessianEigenvalueMonitor`: top Hessian eigenvalues (and optionally the
  trace and the spectral density) of the loss on a fixed probe set.
- `SharpnessMonitor`: the three sharpness notions of Wen, Ma & Li (2023) on a
  fixed probe set (`keras_eigensam.hessian.sharpness`): ascent-direction,
  average and worst-case sharpness.
- `EigenAlignmentLogger`: the per-step `top_eigenvalue`, `eigen_alignment`
  and `grad_eigen_cosine` that `SharpnessAwareModel` logs with `EigenSAM`,
  `XSAM` or `SAM(track_eigen=True)`, step by step rather than as epoch means.

Each takes one schedule argument, as Keras's `save_freq`: `every="epoch"` or
`every=n` (every `n` optimizer steps). The two monitors write their values
into the epoch `logs` in `on_epoch_end`. Keras hands one `logs` dict to every
callback in list order, so callbacks *after* a monitor
(`keras.callbacks.CSVLogger`, `keras.callbacks.TensorBoard`, and `History`,
which `fit` always appends last) see the values; callbacks before it do not.
Put the monitors first:

```python
callbacks = [
    HessianEigenvalueMonitor(probe, every="epoch"),
    SharpnessMonitor(probe, rho=0.05),
    keras.callbacks.CSVLogger("history.csv"),
    keras.callbacks.TensorBoard("logs"),
]
```

All measurements are taken on a fixed probe set (one batch or a small
dataset, read once when the callback is created), not on the moving training
batch, so consecutive values differ only because the weights moved.

TensorBoard scalars are written with `tf.summary` and the scalar plugin's
metadata (`keras_eigensam.backend.summary`), so these callbacks need no
`tensorboard` package; `keras.callbacks.TensorBoard` itself does need it.
"""

from keras_eigensam.callbacks.eigen_alignment_logger import ALIGNMENT_CSV
from keras_eigensam.callbacks.eigen_alignment_logger import EigenAlignmentLogger
from keras_eigensam.callbacks.hessian_eigenvalue_monitor import HessianEigenvalueMonitor
from keras_eigensam.callbacks.sharpness_monitor import SharpnessMonitor
from keras_eigensam.hessian.sharpness import SHARPNESS_MEASURES
from keras_eigensam.hessian.sharpness import random_unit_directions

__all__ = [
    "ALIGNMENT_CSV",
    "EigenAlignmentLogger",
    "HessianEigenvalueMonitor",
    "SHARPNESS_MEASURES",
    "SharpnessMonitor",
    "random_unit_directions",
]
