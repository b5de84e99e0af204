"""Checks a table of bad configurations in one test.

Each case is `(label, make, error, match)`: calling `make()` must raise
`error` with a message that `match` (a regular expression) finds, which names
the argument and shows the value received. All cases run and every miss is
reported at once. One test per table, not one per case: the suite's
per-test set-up (`clear_session`) costs more than the cases themselves.
"""

import os
import re

TESTS = os.path.dirname(os.path.abspath(__file__))


def misses(cases):
    """The cases that do not raise as expected, one line each."""
    found = []
    for label, make, error, match in cases:
        try:
            make()
        except error as e:
            if not re.search(match, str(e), re.DOTALL):
                found.append(f"{label}: {type(e).__name__}({str(e)!r}) does not match {match!r}")
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            found.append(f"{label}: raised {type(e).__name__}({str(e)!r}), not {error.__name__}")
        else:
            found.append(f"{label}: raised nothing, expected {error.__name__}")
    return found


def assert_each_raises(cases):
    """Asserts every case raises its error with a message that matches."""
    assert cases, "no cases"
    found = misses(cases)
    assert not found, f"{len(found)} of {len(cases)} cases:\n" + "\n".join(found)


def assert_tests_exist(places):
    """Each `"path::test"` (path relative to tests/) names a test function
    in that file: a case said to be checked elsewhere is checked there."""
    for place in set(places):
        path, test = place.split("::")
        with open(os.path.join(TESTS, path)) as f:
            assert f"def {test}(" in f.read(), place
