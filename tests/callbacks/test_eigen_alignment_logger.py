"""Tests of `EigenAlignmentLogger`: per-step values from running means."""


import keras
import numpy as np
import pytest

import keras_eigensam as ks
from keras_eigensam import callbacks
from tests import tiny
from tests.callbacks.helpers import METRICS
from tests.callbacks.helpers import compiled_mlp
from tests.callbacks.helpers import event_scalars
from tests.callbacks.helpers import read_csv
from tests.callbacks.helpers import running_means
from tests.callbacks.helpers import sam_model


def test_alignment_logger_recovers_per_step_values(tmp_path):
    model = sam_model()
    model.method.tracker.eigenvalue.assign(2.5)
    logger = callbacks.EigenAlignmentLogger(str(tmp_path))
    logger.set_model(model)
    logger.on_train_begin()
    alignment = [0.1, 0.5, 0.3, 0.9]
    cosine = [0.2, 0.05, 0.7, 0.4]
    step = 0
    for epoch in range(2):
        logger.on_epoch_begin(epoch)
        # The logs hold Keras's running means (reset every epoch).
        for batch, (m_a, m_c) in enumerate(zip(running_means(alignment), running_means(cosine))):
            step += 1
            model.optimizer.iterations.assign(step)
            logger.on_train_batch_end(
                batch, {"loss": 1.0, "top_eigenvalue": 9.0, "eigen_alignment": m_a,
                        "grad_eigen_cosine": m_c},
            )
        logger.on_epoch_end(epoch, {})
    logger.on_train_end()
    assert [s for s, _ in logger.history] == list(range(1, 9))
    np.testing.assert_allclose(
        [v["eigen_alignment"] for _, v in logger.history], alignment * 2, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        [v["grad_eigen_cosine"] for _, v in logger.history], cosine * 2, rtol=1e-12, atol=1e-15
    )
    # The eigenvalue is the tracker's variable, not the running mean.
    assert all(v["top_eigenvalue"] == 2.5 for _, v in logger.history)
    rows = read_csv(tmp_path / callbacks.ALIGNMENT_CSV)
    assert list(rows[0]) == ["step", *METRICS]
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    np.testing.assert_allclose([float(r["eigen_alignment"]) for r in rows], alignment * 2)
    events = event_scalars(str(tmp_path))
    assert set(events) == set(METRICS)
    np.testing.assert_allclose([v for _, v in events["eigen_alignment"]], alignment * 2, rtol=1e-6)


def test_alignment_logger_every_int_steps_keeps_that_steps_value():
    model = sam_model()
    logger = callbacks.EigenAlignmentLogger(every=2)
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    values = [0.1, 0.5, 0.3, 0.9, 0.6]
    for batch, mean in enumerate(running_means(values)):
        model.optimizer.iterations.assign(batch + 1)
        logger.on_train_batch_end(
            batch, {"top_eigenvalue": 1.0, "eigen_alignment": mean, "grad_eigen_cosine": mean}
        )
    assert [s for s, _ in logger.history] == [2, 4]
    np.testing.assert_allclose([v["eigen_alignment"] for _, v in logger.history], [0.5, 0.9])


def test_alignment_logger_with_steps_per_execution_logs_execution_means():
    model = sam_model()
    logger = callbacks.EigenAlignmentLogger()
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    values = [0.1, 0.5, 0.3, 0.9]
    means = running_means(values)
    for batch in (1, 3):  # Keras reports the last step of each execution
        model.optimizer.iterations.assign(batch + 1)
        logger.on_train_batch_end(
            batch, {"top_eigenvalue": 1.0, "eigen_alignment": means[batch],
                    "grad_eigen_cosine": means[batch]},
        )
    assert [s for s, _ in logger.history] == [2, 4]
    np.testing.assert_allclose(
        [v["eigen_alignment"] for _, v in logger.history], [0.3, 0.6], rtol=1e-12
    )


