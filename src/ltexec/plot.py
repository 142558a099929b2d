"""Heatmaps of a sweep in the style of the paper's Figures 4, 5 and 7.

For each accuracy (teacher-forced characters, the paper's; greedy exact
match) :func:`plot_sweep` draws two figures, as PNG and SVG:

- ``absolute-METRIC``: one panel per strategy, rows nesting (``copy``: input
  transform), columns target length, the accuracy written in each cell
  (Figures 4 and 7); below it, one panel per strategy of each trained
  model's accuracy beyond its target (length + k, nesting + k);
- ``relative-METRIC``: every other strategy minus ``baseline``, in
  percentage points (Figure 5); only when the sweep has a baseline.

Cells not yet run are hatched, so a figure of a sweep in progress shows what
is done. Needs matplotlib (``pip install "ltexec[plot]"``); draws with the
non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from ltexec.generalization import beyond_levels
from ltexec.sweep import Cell, MissingExtra, SweepSpec, load_results
from ltexec.validation import check_output_dir

METRICS = {
    "teacher_forced": ("teacher_forced_acc", "teacher-forced character accuracy"),
    "exact_match": ("exact_match_acc", "exact-match accuracy"),
}
FORMATS = ("png", "svg")
FIGURES_DIR = "figures"


def import_pyplot():
    """matplotlib's pyplot on the Agg backend, or a clear error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra('ltexec plot needs matplotlib, which is not installed: pip install "ltexec[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_sweep(sweep_dir, figures_dir=None) -> list[Path]:
    """Draw every figure of the sweep in ``sweep_dir`` into ``figures_dir`` (default SWEEP_DIR/figures)."""
    spec, results = load_results(sweep_dir)
    out = check_output_dir("figures_dir", Path(sweep_dir) / FIGURES_DIR if figures_dir is None else figures_dir)
    plt = import_pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, (key, title) in METRICS.items():
        figures = {f"absolute-{metric}": _absolute_figure(plt, spec, results, key, title)}
        if "baseline" in spec.strategies and len(spec.strategies) > 1:
            figures[f"relative-{metric}"] = _relative_figure(plt, spec, results, key, title)
        for name, figure in figures.items():
            for extension in FORMATS:
                path = out / f"{name}.{extension}"
                figure.savefig(path, dpi=120, bbox_inches="tight")
                written.append(path)
            plt.close(figure)
    return written


# --------------------------------------------------------------------- the grid
def _rows(spec: SweepSpec) -> tuple[str, tuple]:
    """The row axis: input transform for copy (Figure 7), nesting otherwise (Figure 4)."""
    return ("transform", spec.transforms) if spec.task == "copy" else ("nesting", spec.nestings)


def _cell(spec: SweepSpec, strategy: str, row, length: int) -> Cell:
    if spec.task == "copy":
        return Cell(strategy, length, 1, row)
    return Cell(strategy, length, row, spec.transforms[0])


def _grid(spec, results, strategy, key) -> list[list[float]]:
    """Accuracy in percent per (row, length); NaN where the cell has not been run."""
    _, rows = _rows(spec)
    return [[100 * results[c][key] if (c := _cell(spec, strategy, row, length)) in results else math.nan
             for length in spec.lengths] for row in rows]


def _beyond_grid(spec, results, strategy, key) -> tuple[list[str], list[str], list[list[float]]]:
    """Per trained cell (rows): accuracy at its target, then at each level beyond it (columns)."""
    _, rows = _rows(spec)
    offsets = [level["offset"] for level in beyond_levels(spec.task, 1, 1, spec.beyond)]
    labels, values = [], []
    for row in rows:
        for length in spec.lengths:
            cell = _cell(spec, strategy, row, length)
            labels.append(f"L{length} {row}" if spec.task == "copy" else f"L{length} N{row}")
            result = results.get(cell)
            if result is None:
                values.append([math.nan] * (1 + len(offsets)))
            else:
                beyond = {level["offset"]: level[key] for level in result["beyond"]}
                values.append([100 * result[key]] + [100 * beyond.get(o, math.nan) for o in offsets])
    return labels, ["target"] + offsets, values


