r"""How step costs grow with batch size and parameter count, from step benchmarks.

Reads result files of `scripts/benchmark.py` (each one model at one batch
size, timing at least `sgd`, `sam` and `eigensam`), and writes one table of
their costs and, for every pair of results that differ in one thing only,
the exponent `b` of each cost's growth `cost ∝ size^b`:
`b = log(cost₂/cost₁) / log(size₂/size₁)`, where the size is the batch size
(same network) or the parameter count (same batch size). A cost that doubles
with the batch has `b = 1`; `b < 1` means the machine is used better at the
larger size. Costs: the SGD and SAM steps, the extra time of an Eigen-SAM
refresh step over its plain step, and the peak step memory of SAM and of a
refresh step, in every XLA mode the results hold.

Results go to `<output_dir>/<output_name>.{json,md}` and
`<output_dir>/RESULTS.md` is rebuilt.

    python scripts/benchmark.py --model=wrn28_10 --batch_size=8 --xla=on \
        --methods=sgd,sam,eigensam --rounds=2 --steps_per_round=1 --warmup=1 \
        --notf_keras --output_name=steps_wrn28_10_b8
    ...   # the same for batch 16, and resnet18 at 8 and 16
    python scripts/benchmark_scaling.py \
        --inputs=steps_resnet18_b8,steps_resnet18_b16,steps_wrn28_10_b8,steps_wrn28_10_b16
"""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from benchmark_memory import step_peak  # noqa: E402
from benchmark_results import command_line  # noqa: E402
from benchmark_results import write_results  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", None, "Result names in --output_dir (<name>.json of benchmark.py).")
flags.DEFINE_string("output_dir", "benchmarks", "Where the inputs are and results are written.")
flags.DEFINE_string("output_name", "scaling", "Results go to <output_dir>/<output_name>.{json,md}.")
flags.mark_flag_as_required("inputs")

#: (key, what) of the costs compared.
COSTS = (
    ("sgd_s", "SGD step (s)"),
    ("sam_s", "SAM step (s)"),
    ("refresh_extra_s", "refresh step − plain Eigen-SAM step (s)"),
    ("sam_memory_mib", "SAM step peak memory (MiB)"),
    ("refresh_memory_mib", "refresh step peak memory (MiB)"),
)
TIMES = {"sgd_s", "sam_s", "refresh_extra_s"}


def num_parameters(model, input_shape, num_classes=10):
    """Trainable parameters of an architecture of `keras_eigensam.experiments`."""
    from keras_eigensam.experiments import architectures

    shape = tuple(int(s) for s in input_shape)
    net = architectures.build(model, shape, num_classes)
    return int(sum(math.prod(v.shape) for v in net.trainable_variables))


def row(name, result, parameters):
    """One result's costs: `{mode: {cost: value}}` plus what it measured."""
    memory = result.get("memory") or {}
    out = {
        "input": name,
        "model": result["model"],
        "input_shape": list(result["input_shape"]),
        "batch_size": result["batch_size"],
        "num_parameters": parameters,
        "rounds": result.get("rounds"),
        "load_average": result.get("load_average"),
        "modes": {},
    }
    for mode, figures in result["modes"].items():
        steps = figures["steps"]
        costs = {"sgd_s": steps["sgd"]["median_s"], "sam_s": steps["sam"]["median_s"]}
        if "eigensam_refresh" in steps:
            costs["refresh_extra_s"] = (
                steps["eigensam_refresh"]["median_s"] - steps["eigensam"]["median_s"]
            )
            costs["refresh_in_sgd_steps"] = costs["refresh_extra_s"] / costs["sgd_s"]
        amortised = figures["amortised"].get("eigensam@k=100")
        if amortised:
            costs["eigensam_k100_x_sam"] = amortised["ratio_to_sam"]
        out["modes"][mode] = costs
    if "sam" in memory:
        out["sam_memory_mib"] = step_peak(memory["sam"])
    if "eigensam_refresh" in memory:
        out["refresh_memory_mib"] = step_peak(memory["eigensam_refresh"])
        if "sam" in memory:
            out["refresh_memory_x_sam"] = out["refresh_memory_mib"] / out["sam_memory_mib"]
    return out


def _cost(r, mode, key):
    return r["modes"].get(mode, {}).get(key) if key in TIMES else r.get(key)


