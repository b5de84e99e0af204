"""Paper-style curvature figures from training histories.

`plot_curvature` draws the two panels of the Eigen-SAM paper's central
figure for several runs side by side: (a) the alignment between the
perturbation and the top Hessian eigenvector, (b) the top Hessian eigenvalue,
both over training. `plot_density` draws one spectral density.

matplotlib is imported when a function is called, not with this module, and
drawn through its Agg canvas (no pyplot, no global backend change); it comes
with the `scripts` extra.
"""

import csv
import math
import numbers
import os

import numpy as np

from keras_eigensam import install

#: Column plotted in panel (a).
ALIGNMENT_KEY = "eigen_alignment"
#: Columns plotted in panel (b), the first one a run has: the probe-set
#: eigenvalue of `HessianEigenvalueMonitor`, else the train step's tracker.
EIGENVALUE_KEYS = ("hessian_top_eigenvalue", "top_eigenvalue")


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise install.missing_extra(
            "matplotlib", "keras_eigensam.experiments.plotting"
        ) from e
    return Figure, FigureCanvasAgg


class _Table:
    """One source's columns, indexed by `kind` ("step" or "epoch")."""

    def __init__(self, kind, index, columns):
        self.kind = kind
        self.index = np.asarray(index, dtype=np.float64)
        self.columns = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}


def _float(value):
    if value is None:
        return math.nan
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        # CSVLogger writes "NA" for a missing key.
        return math.nan


def _is_step_records(source):
    return (
        isinstance(source, (list, tuple))
        and len(source) > 0
        and all(
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], numbers.Real)
            and isinstance(item[1], dict)
            for item in source
        )
    )


def _epoch_table(history, epochs=None):
    columns = {k: [_float(v) for v in values] for k, values in history.items()}
    length = max((len(v) for v in columns.values()), default=0)
    if epochs is None or len(epochs) != length:
        epochs = range(length)
    return _Table("epoch", list(epochs), columns)


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"The CSV file is empty. Received: {path!r}")
    header, body = rows[0], rows[1:]
    if "step" in header:
        kind = "step"
    elif "epoch" in header:
        kind = "epoch"
    else:
        raise ValueError(
            "A CSV history must have a `step` column (EigenAlignmentLogger's "
            "alignment.csv) or an `epoch` column (keras.callbacks.CSVLogger). "
            f"Received: {path!r} with columns {header}"
        )
    columns = {
        name: [_float(row[i]) for row in body if i < len(row)]
        for i, name in enumerate(header)
    }
    return _Table(kind, columns.pop(kind), columns)


def _tables(name, source):
    """Reads one run's sources into a list of `_Table`s."""
    from keras.callbacks import History

    if isinstance(source, History):
        return [_epoch_table(source.history, source.epoch)]
    if isinstance(source, (str, os.PathLike)):
        return [_read_csv(os.fspath(source))]
    if isinstance(source, dict):
        return [_epoch_table(source)]
    if _is_step_records(source):
        keys = sorted({k for _, values in source for k in values})
        return [
            _Table(
                "step",
                [step for step, _ in source],
                {k: [_float(values.get(k)) for _, values in source] for k in keys},
            )
        ]
    if isinstance(source, (list, tuple)) and source:
        return [table for item in source for table in _tables(name, item)]
    raise TypeError(
        "Each run of `histories` must be a `keras.callbacks.History`, a dict "
        "like `History.history`, the path of a CSVLogger or "
        "EigenAlignmentLogger CSV, a callback's `history` list of `(step, "
        "values)`, or a list of those. Received: "
        f"histories[{name!r}]={source!r}"
    )


def _series(tables, keys):
    """The first `(key, kind, x, y)` found, step tables first, NaNs dropped."""
    for key in keys:
        for kind in ("step", "epoch"):
            for table in tables:
                if table.kind == kind and key in table.columns:
                    y = table.columns[key]
                    x = table.index[: len(y)]
                    keep = np.isfinite(y[: len(x)])
                    if keep.any():
                        return key, kind, x[keep], y[: len(x)][keep]
    return None


