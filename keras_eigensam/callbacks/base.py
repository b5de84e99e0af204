"""What the curvature callbacks share: the schedule and the monitor base class.

One schedule argument, in the style of Keras's `save_freq`:
`every="epoch"` measures at the end of every epoch, `every=n` (an integer)
after every `n`-th optimizer step. Steps are `model.optimizer.iterations`
(optimizer updates so far, across `fit` calls; exact with
`steps_per_execution > 1`).
"""

import numbers
import warnings

import keras
from keras import ops

from keras_eigensam import validation
from keras_eigensam.backend.summary import ScalarWriter

#: The value of `every` that measures at the end of every epoch.
EPOCH = "epoch"


class Schedule:
    """When a callback measures: every `n` epochs or every `n` steps.

    Built by `Schedule.parse` from the `every` argument (and the deprecated
    `every_n_epochs`/`every_n_steps`).
    """

    def __init__(self, unit, n):
        self.unit = unit
        self.n = n

    @classmethod
    def parse(cls, every, every_n_epochs=None, every_n_steps=None, allow_epoch=True):
        """The schedule of `every="epoch" | int`.

        `every_n_epochs=n` and `every_n_steps=n` are deprecated spellings of
        "every n epochs" and `every=n`; they warn and win over the default
        `every="epoch"`.

        Raises:
            ValueError: if `every` is neither `"epoch"` (when allowed) nor an
                integer >= 1, or more than one schedule is given.
        """
        if every_n_epochs is not None or every_n_steps is not None:
            if (every_n_epochs is not None and every_n_steps is not None) or every != EPOCH:
                raise ValueError(
                    "Pass one schedule, `every`. Received: "
                    f"every={every!r}, every_n_epochs={every_n_epochs!r}, "
                    f"every_n_steps={every_n_steps!r}"
                )
            if every_n_steps is not None:
                warnings.warn(
                    "`every_n_steps=n` is deprecated; pass `every=n`.",
                    DeprecationWarning,
                    stacklevel=4,
                )
                return cls("step", validation.check_int("every_n_steps", every_n_steps, minimum=1))
            warnings.warn(
                "`every_n_epochs` is deprecated; pass `every='epoch'` (every "
                "epoch) or `every=n` (every n optimizer steps).",
                DeprecationWarning,
                stacklevel=4,
            )
            return cls("epoch", validation.check_int("every_n_epochs", every_n_epochs, minimum=1))
        if allow_epoch and every == EPOCH:
            return cls("epoch", 1)
        if isinstance(every, numbers.Integral) and not isinstance(every, bool) and every >= 1:
            return cls("step", int(every))
        allowed = '`"epoch"` or an integer' if allow_epoch else "an integer"
        raise ValueError(
            f"`every` must be {allowed} >= 1 (a number of optimizer steps). "
            f"Received: every={every!r}"
        )

    @property
    def steps(self):
        """`n` for a step schedule, else None."""
        return self.n if self.unit == "step" else None

    def at_epoch_end(self, epoch):
        """Whether an epoch schedule measures at the end of `epoch` (0-based)."""
        return self.unit == "epoch" and (epoch + 1) % self.n == 0

    def __repr__(self):
        return f"Schedule(unit={self.unit!r}, n={self.n})"


def optimizer_step(model):
    """`model.optimizer.iterations` as an int, or None without an optimizer."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    if iterations is None:
        return None
    return int(ops.convert_to_numpy(iterations))


def crosses_multiple(previous, step, n):
    """Whether a multiple of `n` lies in `(previous, step]`."""
    return step // n > previous // n


class StepTracker:
    """The global training step a callback reports measurements at.

    The step is `model.optimizer.iterations`. Without an optimizer (hooks
    called by hand) it counts `on_train_batch_end` calls.
    """

    def __init__(self):
        self.reset(None)

    def reset(self, model):
        step = optimizer_step(model) if model is not None else None
        self.step = 0 if step is None else step

    def advance(self, model):
        """Returns `(previous, current)` after one `on_train_batch_end`."""
        previous = self.step
        step = optimizer_step(model)
        self.step = previous + 1 if step is None else step
        return previous, self.step

    def current(self, model):
        step = optimizer_step(model)
        if step is not None:
            self.step = step
        return self.step


class ScheduledMonitor(keras.callbacks.Callback):
    """Base class of the monitors: measures on a schedule and logs values.

    A subclass sets `self.keys` (the logged names) and implements
    `_build_measurer()` (e.g. a `HessianOperator` for `self.model`, built
    on first use) and `_measure()`, returning a dict from each key to a
    Python float. This
    class measures at the end of every epoch (`every="epoch"`) or after every
    `every`-th optimizer step, writes the values into the epoch `logs` (the
    latest measurement with a step schedule; `nan` where there is none yet,
    so every epoch has the keys, as `CSVLogger` needs), keeps every
    measurement in `history` as `(step, values)`, and writes it as
    TensorBoard scalars in `log_dir`. `_on_record(step, values)` runs after
    each recorded measurement.

    Args:
        every: `"epoch"` or an integer number of optimizer steps.
        log_dir: Directory for TensorBoard scalars, or `None`.
        every_n_epochs: Deprecated, see `Schedule.parse`.
        every_n_steps: Deprecated, see `Schedule.parse`.
    """

    keys = ()

    def __init__(self, every, log_dir, every_n_epochs=None, every_n_steps=None):
        super().__init__()
        self.schedule = Schedule.parse(every, every_n_epochs, every_n_steps)
        # The `every` equivalent of the schedule (None for the deprecated
        # `every_n_epochs` > 1, which `every` cannot express).
        if self.schedule.unit == "step":
            self.every = self.schedule.n
        else:
            self.every = EPOCH if self.schedule.n == 1 else None
        self.log_dir = log_dir
        self._writer = ScalarWriter(log_dir) if log_dir is not None else None
        self._steps = StepTracker()
        self._reset()

    def _reset(self):
        #: Every measurement of this `fit`: a list of `(step, values)`.
        self.history = []
        self._latest = None
        self._measurer = None

    def set_model(self, model):
        super().set_model(model)
        self._measurer = None

    def _get_measurer(self):
        """The object that measures (built by `_build_measurer`), kept until
        the model changes or a new `fit` begins (its loss may have changed)."""
        if self._measurer is None:
            self._measurer = self._build_measurer()
        return self._measurer

    def _build_measurer(self):
        raise NotImplementedError

    def measure(self):
        """Measures now, without logging or recording anything.

        Returns:
            A dict from each logged key to a Python float.
        """
        return self._measure()

    def _measure(self):
        raise NotImplementedError

    def _on_record(self, step, values):
        pass

    def on_train_begin(self, logs=None):
        self._reset()
        self._steps.reset(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.schedule.steps is None:
            return
        previous, step = self._steps.advance(self.model)
        if crosses_multiple(previous, step, self.schedule.steps):
            self._record(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.schedule.at_epoch_end(epoch):
            values = self._record(self._steps.current(self.model))
        elif self._latest is not None and self.schedule.steps is not None:
            values = self._latest
        else:
            values = {key: float("nan") for key in self.keys}
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()

    def _record(self, step):
        values = self._measure()
        self.history.append((step, values))
        self._latest = values
        if self._writer is not None:
            self._writer.write(step, values)
        self._on_record(step, values)
        return values
