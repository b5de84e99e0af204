"""A training process killed at a random step resumes with `BackupAndRestore`
and ends bit for bit where an uninterrupted one ends (issue 12, row 8).

The training runs in child processes (this file run as
`python -m tests.test_resume OUT_DIR JOB...`): a tiny MLP under op
determinism, with an optimizer with slots (SGD with momentum), and three
methods, one per kind of state: Eigen-SAM (an eigenvector that drives the
step, refreshed every 3 steps, its eigenvalue and refresh counters), LookSAM
(a direction stored on every 3rd step and used on the others) and
FriendlySAM (an EMA of the gradient and its `started` flag). Epochs of 4
steps, so neither schedule is aligned with the epochs. Each method more
costs a process (~7 CPU-s); every registered method's state goes through
`BackupAndRestore` in one process in
`methods/test_contract.py::test_backup_and_restore_and_keras_file_keep_method_state`.

Each child SIGKILLs itself when the optimizer has taken the step the test
drew at random (seeded) inside an epoch: SIGKILL runs no handler, no
`finally`, no `atexit`, so whoever sends it the process stops as it is. A
self-sent kill lands between two steps (a kill inside a step loses that
step, which the resume trains again the same way) and never inside the
writing of a backup, where a torn file is `double_checkpoint`'s concern, not
this promise's.

The backup is Keras's per-epoch one (`save_freq="epoch"`), so the run
resumes at the start of the epoch it was killed in: Keras 3.15 restores an
integer-`save_freq` backup written inside an epoch but starts that epoch
again from its first batch (its `training_metadata.json` records the batch,
`on_train_begin` reads only the epoch), so the batches before the backup are
trained twice and the run cannot end where an uninterrupted one ends; see
`test_keras_restarts_the_epoch_of_a_mid_epoch_backup`.

The data of epoch e is a function of the seed and e only (a stateless
shuffle), and the resumed process starts its data at the backed-up epoch, as
`experiments.data.load(epochs=..., initial_epoch=...)` does for
`scripts/train.py`. (Keras 3.15's `fit(x, y, shuffle=True)` on arrays,
under `keras.utils.set_random_seed`, draws the same permutation in every
epoch, seen here: each epoch's iterator starts its seeded
`tf.random.shuffle` again. It resumes, but it does not reshuffle.)
"""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 3
EPOCHS, STEPS, BATCH = 3, 4, 4
#: Method name -> constructor arguments: one method per kind of state.
METHODS = {
    "eigensam": dict(rho=0.1, alpha=0.3, refresh_every=3, seed=4),
    "looksam": dict(rho=0.1, k=3),
    "friendlysam": dict(rho=0.1),
}


# ---------------------------------------------------------------- the child


def _data(initial_epoch):
    """Epochs `initial_epoch … EPOCHS − 1`, each shuffled by (SEED, epoch)."""
    import tensorflow as tf

    from tests import tiny

    x, y = tiny.data(n=STEPS * BATCH, seed=SEED)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(STEPS * BATCH), seed=tf.stack([tf.constant(SEED, tf.int64), e])
        )
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(x, order), tf.gather(y, order))
        ).batch(BATCH)

    return tf.data.Dataset.range(initial_epoch, EPOCHS).flat_map(epoch)