# ------------------------------------------------------------------- the figures
def _absolute_figure(plt, spec, results, key, title):
    row_name, rows = _rows(spec)
    strategies = spec.strategies
    with_beyond = bool(spec.beyond)
    beyond_rows = len(rows) * len(spec.lengths)
    heights = [len(rows) + 1.5] + ([beyond_rows + 1.5] if with_beyond else [])
    width = _panel_width(max(len(spec.lengths), 1 + len(beyond_levels(spec.task, 1, 1, spec.beyond))))
    figure, axes = plt.subplots(len(heights), len(strategies), squeeze=False,
                                figsize=(width * len(strategies), 0.45 * sum(heights) + 1.2),
                                gridspec_kw={"height_ratios": heights}, layout="constrained")
    for column, strategy in enumerate(strategies):
        _heatmap(axes[0][column], _grid(spec, results, strategy, key), [str(r) for r in rows],
                 [str(length) for length in spec.lengths], "viridis", 0.0, 100.0, "{:.0f}")
        axes[0][column].set(title=strategy, xlabel="length", ylabel=row_name if column == 0 else "")
        if with_beyond:
            labels, offsets, values = _beyond_grid(spec, results, strategy, key)
            _heatmap(axes[1][column], values, labels, offsets, "viridis", 0.0, 100.0, "{:.0f}")
            axes[1][column].set(title=f"{strategy}: beyond the target", ylabel="trained at" if column == 0 else "")
            axes[1][column].tick_params(axis="x", labelrotation=30)
    figure.suptitle(f"{spec.task}: {title} (%) on the test split")
    return figure


def _relative_figure(plt, spec, results, key, title):
    row_name, rows = _rows(spec)
    others = [s for s in spec.strategies if s != "baseline"]
    baseline = _grid(spec, results, "baseline", key)
    differences = {s: [[v - b for v, b in zip(row, base)] for row, base in zip(_grid(spec, results, s, key), baseline)]
                   for s in others}
    finite = [abs(v) for grid in differences.values() for row in grid for v in row if not math.isnan(v)]
    limit = max(finite + [5.0])
    figure, axes = plt.subplots(1, len(others), squeeze=False,
                                figsize=(_panel_width(len(spec.lengths)) * len(others), 0.45 * len(rows) + 2.2),
                                layout="constrained")
    for column, strategy in enumerate(others):
        _heatmap(axes[0][column], differences[strategy], [str(r) for r in rows],
                 [str(length) for length in spec.lengths], "RdBu", -limit, limit, "{:+.1f}")
        axes[0][column].set(title=f"{strategy} - baseline", xlabel="length", ylabel=row_name if column == 0 else "")
    figure.suptitle(f"{spec.task}: {title}, percentage points relative to baseline")
    return figure


def _panel_width(columns: int) -> float:
    """Inches for a heatmap panel of ``columns`` cells, its labels included."""
    return max(3.0, 0.6 * columns + 1.2)


def _heatmap(ax, values, row_labels, column_labels, cmap, vmin, vmax, number_format) -> None:
    """Values as coloured cells with the number written in each; NaN cells hatched and marked 'not run'."""
    import numpy as np

    grid = np.ma.masked_invalid(np.array(values, dtype=float))
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(column_labels)), column_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(grid.filled(np.nan)):
        if math.isnan(value):
            ax.add_patch(_hatched_cell(j, i))
            ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.4")
        else:
            dark = abs(value - middle) > 0.3 * (vmax - vmin) if cmap == "RdBu" else value < middle
            ax.text(j, i, number_format.format(value), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")


def _hatched_cell(column: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.75", linewidth=0)
