"""Heatmaps of a sweep in the style of the paper's Figures 4, 5 and 7.

For each accuracy (teacher-forced characters, the paper's; greedy exact
match) :func:`plot_sweep` draws two figures, as PNG and SVG:

- ``absolute-METRIC``: one panel per strategy, rows nesting (``copy``: input
  transform), columns target length, the accuracy written in each cell
  (Figures 4 and 7); below it, one panel per strategy of each trained
  model's accuracy beyond its target (length + k, nesting + k);
- ``relative-METRIC``: every other strategy minus ``baseline``, in
  percentage points (Figure 5); only when the sweep has a baseline.

With several seeds per cell a cell shows the mean over its finished seeds,
written ``mean±sd``, and a relative cell whose difference is within the
seed-to-seed spread (:func:`within_spread`) is dotted and marked ``~``; with
one seed no spread is known and nothing is marked. Cells not yet run are
hatched, so a figure of a sweep in progress shows what is done. Needs
matplotlib (``pip install "ltexec[plot]"``); draws with the non-interactive
Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from ltexec.generalization import beyond_levels
from ltexec.sweep import Cell, MissingExtra, SweepSpec, cell_summaries, load_results
from ltexec.validation import check_output_dir

METRICS = {
    "teacher_forced": ("teacher_forced_acc", "teacher-forced character accuracy"),
    "exact_match": ("exact_match_acc", "exact-match accuracy"),
}
FORMATS = ("png", "svg")
FIGURES_DIR = "figures"
WITHIN_SPREAD_RULE = "~ and dotted: within the seed-to-seed spread,\n|difference| <= sqrt(sd² + sd_baseline²)"
"""The relative figures' legend for the cells that :func:`within_spread` marks."""


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
    summaries = cell_summaries(spec, results)
    out = check_output_dir("figures_dir", Path(sweep_dir) / FIGURES_DIR if figures_dir is None else figures_dir)
    plt = import_pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, (key, title) in METRICS.items():
        figures = {f"absolute-{metric}": _absolute_figure(plt, spec, summaries, key, title)}
        if "baseline" in spec.strategies and len(spec.strategies) > 1:
            figures[f"relative-{metric}"] = _relative_figure(plt, spec, summaries, key, title)
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


def _grid(spec, summaries, strategy, key) -> list[list[dict | None]]:
    """The spread of ``key`` per (row, length) over the cell's seeds; None where no seed has finished."""
    _, rows = _rows(spec)
    return [[summaries[c][key] if (c := _cell(spec, strategy, row, length)) in summaries else None
             for length in spec.lengths] for row in rows]


def _beyond_grid(spec, summaries, strategy, key) -> tuple[list[str], list[str], list[list[dict | None]]]:
    """Per trained cell (rows): the spread at its target, then at each level beyond it (columns)."""
    _, rows = _rows(spec)
    offsets = [level["offset"] for level in beyond_levels(spec.task, 1, 1, spec.beyond)]
    labels, values = [], []
    for row in rows:
        for length in spec.lengths:
            cell = _cell(spec, strategy, row, length)
            labels.append(f"L{length} {row}" if spec.task == "copy" else f"L{length} N{row}")
            summary = summaries.get(cell)
            if summary is None:
                values.append([None] * (1 + len(offsets)))
            else:
                values.append([summary[key]] + [summary["beyond"].get(o, {}).get(key) for o in offsets])
    return labels, ["target"] + offsets, values


def _means(grid) -> list[list[float]]:
    """Each spread's mean in percent; NaN where there is none."""
    return [[math.nan if values is None else 100 * values["mean"] for values in row] for row in grid]


def _accuracy_texts(grid) -> list[list[str]]:
    """Each cell's accuracy in percent, ``mean±sd`` where its seeds give a spread."""
    def text(values: dict | None) -> str:
        if values is None:
            return ""
        mean = f"{100 * values['mean']:.0f}"
        return mean if math.isnan(values["sd"]) else f"{mean}±{100 * values['sd']:.0f}"

    return [[text(values) for values in row] for row in grid]


def within_spread(difference: float, sd: float, sd_baseline: float) -> bool:
    """Whether a strategy's mean differs from baseline's by no more than the seeds' spread.

    The rule is |difference| <= sqrt(sd² + sd_baseline²), the standard
    deviation of a difference of two independent runs. False when a spread is
    unknown (NaN: a cell with one finished seed), so a one-seed sweep marks nothing.
    """
    return abs(difference) <= math.hypot(sd, sd_baseline)


