"""Smoke test of `scripts/reproduce_curvature.py`, run in process.

Two methods, two seeds, one epoch of two steps of the digits MLP and cheap
final estimates: the outputs exist and are well formed. In process (not a
subprocess) to spare TensorFlow's import; the script's flags are parsed once.
"""

import importlib.util
import json
import math
import os

import pytest
from absl import flags

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "reproduce_curvature.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_curvature", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_curvature_writes_figures_table_and_effects(tmp_path):
    pytest.importorskip("scipy")
    pytest.importorskip("matplotlib")
    script = _load_script()
    argv = [
        "reproduce_curvature.py",
        "--methods=sgd,sam",
        "--seeds=0,1",
        "--epochs=1",
        "--max_steps_per_epoch=2",
        "--model=mlp",
        "--final_matvecs=4",
        "--trace_matvecs=3",
        f"--output_dir={tmp_path}",
    ]
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    try:
        script.main(argv[:1])
    finally:
        flags.FLAGS.unparse_flags()

    for name in ("alignment.png", "eigenvalue.png"):
        with open(tmp_path / name, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(tmp_path / name) > 5_000
    with open(tmp_path / "reproduce.json") as f:
        report = json.load(f)
    assert [row["method"] for row in report["rows"]] == ["sgd", "sam"]
    for row in report["rows"]:
        assert row["seeds"] == [0, 1]
        for key in ("final_test_accuracy", "lambda_max", "monitor_lambda_max", "trace"):
            assert len(row[key]["per_seed"]) == 2
            assert all(math.isfinite(v) for v in row[key]["per_seed"]), (row["method"], key)
    # Only the method with a tracker has an alignment.
    assert "mean_alignment" not in report["rows"][0]
    assert 0.0 <= report["rows"][1]["mean_alignment"]["mean"] <= 1.0
    effects = {(e["a"], e["b"], e["metric"]) for e in report["effects"]}
    assert effects == {
        ("sam", "sgd", m) for m in ("final_test_accuracy", "lambda_max", "trace")
    }
    for effect in report["effects"]:
        assert effect["n"] == 2
        low, high = effect["ci95"]
        assert low <= effect["mean_difference"] <= high
    table = (tmp_path / "reproduce.md").read_text()
    assert "| sgd | – |" in table and "| sam | rho=0.05, refresh_every=1 |" in table
    assert "| sam − sgd | lambda_max |" in table
    assert "![alignment](alignment.png)" in table