@pytest.mark.parametrize("kind", ["plain", "sam"])
def test_alignment_logger_rejects_models_without_the_metrics(kind):
    model = compiled_mlp() if kind == "plain" else ks.SharpnessAwareModel(tiny.mlp())
    model.compile(optimizer="sgd", loss="mse")
    logger = callbacks.EigenAlignmentLogger()
    logger.set_model(model)
    with pytest.raises(ValueError, match=r"SAM\(track_eigen=True\).*Received: a model of type"):
        logger.on_train_begin()


def test_alignment_logger_matches_instantaneous_values(op_determinism):
    x, y = tiny.data()
    logger = callbacks.EigenAlignmentLogger()
    fitted = sam_model(refresh_every=1)
    fitted.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    # train_on_batch resets the metrics, so it returns each step's own value.
    stepped = sam_model(refresh_every=1)
    expected = [
        stepped.train_on_batch(x[i : i + 4], y[i : i + 4], return_dict=True)
        for i in range(0, 16, 4)
    ]
    assert [s for s, _ in logger.history] == [1, 2, 3, 4]
    for (_, got), want in zip(logger.history, expected):
        for name in METRICS:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_alignment_logger_under_mirrored_strategy(mirrored_strategy):
    x, y = tiny.data()
    with mirrored_strategy.scope():
        model = sam_model()
    logger = callbacks.EigenAlignmentLogger()
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[logger])
    assert [s for s, _ in logger.history] == [1, 2]
    for name in ("eigen_alignment", "grad_eigen_cosine"):
        np.testing.assert_allclose(
            np.mean([v[name] for _, v in logger.history]), history.history[name][0], rtol=1e-5
        )
    tracked = keras.ops.convert_to_numpy(model.method.tracker.eigenvalue)
    assert logger.history[-1][1]["top_eigenvalue"] == float(tracked)


def test_alignment_logger_schedule_arguments():
    with pytest.warns(DeprecationWarning, match="every_n_steps"):
        assert callbacks.EigenAlignmentLogger(every_n_steps=3).every == 3
    with pytest.raises(ValueError, match=r"`every` must be an integer >= 1.*every=0"):
        callbacks.EigenAlignmentLogger(every=0)
    with pytest.raises(ValueError, match=r"`every` must be an integer.*every='epoch'"):
        callbacks.EigenAlignmentLogger(every="epoch")
    with pytest.raises(ValueError, match=r"one schedule.*every=2, every_n_steps=3"):
        callbacks.EigenAlignmentLogger(every=2, every_n_steps=3)


def test_alignment_csv_keeps_the_steps_before_a_resume(tmp_path):
    """A resumed run (a new logger, a new process) writing to the same
    `log_dir` keeps the earlier rows up to the step it resumes from and
    drops those it trains again (issue 12, item 16)."""
    x, y = tiny.data(n=16)
    model = sam_model()
    fit = dict(batch_size=4, verbose=0, shuffle=False)
    model.fit(x, y, epochs=3, callbacks=[callbacks.EigenAlignmentLogger(str(tmp_path))], **fit)
    first = read_csv(tmp_path / callbacks.ALIGNMENT_CSV)
    assert [int(r["step"]) for r in first] == list(range(1, 13))
    # Resumed from a backup after epoch 2 (step 8): steps 9.. are retrained.
    model.optimizer.iterations.assign(8)
    resumed = callbacks.EigenAlignmentLogger(str(tmp_path))
    model.fit(x, y, epochs=1, callbacks=[resumed], **fit)
    rows = read_csv(tmp_path / callbacks.ALIGNMENT_CSV)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert rows[:8] == first[:8]  # the earlier steps as they were written
    assert [s for s, _ in resumed.history] == [9, 10, 11, 12]
    assert rows[8]["eigen_alignment"] == repr(resumed.history[0][1]["eigen_alignment"])
