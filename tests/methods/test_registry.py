"""Tests of `keras_eigensam.methods.registry`."""

import inspect
import pathlib

import keras
import pytest

import keras_eigensam as ks
from keras_eigensam.methods import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_method_is_registered_once_under_a_lowercase_name():
    assert registry.names() == (
        "sam", "asam", "eigensam", "xsam",
        "gsam", "wsam", "friendlysam", "looksam", "esam", "momentumsam",
    )
    assert [e.name for e in registry.entries()] == list(registry.names())
    for entry in registry.entries():
        assert entry.name == entry.name.lower()
        assert issubclass(entry.cls, ks.SharpnessMethod)
        assert registry.get(entry.name) is entry
        # Serializable: a saved model names the class it was trained with.
        assert keras.saving.get_registered_object(
            f"keras_eigensam>{entry.cls.__name__}"
        ) is entry.cls
        for text in (entry.perturbation, entry.descent, entry.passes, entry.summary):
            assert text and "\n" not in text
        assert entry.reference.startswith("[") and "](https://arxiv.org/" in entry.reference


def test_registry_is_reachable_from_the_package():
    assert ks.methods.registry is registry


def test_unknown_name_error_names_argument_value_and_known_names():
    with pytest.raises(ValueError, match=r"`method` must be one of the registered "
                       r"methods \['sam', 'asam', 'eigensam', 'xsam', 'gsam', .*\]\. "
                       r"Received: method='adam'"):
        registry.get("adam")


@pytest.mark.parametrize("name", registry.names())
def test_defaults_are_the_constructor_signature(name):
    cls = registry.get(name).cls
    signature = inspect.signature(cls.__init__).parameters
    expected = {
        key: p.default
        for key, p in signature.items()
        if key != "self" and p.kind is not p.VAR_KEYWORD
    }
    if cls.requires_tracker:  # and what its default tracker is built with
        expected.update(cls().tracker.get_config())
        assert expected["refresh_every"] == cls.default_refresh_every
        assert expected["which"] == "largest"
    assert registry.defaults(name) == expected
    # And the instance `create` makes with no arguments has them.
    method = registry.create(name)
    assert type(method) is cls
    config = method.get_config()
    for key, value in registry.defaults(name).items():
        assert config.get(key, value) == value, key


def test_known_defaults_per_method():
    # The papers' defaults, read from the signatures (never restated there).
    assert {n: registry.defaults(n).get("rho") for n in registry.names()} == {
        "sam": 0.05, "asam": 0.5, "eigensam": 0.05, "xsam": 0.05, "gsam": None,
        "wsam": 0.05, "friendlysam": 0.05, "looksam": 0.05, "esam": 0.05,
        "momentumsam": 0.3,
    }
    assert registry.defaults("gsam") == {
        "rho_max": 0.05, "rho_min": 0.01, "alpha": 0.2, "lr_max": None, "lr_min": None,
    }
    assert registry.defaults("wsam") == {"rho": 0.05, "gamma": 0.9, "decouple": True}
    assert registry.defaults("friendlysam") == {"rho": 0.05, "sigma": 1.0, "lmbda": 0.6}
    assert registry.defaults("looksam") == {"rho": 0.05, "k": 5, "alpha": 0.7}
    assert registry.defaults("esam") == {"rho": 0.05, "beta": 0.6, "gamma": 0.5, "seed": None}
    assert registry.defaults("eigensam")["refresh_every"] == 100
    assert registry.defaults("xsam")["refresh_every"] == 5


def test_create_passes_arguments():
    method = registry.create("eigensam", alpha=0.1, refresh_every=10, seed=3)
    assert type(method) is ks.EigenSAM and method.alpha == 0.1
    assert method.get_config()["refresh_every"] == 10
    assert registry.create("xsam", correction="projection").correction == "projection"


def test_create_rejects_unknown_arguments_naming_them_and_the_accepted_ones():
    with pytest.raises(ValueError) as info:
        registry.create("asam", alpha=0.1, gamma=3)
    message = str(info.value)
    assert "Method 'asam' (ASAM) takes no argument `alpha`, `gamma`" in message
    assert (
        "its arguments are ['curvature', 'eta', 'hessian_batch_size', 'hessian_microbatch_size', 'hessian_training', 'hvp_mode', 'interval', 'lanczos_basis_dtype', "
        "'num_matvecs', 'perturbed_variables', 'refresh_every', 'rho', 'seed', "
        "'tracker', 'which']" in message
    )
    assert message.endswith("Received: alpha=0.1, gamma=3")


def test_create_lets_the_constructor_check_values():
    with pytest.raises(ValueError, match="`rho` must be a float >= 0.0"):
        registry.create("sam", rho=-1.0)


def test_markdown_table_has_a_row_per_method_with_its_defaults():
    lines = registry.markdown_table().splitlines()
    assert lines[0] == (
        "| method | perturbation `e` | descent gradient | passes per step "
        "| defaults | reference |"
    )
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(registry.names())
    asam = rows[registry.names().index("asam")]
    assert asam.startswith("| `ASAM` (`asam`) | ")
    assert "| `rho=0.5`, `eta=0.01` |" in asam
    for row in rows:
        # Six cells: escaped pipes (`\|w\|`) do not split a cell.
        assert row.replace("\\|", "").count("|") == 7, row


def test_readme_method_table_is_the_registry_table():
    readme = (ROOT / "README.md").read_text()
    begin = readme.index("<!-- Generated from keras_eigensam/methods/registry.py")
    begin = readme.index("\n", begin) + 1
    end = readme.index("<!-- End of the generated method table. -->")
    assert readme[begin:end] == registry.markdown_table(), (
        "README.md's method table is stale: run `python scripts/readme_methods_table.py`"
    )
