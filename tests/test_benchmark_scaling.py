"""`scripts/benchmark_scaling.py`: cost exponents from step results.

The inputs are step results written here (the shape `benchmark.py` writes),
with times and memory chosen so that each exponent is known in closed form;
parameter counts are counted by hand from the MLP's layers.
"""

import json
import math
import os

import pytest

from tests.test_scripts import REPO
from tests.test_scripts import assert_ok
from tests.test_scripts import run_script

SCALING = os.path.join(REPO, "scripts", "benchmark_scaling.py")


def _mlp_parameters(inputs, hidden=(128, 128), classes=10):
    sizes = [inputs, *hidden, classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def _result(input_size, batch, sgd, sam, plain, refresh, sam_mib, refresh_mib, resident=None):
    """`resident`: also resident-memory figures, which the tensor figures
    (`sam_mib`, `refresh_mib`) override; without it, resident ones only."""
    def steps(**medians):
        return {label: {"median_s": s} for label, s in medians.items()}

    return {
        "model": "mlp", "input_shape": [str(input_size)], "batch_size": batch,
        "methods": ["sgd", "sam", "eigensam"],
        "modes": {"xla": {
            "steps": steps(sgd=sgd, sam=sam, eigensam=plain, eigensam_refresh=refresh),
            "amortised": {"eigensam@k=100": {"ratio_to_sam": (plain + (refresh - plain) / 100) / sam}},
        }},
        "memory": {
            label: {"peak_mib": mib} if resident is None
            else {"peak_mib": resident[i], "tensor_peak_mib": mib}
            for i, (label, mib) in enumerate(
                [("sam", sam_mib), ("eigensam_refresh", refresh_mib)]
            )
        },
    }


def test_exponents_against_batch_size_and_parameters(tmp_path):
    # Batch 8 -> 16 (same net): SGD doubles (b = 1), SAM grows by √2 (0.5),
    # the refresh's extra time (6 s) by 4 (2), memory stays (0).
    results = {
        "small_b8": _result(8, 8, 1.0, 2.0, 2.0, 8.0, 100.0, 300.0),
        "small_b16": _result(8, 16, 2.0, 2.0 * math.sqrt(2), 3.0, 27.0, 100.0, 300.0),
        # Batch 8, more parameters: SGD grows by 3.
        # Its resident figures (SAM's unresolved) give way to the tensors'.
        "wide_b8": _result(64, 8, 3.0, 6.0, 6.0, 24.0, 200.0, 900.0, resident=(20.0, 950.0)),
    }
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    process = run_script(
        SCALING, f"--inputs={','.join(results)}", f"--output_dir={tmp_path}",
        "--output_name=scaling",
    )
    assert_ok(process)
    written = json.loads((tmp_path / "scaling.json").read_text())
    rows = {r["input"]: r for r in written["rows"]}
    assert rows["small_b8"]["num_parameters"] == _mlp_parameters(8)
    assert rows["wide_b8"]["num_parameters"] == _mlp_parameters(64)
    assert rows["small_b8"]["modes"]["xla"]["refresh_in_sgd_steps"] == pytest.approx(6.0)
    assert rows["wide_b8"]["refresh_memory_x_sam"] == pytest.approx(4.5)
    pairs = {(e["against"], e["from"], e["to"]): e for e in written["exponents"]}
    # small_b16 and wide_b8 differ in two things: no pair.
    assert set(pairs) == {
        ("batch size", "small_b8", "small_b16"), ("parameters", "small_b8", "wide_b8"),
    }
    batch = pairs["batch size", "small_b8", "small_b16"]["exponents"]
    assert batch["sgd_s"] == pytest.approx(1.0)
    assert batch["sam_s"] == pytest.approx(0.5)
    assert batch["refresh_extra_s"] == pytest.approx(2.0)
    assert batch["sam_memory_mib"] == pytest.approx(0.0)
    width = pairs["parameters", "small_b8", "wide_b8"]
    ratio = _mlp_parameters(64) / _mlp_parameters(8)
    assert width["size_ratio"] == pytest.approx(ratio)
    assert width["exponents"]["sgd_s"] == pytest.approx(math.log(3) / math.log(ratio))
    assert width["exponents"]["refresh_memory_mib"] == pytest.approx(math.log(3) / math.log(ratio))
    table = (tmp_path / "scaling.md").read_text()
    assert "| batch size | small_b8 → small_b16 | 2.00 | xla | 1.00 | 0.50 | 2.00 | 0.00 |" in table
    assert "| small_b8 | mlp | 0.0 M | 8 | –, – | xla | 1.00 | 2.00 | 2.00 | 6.0 | 6.0 |" in table
    assert "## Scaling" in (tmp_path / "RESULTS.md").read_text()


def test_an_input_without_sam_is_refused(tmp_path):
    result = _result(8, 8, 1.0, 2.0, 2.0, 8.0, 100.0, 300.0)
    result["methods"] = ["sgd", "eigensam"]
    (tmp_path / "no_sam.json").write_text(json.dumps(result))
    process = run_script(SCALING, "--inputs=no_sam", f"--output_dir={tmp_path}")
    assert process.returncode != 0
    assert "no_sam.json did not time ['sam']" in process.stderr
