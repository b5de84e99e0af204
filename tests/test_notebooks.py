"""The Colab notebooks run headless with a small setting and are stored clean.

Each notebook is executed by nbclient in an ipykernel `python3` kernel, as
papermill would run it: its `parameters` cell is followed by an injected cell
with smoke settings (tiny epochs and steps, `SMOKE = True`, outputs in
`tmp_path`), and the install lines (`%pip`, `!`) are left out, since Colab's
business is not the test's. A cell that raises fails the test
(`nbclient.exceptions.CellExecutionError`).
"""

import ast
import configparser
import json
import pathlib
import re
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
IDS = [n.name for n in NOTEBOOKS]

# Per notebook: the smoke parameters (every name must be a parameter of the
# notebook), code run right after them, and checks run after the last cell.
SMOKE = {
    "quickstart.ipynb": dict(
        parameters=dict(EPOCHS=2, MAX_STEPS_PER_EPOCH=2),
        checks="assert os.path.getsize(figure) > 10_000, figure",
    ),
    "sam_vs_eigensam.ipynb": dict(
        parameters=dict(EPOCHS=1, MAX_STEPS_PER_EPOCH=2),
        checks=(
            "assert os.path.getsize(comparison['curvature_plot']) > 10_000\n"
            "assert len(eigvals) == 3"
        ),
    ),
    # CIFAR-10 from `tfds.testing.mock_data` (random images, no network),
    # until the next notebook's `%reset -f`; a small CNN, since an XLA
    # ResNet-18 compiles for minutes on a CPU.
    "eigensam_cifar10_tpu.ipynb": dict(
        parameters=dict(
            EPOCHS=1, MAX_STEPS_PER_EPOCH=2, BATCH_SIZE=8, MODEL="small_cnn"
        ),
        prelude=(
            # Held by a name: a context manager collected exits. The next
            # notebook's `%reset -f` collects it.
            "import tensorflow_datasets as tfds\n"
            "_tfds_mock = tfds.testing.mock_data(num_examples=16)\n"
            "_tfds_mock.__enter__()"
        ),
        checks=(
            "assert results['dataset'] == 'cifar10' and results['steps_per_epoch'] == 2\n"
            "plot = os.path.join(results['run_dir'], results['files']['curvature_plot'])\n"
            "assert os.path.getsize(plot) > 10_000"
        ),
    ),
}
# Marked slow: they run first, in one worker (see tests/conftest.py), so
# they share its kernel (see `kernel`).
RUNS = [pytest.param(n, id=n.name, marks=pytest.mark.slow) for n in NOTEBOOKS]
# Shell and install lines are Colab's business.
_SHELL = ("!", "%pip")


def _setup():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup


def _notebook(path):
    return json.loads(path.read_text())


def _source(cell):
    return "".join(cell["source"])


def _parameters_index(cells):
    tagged = [
        i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", [])
    ]
    assert len(tagged) == 1, "a notebook has exactly one cell tagged `parameters`"
    return tagged[0]


def _install_lines(cells):
    return [
        line.strip()
        for c in cells
        if c["cell_type"] == "code"
        for line in _source(c).splitlines()
        if "pip install" in line
    ]


def test_every_notebook_has_smoke_settings():
    assert sorted(SMOKE) == IDS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_without_outputs(notebook):
    for cell in _notebook(notebook)["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_parameters_cell_holds_the_settings(notebook):
    cells = _notebook(notebook)["cells"]
    parameters = ast.parse(_source(cells[_parameters_index(cells)]))
    assigned = {t.id for node in parameters.body for t in node.targets}
    assert all(isinstance(node, ast.Assign) for node in parameters.body)
    assert {"SMOKE", "OUTPUT_DIR"} <= assigned
    assert set(SMOKE[notebook.name]["parameters"]) <= assigned
    text = notebook.read_text()
    assert "os.environ.get" not in text and "KERAS_EIGENSAM_NOTEBOOK" not in text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_install_line_is_this_repository_with_an_existing_extra(notebook):
    setup = _setup()
    url = setup["metadata"]["url"]
    extras = set(setup["options.extras_require"])
    (line,) = _install_lines(_notebook(notebook)["cells"])
    match = re.fullmatch(r'%pip install -q "keras-eigensam\[(\w+)\] @ git\+(\S+)"', line)
    assert match, line
    assert match[1] in extras
    assert match[2] == url
    # Colab's TensorFlow stays: the extra must not reinstall it.
    requirements = setup["options.extras_require"][match[1]].split()
    names = {re.split(r"[\[<>=~!;]", r)[0].lower() for r in requirements}
    assert not names & {"tensorflow", "tensorflow-cpu", "tensorflow-gpu"}, names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_readme_has_a_colab_badge(notebook):
    repository = _setup()["metadata"]["url"].removeprefix("https://github.com/")
    link = (
        "(https://colab.research.google.com/assets/colab-badge.svg)]("
        f"https://colab.research.google.com/github/{repository}/blob/main/colab/{notebook.name})"
    )
    assert link in (ROOT / "README.md").read_text()


def _smoke_notebook(notebook, tmp_path):
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    smoke = SMOKE[notebook.name]
    settings = dict(smoke["parameters"], SMOKE=True, OUTPUT_DIR=str(tmp_path / "runs"))
    injected = "\n".join(
        [
            # The kernel must be this interpreter (the venv's ipykernel).
            "import sys",
            f"assert sys.prefix == {sys.prefix!r}, sys.executable",
            *(f"{name} = {value!r}" for name, value in settings.items()),
            smoke.get("prelude", ""),
        ]
    )
    cell = nbformat.v4.new_code_cell(injected)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb.cells) + 1, cell)
    # The kernel is shared (see `kernel`): a clean namespace, in tmp_path.
    nb.cells.insert(
        0, nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.chdir({str(tmp_path)!r})\ndel os")
    )
    nb.cells.append(nbformat.v4.new_code_cell("import os\n" + smoke["checks"]))
    for c in nb.cells:
        if c.cell_type == "code":
            c.source = "\n".join(
                line for line in c.source.splitlines() if not line.lstrip().startswith(_SHELL)
            )
    return nb


@pytest.fixture(scope="module")
def kernel():
    """One kernel for the notebooks of a test process.

    Starting a kernel and importing TensorFlow in it costs about 10 s; each
    notebook starts with `%reset -f` (a fresh namespace, modules stay
    imported; the CIFAR notebook's TFDS mock ends with its namespace).
    """
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    yield km
    if km.has_kernel:
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("notebook", RUNS)
def test_notebook_runs(notebook, tmp_path, kernel):
    import nbclient

    nb = _smoke_notebook(notebook, tmp_path)
    client = nbclient.NotebookClient(
        nb,
        km=kernel,
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
