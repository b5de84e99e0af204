"""Rewrites the README's method table from `keras_eigensam.methods.registry`.

    python scripts/readme_methods_table.py           # rewrite README.md
    python scripts/readme_methods_table.py --check   # exit 1 if it is stale

The table sits between the two marker comments of `BEGIN` and `END`;
`tests/methods/test_registry.py` checks that it is up to date.
"""

import os
import sys

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
BEGIN = (
    "<!-- Generated from keras_eigensam/methods/registry.py by "
    "scripts/readme_methods_table.py: edit the registry, not this table. -->\n"
)
END = "<!-- End of the generated method table. -->\n"

FLAGS = flags.FLAGS
flags.DEFINE_bool("check", False, "Only check that README.md is up to date.")


def with_table(readme, table):
    """`readme` with the text between `BEGIN` and `END` replaced by `table`."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + table + END + tail


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from keras_eigensam.methods import registry

    with open(README) as f:
        readme = f.read()
    updated = with_table(readme, registry.markdown_table())
    if FLAGS.check:
        if updated != readme:
            sys.exit("README.md's method table is stale: run scripts/readme_methods_table.py")
        return
    with open(README, "w") as f:
        f.write(updated)


if __name__ == "__main__":
    app.run(main)
