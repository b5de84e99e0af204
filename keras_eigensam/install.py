"""How to install keras-eigensam and its extras: the advice its ImportErrors give.

The package is installed from its source repository, not from PyPI, so the
advice is a `pip install "keras-eigensam[EXTRA] @ git+URL"` line. The URL is
the one in `setup.cfg` (`url`, and `Source` in `project_urls`), read from the
installed package's metadata; `SOURCE_URL` is used only when the metadata
lacks it (e.g. an editable install made before the URL was added).

Imports nothing but the standard library: `keras_eigensam/__init__.py` uses it
before it knows whether TensorFlow is installed.
"""

import importlib.metadata

DISTRIBUTION = "keras-eigensam"
#: The source repository, as `setup.cfg` says (a test keeps the two equal).
SOURCE_URL = "https://github.com/keras-eigensam/keras-eigensam"


def source_url(metadata=None):
    """The source repository's URL from the package metadata.

    Args:
        metadata: The distribution's metadata (an `email.message.Message`
            like `importlib.metadata.metadata` returns), or `None` to read
            the installed one. Defaults to `None`.

    Returns:
        The `Source` project URL, else the `Home-page`, else `SOURCE_URL`.
    """
    if metadata is None:
        try:
            metadata = importlib.metadata.metadata(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            return SOURCE_URL
    for entry in metadata.get_all("Project-URL") or ():
        label, _, url = entry.partition(",")
        if label.strip().lower() == "source" and url.strip():
            return url.strip()
    home = metadata.get("Home-page")
    if home and home.strip() and home.strip() != "UNKNOWN":
        return home.strip()
    return SOURCE_URL


def pip_install(extra, metadata=None):
    """The command that installs the package with `extra` from its source.

    Example: `pip install "keras-eigensam[cpu] @ git+https://github.com/..."`.
    """
    return f'pip install "{DISTRIBUTION}[{extra}] @ git+{source_url(metadata)}"'


def missing_extra(package, purpose, extra="scripts"):
    """The ImportError for an optional `package` that `purpose` needs."""
    return ImportError(
        f"{purpose} needs `{package}`. Install the `{extra}` extra: "
        f"`{pip_install(extra)}`."
    )