def _relative_cell(values: dict | None, baseline: dict | None) -> tuple[float, bool]:
    """Strategy minus baseline in percentage points and whether it is within spread; NaN where either is missing."""
    if values is None or baseline is None:
        return math.nan, False
    difference = values["mean"] - baseline["mean"]
    return 100 * difference, within_spread(difference, values["sd"], baseline["sd"])


# ------------------------------------------------------------------- the figures
def _absolute_figure(plt, spec, summaries, key, title):
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
        grid = _grid(spec, summaries, strategy, key)
        _heatmap(axes[0][column], _means(grid), _accuracy_texts(grid), [str(r) for r in rows],
                 [str(length) for length in spec.lengths], "viridis", 0.0, 100.0)
        axes[0][column].set(title=strategy, xlabel="length", ylabel=row_name if column == 0 else "")
        if with_beyond:
            labels, offsets, values = _beyond_grid(spec, summaries, strategy, key)
            _heatmap(axes[1][column], _means(values), _accuracy_texts(values), labels, offsets,
                     "viridis", 0.0, 100.0)
            axes[1][column].set(title=f"{strategy}: beyond the target", ylabel="trained at" if column == 0 else "")
            axes[1][column].tick_params(axis="x", labelrotation=30)
    seeds = f", mean±sd over {spec.seeds} seeds" if spec.seeds > 1 else ""
    figure.suptitle(f"{spec.task}: {title} (%) on the test split{seeds}")
    return figure


def _relative_figure(plt, spec, summaries, key, title):
    row_name, rows = _rows(spec)
    others = [s for s in spec.strategies if s != "baseline"]
    baseline = _grid(spec, summaries, "baseline", key)
    panels = {s: [[_relative_cell(values, base) for values, base in zip(row, base_row)]
                  for row, base_row in zip(_grid(spec, summaries, s, key), baseline)] for s in others}
    finite = [abs(d) for panel in panels.values() for row in panel for d, _ in row if not math.isnan(d)]
    limit = max(finite + [5.0])
    figure, axes = plt.subplots(1, len(others), squeeze=False,
                                figsize=(_panel_width(len(spec.lengths)) * len(others), 0.45 * len(rows) + 2.2),
                                layout="constrained")
    for column, strategy in enumerate(others):
        panel = panels[strategy]
        _heatmap(axes[0][column], [[d for d, _ in row] for row in panel],
                 [[("~" if within else "") + f"{d:+.1f}" for d, within in row] for row in panel],
                 [str(r) for r in rows], [str(length) for length in spec.lengths], "RdBu", -limit, limit,
                 [[within for _, within in row] for row in panel])
        axes[0][column].set(title=f"{strategy} - baseline", xlabel="length", ylabel=row_name if column == 0 else "")
    seeds = f"\nmeans over {spec.seeds} seeds; {WITHIN_SPREAD_RULE}" if spec.seeds > 1 else ""
    figure.suptitle(f"{spec.task}: {title}, percentage points relative to baseline{seeds}")
    return figure


def _panel_width(columns: int) -> float:
    """Inches for a heatmap panel of ``columns`` cells, its labels included."""
    return max(3.0, 0.6 * columns + 1.2)


def _heatmap(ax, values, texts, row_labels, column_labels, cmap, vmin, vmax, marked=None) -> None:
    """Values as coloured cells with ``texts`` written in them; NaN cells hatched and marked 'not run'.

    Cells true in ``marked`` are dotted.
    """
    import numpy as np

    grid = np.ma.masked_invalid(np.array(values, dtype=float))
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(column_labels)), column_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(grid.filled(np.nan)):
        if math.isnan(value):
            ax.add_patch(_hatched_cell(j, i, "///"))
            ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.4")
        else:
            if marked and marked[i][j]:
                ax.add_patch(_hatched_cell(j, i, ".."))
            dark = abs(value - middle) > 0.3 * (vmax - vmin) if cmap == "RdBu" else value < middle
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")


def _hatched_cell(column: int, row: int, hatch: str):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch=hatch, edgecolor="0.75", linewidth=0)
