"""End-to-end tests of `scripts/train.py` and `scripts/compare.py` as subprocesses.

Every run is tiny (a few steps of the digits MLP, no augmentation). The
distributed runs use `perturbation_scope=global`, under which a SAM step does
not depend on the number of replicas, and are compared with one device.

The runs that several tests read are module fixtures (`one_device`,
`straight`, `two_workers`): built once per test process. The resume tests
(issue 12, items 8 and 9) SIGKILL a run at a random step inside an epoch
(`train.py --crash_at_step`, drawn with a fixed seed), start it again and
compare it bit for bit with the uninterrupted fixture run. Under `pytest -n` this module's
tests, marked `slow`, are handed to one worker together (see
`tests/conftest.py`), so each is built once.
"""

import ast
import csv
import dataclasses
import importlib.util
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from keras_eigensam.experiments import config
from keras_eigensam.experiments.config import ConfigError
from keras_eigensam.experiments import results as results_lib
from keras_eigensam.methods import registry

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "scripts", "train.py")
COMPARE = os.path.join(REPO, "scripts", "compare.py")
BENCHMARK = os.path.join(REPO, "scripts", "benchmark.py")
BENCHMARK_EIGENVECTOR = os.path.join(REPO, "scripts", "benchmark_eigenvector.py")
TINY_BENCHMARK = [
    "--model=mlp", "--input_shape=64", "--batch_size=16", "--rounds=1",
    "--steps_per_round=1", "--warmup=1", "--notf_keras",
]
TINY = ["--epochs=1", "--max_steps_per_epoch=2", "--augment=none"]
# Two epochs of five steps, perturbing with the all-reduced gradient, the
# top eigenvector tracked (one power iteration every third step: the
# tracker at its cheapest, its vector still changing at every refresh).
DISTRIBUTED = [
    "--method=sam",
    "--method_args=tracker=True,refresh_every=3,which=magnitude,num_matvecs=1",
    "--perturbation_scope=global",
    "--epochs=2",
    "--max_steps_per_epoch=5",
    "--augment=none",
]
# One device vs two replicas: the gradient all-reduce sums two half-batch
# means instead of taking one full-batch mean, a float32 rounding difference
# (~1e-7 relative per step) that ten steps at learning rate 0.1 keep below
# 1e-6 (measured: 2e-7); 1e-5 leaves a margin and is still far below the
# effect of any real difference (one changed batch moves weights by ~1e-2).
RTOL, ATOL = 1e-5, 1e-5


def run_script(script, *args, env=None, timeout=300):
    env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def only_run_dir(output_dir):
    (name,) = [n for n in os.listdir(output_dir) if not n.startswith(".")]
    return os.path.join(output_dir, name)


def read_results(output_dir):
    with open(os.path.join(only_run_dir(output_dir), "results.json")) as f:
        return json.load(f)


def read_history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    return [np.array(w) for w in model.weights]


def backup_state(run_dir, worker=0):
    """`{name: array}` of a worker's `BackupAndRestore` weights file (the
    network, optimizer and method variables)."""
    path = os.path.join(
        run_dir, *(["workers", f"worker{worker}"] if worker else []), "backup",
        "latest.weights.h5",
    )
    state = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: state.__setitem__(name, item[()])
            if isinstance(item, h5py.Dataset) else None
        )
    return state


def assert_same_backup(run_dir, reference_dir, worker=0):
    """The backups of a worker of two runs hold the same variables, bit for
    bit; returns the first's."""
    state, reference = backup_state(run_dir, worker), backup_state(reference_dir, worker)
    assert state.keys() == reference.keys()
    for name in state:
        np.testing.assert_array_equal(state[name], reference[name], err_msg=name)
    return state


