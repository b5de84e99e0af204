"""The checks `SharpnessAwareModel.fit` adds: a callback it appends to the user's."""

import warnings

import keras
from keras import ops

from keras_eigensam.methods.context import inner_optimizer


class FitChecks(keras.callbacks.Callback):
    """`SharpnessAwareModel.fit`'s checks: the refresh schedule, and
    `TerminateOnNaN` on skipped steps."""

    def __init__(self, terminate_on_skip):
        super().__init__()
        self.terminate_on_skip = terminate_on_skip
        self._skipped = 0.0

    def on_train_begin(self, logs=None):
        tracker = self.model.method.tracker
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if tracker is None or not steps or not epochs:
            return  # nothing to refresh, or a data set of unknown length
        optimizer = inner_optimizer(self.model.optimizer)
        accumulation = getattr(optimizer, "gradient_accumulation_steps", None) or 1
        iterations = optimizer.iterations  # a tensor under accumulation
        first = int(ops.convert_to_numpy(getattr(iterations, "value", iterations)))
        message = tracker.schedule_warning(first, (steps * epochs) // accumulation)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)

    def on_epoch_begin(self, epoch, logs=None):
        self._skipped = 0.0

    def on_train_batch_end(self, batch, logs=None):
        skipped = float((logs or {}).get("skipped_steps", 0.0))
        if self.terminate_on_skip and skipped > self._skipped:
            print(f"Batch {batch}: a non-finite step was skipped, terminating training")
            self.model.stop_training = True
        self._skipped = skipped
