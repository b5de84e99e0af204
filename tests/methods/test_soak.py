"""Soak: a few hundred steps of every method leave nothing growing.

Each registered method (with the eigenvector tracker, so refreshes run
inside the compiled step) trains 4 epochs of 60 steps with
`steps_per_execution=10`. Measured at the end of every epoch after the
first: the train step is traced once for the whole fit (so the graph
cannot grow), the number of objects the garbage collector tracks
(containers: lists, dicts, tensors, closures; not those `gc.freeze` set
aside before the test, see tests/conftest.py) and the process's resident
memory. Bounds, stated in docs/RELIABILITY.md: over the last two epochs
(120 steps, after two epochs of warm-up) at most 50 more objects and
4 MiB more resident memory. Checked by leaking on purpose from the train
step (a `tf.py_function` keeping something at every step, with the
settings below): one list per step fails the first (120 > 50); random
bytes fail the second at 100 KB per step (12 MiB) and, just, at 40 KB
(4.7-4.9 MiB), and pass at 20 KB (2.4 MiB), so host leaks below about
35 KB per step are not caught. Measured without a leak: no new object
after the first epoch, at most 0.2 MiB of resident memory over the two
epochs (1.3 MiB measured before).
"""

import gc
import os

import keras
import numpy as np
import pytest

import keras_eigensam as ks
from keras_eigensam.methods import registry
from tests import tiny

#: Growth allowed over the last two epochs (120 steps), after two of warm-up.
MAX_NEW_OBJECTS = 50
MAX_NEW_RSS_BYTES = 4 * 2**20
EPOCHS, STEPS, STEPS_PER_EXECUTION = 4, 60, 10

#: Short schedules so that every branch runs many times in the soak.
SOAK_ARGUMENTS = {"looksam": {"k": 3}}
REFRESH_EVERY = 7
#: Products per refresh: the refresh's graph is traced once whatever their
#: number (5 by default cost 1.4 s more tracing per method).
NUM_MATVECS = 2


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Meter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.objects, self.resident = [], []

    def on_epoch_end(self, epoch, logs=None):
        gc.collect()
        self.objects.append(len(gc.get_objects()))
        self.resident.append(_resident_bytes())


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("name", registry.names())
def test_hundreds_of_steps_leave_nothing_growing(name):
    traces = []

    class Counting(ks.SharpnessAwareModel):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    kwargs = {
        **SOAK_ARGUMENTS.get(name, {}),
        "tracker": True,
        "refresh_every": REFRESH_EVERY,
        "num_matvecs": NUM_MATVECS,
        "seed": 0,
    }
    model = Counting(tiny.bn_dropout_net(), method=registry.get(name).cls(**kwargs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.02, momentum=0.9),
        loss="mse",
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    x, y = tiny.data(n=4 * STEPS)
    meter = _Meter()
    history = model.fit(
        x, y, batch_size=4, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=[meter]
    )

    assert len(traces) == 1
    assert int(model.optimizer.iterations) == EPOCHS * STEPS
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.method.tracker.num_refreshes) == -(-EPOCHS * STEPS // REFRESH_EVERY)
    new_objects = meter.objects[-1] - meter.objects[1]
    new_resident = meter.resident[-1] - meter.resident[1]
    assert new_objects <= MAX_NEW_OBJECTS, (meter.objects, name)
    assert new_resident <= MAX_NEW_RSS_BYTES, (meter.resident, name)