def assert_ok(process):
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The single-device run the distributed runs must agree with."""
    output_dir = str(tmp_path_factory.mktemp("one_device"))
    assert_ok(
        run_script(
            TRAIN, *DISTRIBUTED, "--strategy=default", f"--output_dir={output_dir}"
        )
    )
    return only_run_dir(output_dir)


#: Three epochs of Eigen-SAM with standard augmentation, refreshing every
#: second step (so a refresh falls in every epoch).
RESUMABLE = [
    "--method=eigensam",
    "--method_args=refresh_every=2",
    "--epochs=3",
    "--max_steps_per_epoch=3",
    "--augment=standard",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """`(process, run_dir)` of an uninterrupted `RESUMABLE` run: the run a
    killed and resumed one must end as, and the Eigen-SAM run of
    `test_train_writes_results_for_each_method`."""
    output_dir = str(tmp_path_factory.mktemp("straight"))
    process = run_script(TRAIN, *RESUMABLE, f"--output_dir={output_dir}")
    assert_ok(process)
    return process, only_run_dir(output_dir)


def assert_same_run(run_dir, reference_dir):
    results = json.load(open(os.path.join(run_dir, "results.json")))
    reference = json.load(open(os.path.join(reference_dir, "results.json")))
    assert results["run_name"] == reference["run_name"]
    for key in ("final_train_loss", "final_test_loss"):
        np.testing.assert_allclose(results[key], reference[key], rtol=RTOL, err_msg=key)
    assert results["final_test_accuracy"] == pytest.approx(
        reference["final_test_accuracy"], abs=1 / 360
    )
    for a, b in zip(weights(run_dir), weights(reference_dir)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- each method


#: One method of each kind of step end to end through train.py (two passes,
#: a tracker, per-example losses, one pass at a perturbed point); every
#: registered method trains under the contract battery
#: (tests/methods/test_contract.py), which new methods join by themselves.
SCRIPT_METHODS = ("sgd", "sam", "eigensam", "esam", "momentumsam")


def test_script_methods_are_registered():
    assert set(SCRIPT_METHODS) - {"sgd"} <= set(registry.names())


@pytest.mark.parametrize("method", SCRIPT_METHODS)
def test_train_writes_results_for_each_method(method, tmp_path, request):
    """Each kind of method runs end to end through the script."""
    given = {}
    if method == "sam":
        # The single-device SAM run of the distribution tests.
        run_dir = request.getfixturevalue("one_device")
        epochs, process, given = 2, None, dict(
            tracker=True, refresh_every=3, which="magnitude", num_matvecs=1
        )
    elif method == "eigensam":
        # The uninterrupted run of the resume test.
        process, run_dir = request.getfixturevalue("straight")
        epochs, steps, given = 3, 3, {"refresh_every": 2}
    else:
        process = run_script(
            TRAIN, f"--method={method}", *TINY, f"--output_dir={tmp_path}"
        )
        assert_ok(process)
        run_dir = only_run_dir(str(tmp_path))
        epochs, steps = 1, 2
    if process is not None:
        # Keras's per-epoch line, then the one-line summary.
        assert re.search(rf"^{steps}/{steps} - .* - loss: ", process.stdout, re.MULTILINE)
        summary = process.stdout.strip().splitlines()[-1]
        assert (
            summary.startswith(f"digits-mlp-{method}-") and "test accuracy" in summary
        )
        assert summary.endswith("results.json")
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert set(results) == set(results_lib.RESULT_KEYS)
    assert results["method"] == method and results["epochs_completed"] == epochs
    assert 0.0 <= results["final_test_accuracy"] <= 1.0
    assert np.isfinite(results["final_train_loss"])
    assert results["num_params"] == 26_122
    assert set(results["versions"]) >= {
        "python",
        "tensorflow",
        "keras",
        "keras_eigensam",
    }
    assert results["device"]["strategy"] == "OneDeviceStrategy"
    assert results["metadata"]["flags"]["method"] == method
    assert os.path.basename(run_dir) == results["run_name"]
    for name in ("config.json", "history.csv", "model.keras", "backup", "tensorboard"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    if method == "sgd":
        assert results["method_config"] is None
    else:
        # Built with the registry's defaults (but for those given) and the
        # run's seed: what the method reports of its arguments (SAM leaves
        # out those of the tracker it does not have) agrees with the config.
        args = results["config"]["method_args"]
        assert (
            args
            == config.TrainConfig(method=method, method_args=given).resolved().method_args
        )
        assert all(args[k] == v for k, v in given.items())
        assert results["method_config"].items() <= args.items()
        radius = "rho_max" if method == "gsam" else "rho"
        assert results["method_config"][radius] == registry.defaults(method)[radius]
    if "top_eigenvalue" in results["final_metrics"]:
        assert results["final_metrics"]["top_eigenvalue"] > 0


# ---------------------------------------------------------------- resuming


def test_killed_run_resumes_from_its_backup(tmp_path, straight):
    """SIGKILLed at a random step of epoch 3 (after its step 7, 8 or 9: the
    last before the epoch's end, its history row and its backup) and started
    again, the run ends where an uninterrupted run ends (items 8 and 16 of
    issue 12): it resumes from the backup of epoch 2, and the data of epoch
    e is a function of (seed, e). (The per-step alignment log across a
    resume: test_eigen_alignment_logger.py.)"""
    _, straight_run = straight
    tmp_path = tmp_path / "resumed"
    args = RESUMABLE + [f"--output_dir={tmp_path}"]
    kill_at = random.Random(8).randrange(7, 10)
    killed = run_script(TRAIN, *args, f"--crash_at_step={kill_at}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = only_run_dir(str(tmp_path))
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    with open(os.path.join(run_dir, "backup", "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2
    assert len(read_history(run_dir)) == 2

    resumed = run_script(TRAIN, *args)
    assert_ok(resumed)
    assert "resuming after epoch 2" in resumed.stdout
    assert "Epoch 3/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    results = read_results(str(tmp_path))
    assert (
        results["initial_epoch"],
        results["epochs_run"],
        results["epochs_completed"],
    ) == (2, 1, 3)
    rows = read_history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    # The resumed epoch starts from the trained weights, not from new ones,
    # and sees the batches the uninterrupted run saw.
    assert float(rows[2]["loss"]) < float(rows[0]["loss"])
    # Bit for bit (TensorFlow's CPU kernels of this network are
    # deterministic without op determinism): the history, and every
    # variable of the last backup (network, SGD momentum, the eigenvector
    # and its refresh counters).
    assert rows == read_history(straight_run)
    assert_same_backup(run_dir, straight_run)
    # (A finished run started again trains nothing: test_training.py.)


# ---------------------------------------------------------------- distribution


def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path, one_device):
    process = run_script(
        TRAIN,
        *DISTRIBUTED,
        "--strategy=mirrored",
        "--logical_cpus=2",
        f"--output_dir={tmp_path}",
    )
    assert_ok(process)
    run_dir = only_run_dir(str(tmp_path))
    results = read_results(str(tmp_path))
    assert results["device"]["strategy"] == "MirroredStrategy"
    assert results["device"]["num_replicas"] == 2
    assert_same_run(run_dir, one_device)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(output_dir, extra_args=None):
    """Two `train.py` workers of one `DISTRIBUTED` run on 127.0.0.1 ports.

    `extra_args`: `{task index: [more flags]}`.
    """
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        )
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    TRAIN,
                    *DISTRIBUTED,
                    "--strategy=multi_worker",
                    f"--output_dir={output_dir}",
                    *(extra_args or {}).get(index, []),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=env,
            )
        )
    return workers


def finish_workers(workers, timeout=300):
    """`[(stdout, stderr)]` of each worker once it ends; any still running
    after `timeout` seconds is killed."""
    try:
        return [worker.communicate(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()


def assert_workers_ok(workers, outputs):
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-2000:] + err[-3000:]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The run directory of an uninterrupted two-worker `DISTRIBUTED` run."""
    output_dir = str(tmp_path_factory.mktemp("two_workers"))
    workers = start_workers(output_dir)
    assert_workers_ok(workers, finish_workers(workers))
    return only_run_dir(output_dir)


def test_two_workers_match_one_device(two_workers, one_device):
    run_dir = two_workers
    results = read_results(os.path.dirname(run_dir))
    assert results["device"]["strategy"] == "CollectiveAllReduceStrategy"
    assert (results["device"]["num_replicas"], results["device"]["num_workers"]) == (
        2,
        2,
    )
    # The chief wrote the run directory; worker 1 only its backup.
    assert sorted(os.listdir(os.path.join(run_dir, "workers"))) == ["worker1"]
    assert os.listdir(os.path.join(run_dir, "workers", "worker1")) == ["backup"]
    assert_same_run(run_dir, one_device)


def test_job_with_a_killed_worker_restarts_from_its_backup(tmp_path, two_workers):
    """Worker 1 is SIGKILLed at a random step of epoch 2; worker 0, left
    waiting in a collective, is killed too (what a job scheduler does), and
    the job is started again (item 9 of issue 12). Both workers resume from
    their backups of epoch 1 and the job ends where an uninterrupted one
    ends: weights, SGD momentum and the method's state (the tracked
    eigenvector, its eigenvalue and refresh counters) of both workers, and
    the history."""
    kill_at = random.Random(9).randrange(6, 10)  # epoch 2: steps 6 to 10
    workers = start_workers(tmp_path, {1: [f"--crash_at_step={kill_at}"]})
    try:
        workers[1].wait(timeout=300)
    finally:
        workers[0].kill()
        outputs = finish_workers(workers, timeout=60)
    assert workers[1].returncode == -signal.SIGKILL, outputs[1][1][-3000:]
    run_dir = only_run_dir(str(tmp_path))
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    for worker in (run_dir, os.path.join(run_dir, "workers", "worker1")):
        with open(os.path.join(worker, "backup", "training_metadata.json")) as f:
            assert json.load(f)["epoch"] == 1

    workers = start_workers(tmp_path)
    outputs = finish_workers(workers)
    assert_workers_ok(workers, outputs)
    assert all("resuming after epoch 1" in out for out, _ in outputs)
    results = read_results(str(tmp_path))
    assert (results["initial_epoch"], results["epochs_completed"]) == (1, 2)
    for worker in (0, 1):
        state = assert_same_backup(run_dir, two_workers, worker)
        # SAM's state: the eigenvector (one part per weight), its eigenvalue
        # and two refresh counters.
        assert sum(name.startswith("layers/sam/") for name in state) == 9, sorted(state)
    assert read_history(run_dir) == read_history(two_workers)


# ---------------------------------------------------------------- flags


def _flag_defaults(script):
    """`{name: default}` of the flags a script defines, read from its source."""
    defaults = {}
    for node in ast.walk(ast.parse(open(script).read())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith(
            "DEFINE_"
        ):
            defaults[node.args[0].value] = ast.literal_eval(node.args[1])
    return defaults


def test_script_flags_are_train_config_fields_with_their_defaults():
    # The scripts map the flags named after TrainConfig fields to those fields.
    fields = {f.name: f.default for f in dataclasses.fields(config.TrainConfig)}
    train = _flag_defaults(TRAIN)
    assert set(fields) - set(train) == {"method_args", "verbose"}
    compare = _flag_defaults(COMPARE)
    assert {"data_dir", "download", "strategy", "tpu"} <= set(compare)
    for name, default in [*train.items(), *compare.items()]:
        if name in fields and (name, default) != ("augment", "none"):  # compare's
            assert default == fields[name], name
    assert train["download"] is False and compare["download"] is False


# ---------------------------------------------------------------- bad flags


def _method_flags():
    spec = importlib.util.spec_from_file_location(
        "method_flags", os.path.join(REPO, "scripts", "method_flags.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_method_args():
    method_flags = _method_flags()
    assert method_flags.parse_method_args(
        ["alpha=0.1", "refresh_every=10", "hessian_training=True", "seed=None",
         "correction=projection", "hvp_mode='forward_over_backward'"]
    ) == {
        "alpha": 0.1,
        "refresh_every": 10,
        "hessian_training": True,
        "seed": None,
        "correction": "projection",
        "hvp_mode": "forward_over_backward",
    }
    assert method_flags.parse_method_args([]) == {}
    with pytest.raises(ConfigError, match="must be key=value pairs.*Received: 'alpha'"):
        method_flags.parse_method_args(["alpha"])
    with pytest.raises(ConfigError, match="sets `alpha` twice"):
        method_flags.parse_method_args(["alpha=0.1", "alpha=0.2"])


@pytest.mark.parametrize(
    "args, phrase",
    [
        (
            ["--dataset=imagenet"],
            "flag --dataset=imagenet: value should be one of <cifar10|",
        ),
        (
            ["--method=asam", "--method_args=eta=0.1,alpha=0.1"],
            "Method 'asam' (ASAM) takes no argument `alpha`; its arguments are "
            "['curvature', 'eta', 'hessian_batch_size', 'hessian_microbatch_size', 'hessian_training', 'hvp_mode', 'interval', 'lanczos_basis_dtype', "
            "'num_matvecs', "
            "'perturbed_variables', 'refresh_every', 'rho', 'seed', 'tracker', "
            "'which']. Received: alpha=0.1",
        ),
        (["--method=xsam", "--method_args=alpha=-1"], "`alpha` must be a float >= 0.0"),
        (
            ["--strategy=mirrored", "--logical_cpus=2", "--batch_size=63"],
            "must be divisible by the number of replicas (2): pass a multiple of 2",
        ),
        (
            ["--dataset=cifar10", "--data_dir={tmp}"],
            "run `tfds build cifar10 --data_dir=DIR`",
        ),
        (
            ["--model=resnet18", "--dataset=mnist1d"],
            "train.py: error: `input_shape` for 'resnet18' must have rank 3",
        ),
        (
            ["--augment=cutout", "--dataset=mnist1d"],
            "train.py: error: `augment='cutout'` needs an image dataset",
        ),
    ],
)
def test_bad_flags_exit_with_one_line(args, phrase, tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    args = [a.replace("{tmp}", str(data_dir)) for a in args]
    process = run_script(TRAIN, *args, f"--output_dir={tmp_path / 'runs'}", timeout=120)
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    # TensorFlow's start-up log lines may come first; the answer is one line.
    lines = [line for line in process.stderr.splitlines() if phrase in line]
    assert len(lines) == 1, process.stderr[-3000:]
    assert not os.path.exists(tmp_path / "runs") or not os.listdir(tmp_path / "runs")


# ---------------------------------------------------------------- compare.py


def test_compare_writes_a_table(tmp_path):
    process = run_script(
        COMPARE,
        "--methods=sgd,sam",
        "--rho=0.1",
        "--seeds=0",
        "--epochs=1",
        f"--output_dir={tmp_path}",
    )
    assert_ok(process)
    compare_dir = only_run_dir(str(tmp_path))
    assert os.path.basename(compare_dir).startswith("compare-digits-mlp-sgd_sam-rho=0.1-")
    table = process.stdout[process.stdout.index("| method |") :].splitlines()
    assert table[2].startswith("| sgd | – |")
    assert table[3].startswith("| sam | rho=0.1 |")
    with open(os.path.join(compare_dir, "comparison.json")) as f:
        comparison = json.load(f)
    assert [row["method"] for row in comparison["rows"]] == ["sgd", "sam"]
    assert open(os.path.join(compare_dir, "comparison.md")).read().count("\n| s") == 2
    assert len([n for n in os.listdir(compare_dir) if n.startswith("digits-")]) == 2


VARIANT = "eigensam(hessian_batch_size=4;refresh_every=3)"


def test_benchmark_times_both_xla_modes_and_writes_its_tables(tmp_path):
    """Every (method, XLA mode) timed, LookSAM on and off its SAM steps and
    amortised over `k` (not with XLA once its SAM step is skipped there), a
    memory figure per kind of step, the tables written."""
    result = run_script(
        BENCHMARK, *TINY_BENCHMARK, f"--methods=sgd,sam,looksam,{VARIANT}", "--xla=both",
        "--xla_skip=looksam_on_step", "--memory_methods=looksam", f"--output_dir={tmp_path}",
    )
    assert_ok(result)
    written = json.loads((tmp_path / "steps.json").read_text())
    assert list(written["modes"]) == ["xla", "no_xla"]
    for mode in ("xla", "no_xla"):
        steps = written["modes"][mode]["steps"]
        assert steps["sgd"]["ratio_to_sgd"] == 1.0
        assert steps["sam"]["ratio_to_sam"] == 1.0
        assert all(row["n"] == 1 for row in steps.values())
    xla, no_xla = written["modes"]["xla"], written["modes"]["no_xla"]
    assert set(xla["steps"]) - {VARIANT, f"{VARIANT}_refresh"} == {
        "sgd", "sam", "looksam_off_step"
    }
    assert set(no_xla["steps"]) - {VARIANT, f"{VARIANT}_refresh"} == {
        "sgd", "sam", "looksam_off_step", "looksam_on_step"
    }
    # A variant: its own rows, built with its arguments.
    assert {VARIANT, f"{VARIANT}_refresh"} <= set(xla["steps"]) & set(no_xla["steps"])
    for mode in (xla, no_xla):
        amortised = mode["amortised"][f"{VARIANT}@k=3"]
        refresh, plain, sgd = (
            mode["steps"][label]["median_s"] for label in (f"{VARIANT}_refresh", VARIANT, "sgd")
        )
        assert amortised["default_k"]
        assert amortised["refresh_cost_in_gradients"] == pytest.approx((refresh - plain) / sgd)
    assert set(xla["amortised"]) == {f"{VARIANT}@k={k}" for k in (100, 5, 3)}
    on, off = (no_xla["steps"][f"looksam_{kind}_step"]["median_s"] for kind in ("on", "off"))
    assert no_xla["amortised"]["looksam@k=5"]["step_s"] == pytest.approx((on + 4 * off) / 5)
    headline = written["headline"]
    assert [row["label"] for row in headline] == [
        "sgd", "sam", "looksam@k=5", f"{VARIANT}@k=3"
    ]
    assert headline[3]["passes"] == registry.get("eigensam").passes
    assert headline[2]["passes"] == registry.get("looksam").passes
    assert headline[2]["xla"] is None and headline[2]["no_xla"]["ratio_to_sgd"] > 0
    # A fresh process measured LookSAM's two kinds of step; the peak is LookSAM's.
    assert set(written["memory"]) == {"looksam_off_step", "looksam_on_step"}
    # Both measures are recorded (a tiny model's tensors may round to 0 MiB);
    # the reports compare the tensors'.
    assert all(row["peak_mib"] >= 0 for row in written["memory"].values())
    assert all(row["tensor_peak_mib"] >= 0 for row in written["memory"].values())
    assert headline[2]["peak_step_memory_mib"] == max(
        row["tensor_peak_mib"] for row in written["memory"].values()
    )
    assert headline[0]["peak_step_memory_mib"] is None
    (expectation,) = written["expectations"]
    assert expectation["method"] == "looksam" and "xla" not in expectation
    assert written["command"].startswith("python scripts/benchmark.py --model=mlp")
    markdown = (tmp_path / "steps.md").read_text()
    rows = [line.split(" | ")[0] for line in markdown.splitlines() if line.startswith("| ")]
    for label in ("| sgd", "| sam", "| looksam@k=5", "| looksam_on_step", "| looksam_off_step"):
        assert label in rows, markdown
    assert "XLA ms" in markdown and "no XLA ms" in markdown
    assert written["command"] in markdown
    assert "## Step time" in (tmp_path / "RESULTS.md").read_text()


def test_eigenvector_benchmark_compares_settings(tmp_path):
    """Each setting trains and is scored at every refresh against a
    converged eigenvector; the cost column is products × examples."""
    result = run_script(
        BENCHMARK_EIGENVECTOR, "--steps=4", "--refresh_every=2", "--warmup_refreshes=0",
        "--batch_size=16", "--reference_matvecs=8",
        "--settings=num_matvecs=4,which=magnitude;num_matvecs=1;hessian_batch_size=4",
        f"--output_dir={tmp_path}", "--output_name=quality",
    )
    assert_ok(result)
    written = json.loads((tmp_path / "quality.json").read_text())
    first, second = written["runs"]
    assert first["arguments"] == {"num_matvecs": 4}
    assert second["arguments"] == {"which": "magnitude", "num_matvecs": 1, "hessian_batch_size": 4}
    assert (first["cost"], second["cost"]) == (4 * 16, 1 * 4)
    for run in (first, second):
        assert len(run["cosines"]) == 2  # refreshes at steps 0 and 2
        assert all(0.0 <= c <= 1.0 + 1e-6 for c in run["cosines"])
    markdown = (tmp_path / "quality.md").read_text()
    assert markdown.startswith("## The tracked eigenvector: quality per refresh setting (small_cnn)")
    assert "| `which=magnitude;num_matvecs=1;hessian_batch_size=4` | 0.06 |" in markdown