def _train(method, job_dir, kill_at):
    """Trains `method` in `job_dir` (resuming from its backup) and writes
    `state.json`; SIGKILLs the process after step `kill_at` (0: never)."""
    import keras
    import tensorflow as tf

    import keras_eigensam as ks
    from keras_eigensam.experiments import results as results_lib
    from keras_eigensam.methods import registry
    from tests import tiny

    keras.utils.clear_session()
    keras.utils.set_random_seed(SEED)
    model = ks.SharpnessAwareModel(
        tiny.mlp(seed=SEED), method=registry.create(method, **METHODS[method])
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    backup_dir = os.path.join(job_dir, "backup")
    history = model.fit(
        _data(results_lib.backed_up_epoch(backup_dir)),
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
        verbose=0,
        callbacks=[
            keras.callbacks.CSVLogger(os.path.join(job_dir, "history.csv"), append=True),
            keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
            KillAt(),
        ],
    )
    state = {
        "weights": model.variables,
        "optimizer": model.optimizer.variables,
        "method": model.method.variables,
    }
    state = {k: [np.asarray(v).tolist() for v in vs] for k, vs in state.items()}
    state["history"] = history.history
    state["epochs"] = history.epoch
    with open(os.path.join(job_dir, "state.json"), "w") as f:
        json.dump(state, f)


def main(out_dir, *jobs):
    """Runs the jobs `DIR:METHOD:KILL_AT` in order, in this process."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    for job in jobs:
        name, method, kill_at = job.split(":")
        job_dir = os.path.join(out_dir, name)
        os.makedirs(job_dir, exist_ok=True)
        _train(method, job_dir, int(kill_at))


# ---------------------------------------------------------------- the test


def _run_child(out_dir, *jobs):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "tests.test_resume", str(out_dir), *jobs],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=env,
    )


def _state(job_dir):
    with open(os.path.join(job_dir, "state.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_killed_at_a_random_step_resumes_bit_for_bit(tmp_path):
    """Each method is killed at a random step inside an epoch after the
    first: the process of one kill resumes the run killed before it, so
    `len(METHODS) + 1` processes; the first also trains the uninterrupted
    runs (same code, no kill)."""
    rng = random.Random(12)
    kills = {
        m: rng.choice([k for k in range(STEPS + 1, EPOCHS * STEPS) if k % STEPS])
        for m in METHODS
    }
    jobs = [f"reference-{m}:{m}:0" for m in METHODS]
    for method in METHODS:
        jobs.append(f"{method}:{method}:{kills[method]}")
        process = _run_child(tmp_path, *jobs)
        assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
        jobs = [f"{method}:{method}:0"]
    process = _run_child(tmp_path, *jobs)
    assert process.returncode == 0, process.stderr[-3000:]

    for method, kill_at in kills.items():
        resumed, reference = _state(tmp_path / method), _state(tmp_path / f"reference-{method}")
        initial_epoch = kill_at // STEPS
        # The resumed process trained the epochs from the one it was killed in.
        assert resumed["epochs"] == list(range(initial_epoch, EPOCHS)), method
        for key in ("weights", "optimizer", "method"):
            assert len(resumed[key]) == len(reference[key])
            for i, (a, b) in enumerate(zip(resumed[key], reference[key])):
                np.testing.assert_array_equal(a, b, err_msg=f"{method} {key} {i}")
        # History: the resumed fit's epochs are those of the uninterrupted
        # fit, and the CSVLogger file (appended to) holds every epoch.
        assert resumed["history"] == {
            k: v[initial_epoch:] for k, v in reference["history"].items()
        }, method
        assert (tmp_path / method / "history.csv").read_text() == (
            tmp_path / f"reference-{method}" / "history.csv"
        ).read_text()
        assert len(reference["history"]["loss"]) == EPOCHS
    # The state that must be resumed is there: an eigenvector, a direction
    # stored by LookSAM (not zeros).
    for method in METHODS:
        state = _state(tmp_path / method)["method"]
        assert any(np.any(np.asarray(v) != 0) for v in state), method


def test_keras_restarts_the_epoch_of_a_mid_epoch_backup(tmp_path):
    """Pins what Keras 3.15's `BackupAndRestore(save_freq=<steps>)` does, the
    reason the promise is made for per-epoch backups: it restores the weights
    of a backup written inside epoch e, then trains epoch e again from its
    first batch (the batches before the backup twice); and the epoch it
    records is the callback's count of epochs ended in this `fit`, so the
    backups of a resumed fit say epoch 0 until it ends an epoch (killed
    again, the run would start over from epoch 0 with trained weights). If
    this test fails, Keras changed: look again at row 8 of RELIABILITY.md."""
    import keras

    from tests import tiny

    x, y = tiny.data(n=STEPS * BATCH)
    metadata = tmp_path / "backup" / "training_metadata.json"

    def new_model():
        model = tiny.mlp()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == (1, 1):
                raise RuntimeError("interrupted")

    fit = dict(batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    model = new_model()
    backup = lambda: keras.callbacks.BackupAndRestore(
        tmp_path / "backup", save_freq=1, delete_checkpoint=False
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, callbacks=[backup(), Interrupt()], **fit)
    assert json.loads(metadata.read_text()) == {"epoch": 1, "batch": 1}
    saved = [np.array(v) for v in model.weights]

    model = new_model()
    seen, restored = [], []
    record = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: restored.extend(np.array(v) for v in model.weights),
        on_train_batch_begin=lambda batch, logs: seen.append(batch),
    )
    history = model.fit(x, y, callbacks=[backup(), record], **fit)
    for a, b in zip(restored, saved):
        np.testing.assert_array_equal(a, b)
    assert history.epoch == [1] and seen == list(range(STEPS))
    assert int(model.optimizer.iterations) == STEPS + 2 + STEPS  # not 2 * STEPS
    # Written after the resumed epoch's last batch, before it ended.
    assert json.loads(metadata.read_text()) == {"epoch": 0, "batch": STEPS - 1}


if __name__ == "__main__":
    main(*sys.argv[1:])
