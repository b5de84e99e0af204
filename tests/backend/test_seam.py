"""TensorFlow is imported only behind the backend seam."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "keras_eigensam"
ALLOWED = ("backend", "experiments")


def _imports_tensorflow(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(name == "tensorflow" or name.startswith("tensorflow.") for name in names):
            return True
    return False


def test_tensorflow_is_imported_only_in_backend_and_experiments():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in ALLOWED and _imports_tensorflow(path)
    ]
    assert offenders == []


def test_the_check_sees_an_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tensorflow.python import framework\n")
    assert _imports_tensorflow(module)
