"""Shared by the benchmark scripts: the command that ran, their result files,
and `benchmarks/RESULTS.md`."""

import json
import os
import shlex
import sys

HEADER = (
    "# Benchmark results\n\n"
    "Written by `scripts/benchmark*.py`; each section says how it was measured. "
    "Machines here are shared: compare ratios measured in one run, not absolute "
    "times across sections.\n\n"
)


def write_results(output_dir, name, result, markdown):
    """Writes `<output_dir>/<name>.json` (`result`) and `<name>.md`
    (`markdown`), rebuilds `RESULTS.md` and prints the markdown."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
    write_results_index(output_dir)
    print(markdown)


def write_results_index(output_dir):
    """Rebuilds `RESULTS.md` in `output_dir` from every other `*.md` there."""
    sections = sorted(
        f for f in os.listdir(output_dir) if f.endswith(".md") and f != "RESULTS.md"
    )
    with open(os.path.join(output_dir, "RESULTS.md"), "w") as f:
        f.write(HEADER)
        for name in sections:
            with open(os.path.join(output_dir, name)) as section:
                f.write(section.read().rstrip("\n") + "\n\n")


def command_line():
    """The command that is running, as a reader reruns it from the repository root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.relpath(os.path.abspath(sys.argv[0]), root)
    return " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])
