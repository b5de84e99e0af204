"""Tests of `keras_eigensam.install`: the install advice points at setup.cfg's URL."""

import configparser
import email.message
import pathlib
import re

from keras_eigensam import install

SETUP_CFG = pathlib.Path(__file__).resolve().parents[1] / "setup.cfg"


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    return parser


def _metadata(**fields):
    metadata = email.message.Message()
    for key, values in fields.items():
        for value in values if isinstance(values, list) else [values]:
            metadata[key.replace("_", "-")] = value
    return metadata


def test_fallback_url_is_setup_cfgs_url_and_source():
    metadata = _setup_cfg()["metadata"]
    assert install.SOURCE_URL == metadata["url"]
    urls = dict(
        line.split("=", 1) for line in metadata["project_urls"].strip().splitlines()
    )
    urls = {k.strip(): v.strip() for k, v in urls.items()}
    assert urls == {"Source": metadata["url"]}


def test_every_install_line_in_the_docs_uses_setup_cfgs_url():
    # `pip install "…@ git+URL"` and `git clone URL` (".git" or not).
    url = _setup_cfg()["metadata"]["url"]
    root = SETUP_CFG.parent
    docs = [root / "README.md", *sorted((root / "colab").glob("*.ipynb"))]
    end = r"[\s\"'\\`@#]"  # of a URL in a command, in JSON or Markdown
    pattern = rf"(?:git\+|git clone )(https://(?:(?!{end}).)+?)(?:\.git)?(?={end}|$)"
    found = [
        (path.name, u) for path in docs for u in re.findall(pattern, path.read_text())
    ]
    assert ("README.md", url) in found
    assert {u for _, u in found} == {url}, found


def test_advice_reads_the_url_from_the_metadata():
    source = _metadata(
        Home_page="https://example.org/home",
        Project_URL=[
            "Docs, https://example.org/docs",
            "Source, https://example.org/src",
        ],
    )
    assert install.pip_install("cpu", source) == (
        'pip install "keras-eigensam[cpu] @ git+https://example.org/src"'
    )
    home = _metadata(Home_page="https://example.org/home")
    assert install.source_url(home) == "https://example.org/home"
    # An install made before setup.cfg had a URL: the literal.
    for old in (_metadata(), _metadata(Home_page="UNKNOWN")):
        assert install.source_url(old) == install.SOURCE_URL
    # The installed package (whatever its metadata) gives a git+ URL.
    assert install.pip_install("scripts").startswith(
        'pip install "keras-eigensam[scripts] @ git+https://'
    )


def test_colab_extra_leaves_tensorflow_alone():
    colab = _setup_cfg()["options.extras_require"]["colab"].split()
    names = {re.split("[<>=~!]", requirement)[0] for requirement in colab}
    assert "tensorflow-datasets" in names
    assert not names & {"tensorflow", "tensorflow-cpu", "tensorboard", "tf-keras"}
    assert not [r for r in colab if "2.21" in r]
