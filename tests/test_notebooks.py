"""The Colab notebooks run headless with a small setting and are stored clean."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))


def _code(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    return cells, ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(notebook):
    cells, _ = _code(notebook)
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_EIGENSAM_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("KERAS_EIGENSAM_NOTEBOOK_OUTPUT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    _, sources = _code(notebook)
    namespace = {}
    for source in sources:
        # Shell and magic lines (installs) are Colab's business.
        lines = [l for l in source.splitlines() if not l.lstrip().startswith(("!", "%"))]
        exec(compile("\n".join(lines), notebook.name, "exec"), namespace)  # noqa: S102
    assert pathlib.Path(namespace["comparison"]["curvature_plot"]).stat().st_size > 10_000
    assert len(namespace["eigvals"]) == 3
