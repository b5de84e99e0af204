"""Tests of `keras_eigensam.experiments.comparison`."""

import pytest

from keras_eigensam.experiments import comparison
from keras_eigensam.experiments.config import ConfigError


def test_configs_for_methods_give_each_method_its_arguments():
    configs = comparison.configs_for_methods(
        ["sgd", "asam", "eigensam"],
        [0, 1],
        {"rho": 0.1, "alpha": 0.3},
        perturbation_scope="global",
    )
    assert [(c.method, c.seed, c.method_args) for c in configs] == [
        ("sgd", 0, {}),
        ("sgd", 1, {}),
        ("asam", 0, {"rho": 0.1}),
        ("asam", 1, {"rho": 0.1}),
        ("eigensam", 0, {"alpha": 0.3, "rho": 0.1}),
        ("eigensam", 1, {"alpha": 0.3, "rho": 0.1}),
    ]
    assert [c.perturbation_scope for c in configs[::2]] == [None, "global", "global"]
    with pytest.raises(ConfigError, match=r"Method 'sam' \(SAM\) takes no argument `eta`"):
        comparison.configs_for_methods(["sgd", "sam"], [0], {"eta": 0.1})


def test_compare_pairs_seeds_and_tabulates_method_arguments(tmp_path):
    configs = comparison.configs_for_methods(
        ["sgd", "sam"],
        [0],
        {"rho": 0.1},
        output_dir=str(tmp_path),
        epochs=1,
        max_steps_per_epoch=2,
        augment="none",
        verbose=0,
    )
    lines = []
    result = comparison.compare(configs, progress=lines.append)
    assert len(lines) == 2 and lines[0].startswith("[1/2] digits-mlp-sgd")
    sgd, sam = result["rows"]
    assert (sgd["method"], sam["method"]) == ("sgd", "sam")
    assert (sgd["method_args"], sam["method_args"]) == ({}, {"rho": 0.1})
    assert sgd["delta_vs_first"] == {"mean": 0.0, "std": 0.0}
    expected = (
        result["runs"][1]["final_test_accuracy"]
        - result["runs"][0]["final_test_accuracy"]
    )
    assert sam["delta_vs_first"]["mean"] == pytest.approx(expected)
    table = comparison.comparison_markdown(result)
    assert table.splitlines()[2].startswith("| sgd | – | ")
    assert table.splitlines()[3].startswith("| sam | rho=0.1 | ")
    assert not any("finished before" in line for line in lines)
    # Again: the finished runs are reused, and the progress lines say so.
    again = []
    assert comparison.compare(configs, progress=again.append)["rows"][1] == sam
    assert all(line.endswith("not trained again)") for line in again), again


def test_split_method_args_gives_each_method_the_keys_it_takes():
    split = comparison.split_method_args(["sgd", "asam", "eigensam"], {"rho": 0.1, "alpha": 0.3})
    assert split == {"sgd": {}, "asam": {"rho": 0.1}, "eigensam": {"rho": 0.1, "alpha": 0.3}}
    with pytest.raises(ConfigError) as info:
        comparison.split_method_args(["sgd", "sam", "asam"], {"eta": 0.1, "correction": "x"})
    assert str(info.value) == (
        "No method of ['sam', 'asam'] takes `correction`; they take ['curvature', 'eta', "
        "'hessian_batch_size', 'hessian_microbatch_size', 'hessian_training', 'hvp_mode', 'interval', 'lanczos_basis_dtype', 'num_matvecs', "
        "'perturbed_variables', 'refresh_every', 'rho', 'seed', 'track_eigen', "
        "'tracker', 'which']. Received: correction='x'"
    )
    # One method: its own name and arguments.
    with pytest.raises(ConfigError, match=r"Method 'asam' \(ASAM\) takes no argument `alpha`"):
        comparison.split_method_args(["sgd", "asam"], {"alpha": 0.3})
    with pytest.raises(ConfigError, match="method='sgd' .* takes no method arguments"):
        comparison.split_method_args(["sgd"], {"rho": 0.1})


def test_markdown_shows_the_probe_eigenvalue_when_runs_measured_it():
    runs = [
        {"final_test_accuracy": 0.9, "final_metrics": {"hessian_top_eigenvalue": 4.0}},
        {"final_test_accuracy": 0.8, "final_metrics": {"hessian_top_eigenvalue": 6.0}},
    ]
    assert comparison._final_metric(runs, "hessian_top_eigenvalue") == {
        "mean": 5.0, "std": pytest.approx(2 ** 0.5),
    }
    assert comparison._final_metric(runs + [{"final_metrics": {}}], "hessian_top_eigenvalue") is None
    stats = {"mean": 0.5, "std": 0.1}
    row = {
        "method": "sam", "method_args": {}, "seeds": [0, 1],
        "final_test_accuracy": stats, "best_test_accuracy": stats, "delta_vs_first": None,
        "final_test_loss": stats, "train_time_s": stats,
        "final_top_eigenvalue": {"mean": 5.0, "std": 1.4142},
    }
    table = comparison.comparison_markdown({"first_method": "sam", "rows": [row]})
    assert "final λ_max (probe)" in table.splitlines()[0]
    assert "| 5 ± 1.4 |" in table
    row["final_top_eigenvalue"] = None
    assert "λ_max" not in comparison.comparison_markdown({"first_method": "sam", "rows": [row]})