def plot_curvature(histories, out_png, steps_per_epoch=None, title=None, dpi=120):
    """Draws alignment and top eigenvalue over training for several runs.

    Two panels, one line per run:

    ```
    (a) eigen_alignment                          |cos(perturbation, v)|, v the top eigenvector
    (b) hessian_top_eigenvalue or top_eigenvalue  λ_max over training
    ```

    Panel (b) uses a run's `hessian_top_eigenvalue` (from
    `HessianEigenvalueMonitor`, on a fixed probe set) when it has one, else
    its `top_eigenvalue` (the train step's tracker, on training batches).
    A plain-SGD run has no alignment and appears in panel (b) only.

    A run is given as one source or a list of sources, merged:

    - a `keras.callbacks.History` (`model.fit`'s return value) or a dict
      like `History.history`: one value per epoch;
    - the path of a CSV file with an `epoch` column (written by
      `keras.callbacks.CSVLogger`) or a `step` column (the `alignment.csv`
      of `EigenAlignmentLogger`);
    - a callback's `history` attribute, a list of `(step, values)`
      (`EigenAlignmentLogger`, `HessianEigenvalueMonitor`).

    For each quantity a run's per-step source is preferred over a per-epoch
    one. Missing values (`nan`, CSVLogger's `NA`) are skipped. Epochs are
    plotted as `(epoch + 1) · steps_per_epoch` steps when `steps_per_epoch`
    is given, so that per-step and per-epoch series share an axis.

    Args:
        histories: Dict from run name (the legend label) to its source(s).
        out_png: Path of the PNG file to write (its directory is created).
        steps_per_epoch: Training steps per epoch, to plot per-epoch values
            against steps. `None` plots each panel against its sources'
            own unit, which must then be the same for every run. Defaults to
            `None`.
        title: Figure title. Defaults to `None`.
        dpi: Resolution of the PNG. Defaults to `120`.

    Returns:
        `out_png`.

    Raises:
        ImportError: if matplotlib is not installed (the `scripts` extra).
        TypeError: if a source has an unsupported type.
        ValueError: if `histories` is empty or holds neither quantity, a CSV
            has neither a `step` nor an `epoch` column, or a panel mixes
            steps and epochs without `steps_per_epoch`.

    Example:

    ```python
    plot_curvature(
        {"SGD": sgd_history,
         "SAM": [sam_history, "runs/sam/alignment/alignment.csv"],
         "Eigen-SAM": "runs/eigensam/history.csv"},
        "curvature.png", steps_per_epoch=390)
    ```

    Reference:
        - [Luo et al., 2024 (Eigen-SAM), Figure 1](https://arxiv.org/abs/2501.12666)
    """
    if not isinstance(histories, dict) or not histories:
        raise ValueError(
            "`histories` must be a non-empty dict from run name to history. "
            f"Received: histories={histories!r}"
        )
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, numbers.Integral)
        or steps_per_epoch < 1
    ):
        raise ValueError(
            "`steps_per_epoch` must be an integer >= 1 or None. Received: "
            f"steps_per_epoch={steps_per_epoch!r}"
        )
    runs = {name: _tables(name, source) for name, source in histories.items()}
    panels = [
        ("(a) alignment with the top eigenvector", (ALIGNMENT_KEY,)),
        ("(b) top Hessian eigenvalue", EIGENVALUE_KEYS),
    ]
    plotted = []
    for _, keys in panels:
        lines = []
        for color, (name, tables) in enumerate(runs.items()):
            found = _series(tables, keys)
            if found is None:
                continue
            key, kind, x, y = found
            if kind == "epoch" and steps_per_epoch is not None:
                kind, x = "step", (x + 1) * steps_per_epoch
            # One colour per run in both panels.
            lines.append((name, key, kind, x, y, f"C{color % 10}"))
        kinds = {line[2] for line in lines}
        if len(kinds) > 1:
            raise ValueError(
                "A panel mixes per-step and per-epoch histories; pass "
                "`steps_per_epoch` to plot epochs as steps. Received: "
                + ", ".join(f"{line[0]!r} per {line[2]}" for line in lines)
            )
        plotted.append(lines)
    if not any(plotted):
        raise ValueError(
            f"`histories` holds none of the plotted quantities "
            f"({[ALIGNMENT_KEY, *EIGENVALUE_KEYS]}). Received: runs with "
            + "; ".join(
                f"{name!r}: {sorted({k for t in tables for k in t.columns})}"
                for name, tables in runs.items()
            )
        )

    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax, (label, _), lines in zip(axes, panels, plotted):
        ax.set_title(label)
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        for name, key, kind, x, y, color in lines:
            marker = "o" if len(x) <= 30 else None
            suffix = "" if key in (ALIGNMENT_KEY, EIGENVALUE_KEYS[0]) else f" ({key})"
            ax.plot(x, y, marker=marker, markersize=3, color=color, label=f"{name}{suffix}")
        ax.set_xlabel(lines[0][2])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel(r"$|\cos(e, v)|$")
    axes[1].set_ylabel(r"$\lambda_{\max}$")
    if title is not None:
        figure.suptitle(title)
    directory = os.path.dirname(os.fspath(out_png))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(out_png, dpi=dpi)
    return out_png


def plot_density(grid, density, out_png, title=None, dpi=120):
    """Draws a Hessian spectral density (log scale) to a PNG file.

    Args:
        grid: Eigenvalue grid, a 1-D array (from `HessianOperator.density`).
        density: Density on `grid`, a 1-D array of the same length.
        out_png: Path of the PNG file to write.
        title: Axes title. Defaults to `None`.
        dpi: Resolution of the PNG. Defaults to `120`.

    Returns:
        `out_png`.

    Raises:
        ImportError: if matplotlib is not installed (the `scripts` extra).
        ValueError: if `grid` and `density` differ in shape.

    Example:

    ```python
    grid, density = op.density(num_matvecs=200, seed=0)
    plot_density(grid, density, "density.png")
    ```

    Reference:
        - [Ghorbani et al., 2019](https://arxiv.org/abs/1901.10159)
    """
    grid, density = np.asarray(grid), np.asarray(density)
    if grid.shape != density.shape or grid.ndim != 1:
        raise ValueError(
            "`grid` and `density` must be 1-D arrays of one length. Received: "
            f"grid of shape {grid.shape}, density of shape {density.shape}"
        )
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.semilogy(grid, density + 1e-7)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title is not None:
        ax.set_title(title)
    figure.savefig(out_png, dpi=dpi)
    return out_png


__all__ = ["plot_curvature", "plot_density"]
