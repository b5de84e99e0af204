"""Shared by the benchmark scripts: rebuilds `benchmarks/RESULTS.md`."""

import os

HEADER = (
    "# Benchmark results\n\n"
    "Written by `scripts/benchmark*.py`; each section says how it was measured. "
    "Machines here are shared: compare ratios measured in one run, not absolute "
    "times across sections.\n\n"
)


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