def exponents(rows):
    """For each pair differing in batch size only (same network) or in
    parameter count only (same batch size): the exponent of each cost
    against that size, per XLA mode."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            same_net = (a["model"], a["input_shape"]) == (b["model"], b["input_shape"])
            if same_net and a["batch_size"] != b["batch_size"]:
                against, x1, x2 = "batch size", a["batch_size"], b["batch_size"]
            elif (a["batch_size"] == b["batch_size"]
                  and a["num_parameters"] != b["num_parameters"]):
                against, x1, x2 = "parameters", a["num_parameters"], b["num_parameters"]
            else:
                continue
            if x1 > x2:
                a, b, x1, x2 = b, a, x2, x1
            for mode in sorted(set(a["modes"]) & set(b["modes"])):
                growth = {}
                for key, _ in COSTS:
                    c1, c2 = _cost(a, mode, key), _cost(b, mode, key)
                    if c1 and c2 and c1 > 0 and c2 > 0:
                        growth[key] = math.log(c2 / c1) / math.log(x2 / x1)
                out.append({
                    "against": against, "from": a["input"], "to": b["input"],
                    "size_ratio": x2 / x1, "mode": mode, "exponents": growth,
                })
    return out


def _f(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def _load(r):
    load = r.get("load_average") or []
    return f"{r.get('rounds') or '–'}, " + ("–" if not load else "–".join(f"{x:.1f}" for x in load))


def markdown(result):
    lines = [
        "## Scaling: step costs against batch size and parameter count",
        "",
        "From the step benchmarks " + ", ".join(f"`{r['input']}`" for r in result["rows"])
        + " (medians of interleaved rounds, each in its own run; memory without XLA, "
        "a fresh process per method). Exponent `b` of `cost ∝ size^b` between two "
        "results that differ in batch size only or in parameter count only: "
        "1 = proportional. Peak memory is the process's resident memory above its "
        "level before the step: at small batches a SAM step's buffers are mostly "
        "reused from the warm-up step, so its figure there (tens of MiB) is below "
        "the method's resolution and its ratios and exponents are not meaningful; "
        "the refresh's figure is dominated by parameter-sized vectors. Each input "
        "is a separate run: its load average (start, end) says how quiet it was.",
        "",
        f"`{result['command']}`",
        "",
        "| result | model | parameters | batch | rounds, load | mode | SGD s | SAM s "
        "| SAM × SGD | refresh extra s | refresh, SGD steps | Eigen-SAM@k=100 × SAM "
        "| SAM MiB | refresh MiB | refresh × SAM memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        for mode, c in r["modes"].items():
            lines.append(
                f"| {r['input']} | {r['model']} | {r['num_parameters'] / 1e6:.1f} M "
                f"| {r['batch_size']} | {_load(r)} | {mode} | {_f(c['sgd_s'])} | {_f(c['sam_s'])} "
                f"| {_f(c['sam_s'] / c['sgd_s'])} | {_f(c.get('refresh_extra_s'), 1)} "
                f"| {_f(c.get('refresh_in_sgd_steps'), 1)} "
                f"| {_f(c.get('eigensam_k100_x_sam'), 3)} "
                f"| {_f(r.get('sam_memory_mib'), 0)} | {_f(r.get('refresh_memory_mib'), 0)} "
                f"| {_f(r.get('refresh_memory_x_sam'))} |"
            )
    lines += [
        "",
        "| against | from → to | × size | mode | " + " | ".join(w for _, w in COSTS) + " |",
        "|---|---|---|---|" + "---|" * len(COSTS),
    ]
    for e in result["exponents"]:
        lines.append(
            f"| {e['against']} | {e['from']} → {e['to']} | {e['size_ratio']:.2f} "
            f"| {e['mode']} | "
            + " | ".join(_f(e["exponents"].get(key)) for key, _ in COSTS) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    rows, parameters = [], {}
    for name in FLAGS.inputs:
        with open(os.path.join(FLAGS.output_dir, f"{name}.json")) as f:
            result = json.load(f)
        missing = {"sgd", "sam"} - set(result["methods"])
        if missing:
            raise app.UsageError(
                f"--inputs: {name}.json did not time {sorted(missing)}; every input "
                "needs at least sgd and sam (and eigensam for the refresh)."
            )
        key = (result["model"], tuple(result["input_shape"]), result.get("num_classes", 10))
        if key not in parameters:
            parameters[key] = num_parameters(*key)
        rows.append(row(name, result, parameters[key]))
    result = {"command": command_line(), "rows": rows, "exponents": exponents(rows)}
    write_results(FLAGS.output_dir, FLAGS.output_name, result, markdown(result))


if __name__ == "__main__":
    app.run(main)
