"""Tests of `keras_eigensam.experiments.results` (a whole run: test_runner.py)."""

import numpy as np

from keras_eigensam.experiments import results


def test_history_rows_after_the_backup_are_dropped(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    results.truncate_history(str(path), 2)
    assert path.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"
    assert results.read_history(str(path)) == [
        {"epoch": 0.0, "loss": 1.0},
        {"epoch": 1.0, "loss": 0.9},
    ]
    assert results.read_history(str(tmp_path / "missing.csv")) == []


def test_json_round_trip_with_numpy_scalars(tmp_path):
    path = str(tmp_path / "r.json")
    results.write_json(path, {"a": np.float32(0.5), "b": np.int64(3), "c": [1, None]})
    assert results.read_json(path) == {"a": 0.5, "b": 3, "c": [1, None]}
    assert results.read_json(str(tmp_path / "missing.json")) is None
    assert not (tmp_path / "r.json.tmp").exists()
