"""The README stays true: its test command is CI's, and its examples run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quick_start_has_two_commands_and_ci_runs_the_test_command():
    commands = _blocks("bash")[:2]
    assert len(commands) == 2
    main_job, tests = (c.strip() for c in commands)
    assert "scripts/" in main_job and "pip install" in main_job
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "the README's test command must be the one .ci/run runs"
    assert (ROOT / main_job.split(".venv/bin/python ")[-1].split()[0]).exists()


def test_python_examples_run():
    namespace = {}
    blocks = _blocks("python")
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert "history" in namespace
