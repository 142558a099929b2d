"""Figures of a sweep: heatmaps in the style of the paper's Figures 4, 5 and 7, and forest plots.

For each accuracy (teacher-forced characters, the paper's; greedy exact
match) :func:`plot_sweep` draws, as PNG and SVG:

- ``absolute-METRIC``: one panel per strategy, rows nesting (``copy``: input
  transform), columns target length, the accuracy written in each cell
  (Figures 4 and 7); below it, one panel per strategy of each trained
  model's accuracy beyond its target (length + k, nesting + k);
- ``relative-METRIC``: every other strategy minus ``baseline``, in
  percentage points (Figure 5); only when the sweep has a baseline;
- ``forest-METRIC``: the same differences, one line per cell, each with its
  95% interval (:mod:`ltexec.comparison`); only when the sweep has a baseline.

With several seeds per cell a cell shows the mean over its finished seeds,
written ``mean±sd``; a relative cell writes the 95% interval of its
difference (Welch's) under it and is dotted where that interval includes 0;
with one seed no interval is known and nothing is marked. Cells not yet run
are hatched, so a figure of a sweep in progress shows what is done.
:func:`forest_figure` draws several sweeps' differences in one figure (the
README's). Needs matplotlib (``pip install "ltexec[plot]"``); draws with the
non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from ltexec.comparison import METRICS as METRIC_NAMES
from ltexec.comparison import Difference, compare_summaries, format_interval, target_name
from ltexec.generalization import beyond_levels
from ltexec.intervals import CONFIDENCE, Interval, welch_interval
from ltexec.sweep import Cell, MissingExtra, SweepSpec, cell_summaries, load_results
from ltexec.validation import check_output_dir

METRICS = {
    "teacher_forced": ("teacher_forced_acc", "teacher-forced character accuracy"),
    "exact_match": ("exact_match_acc", "exact-match accuracy"),
}
FORMATS = ("png", "svg")
FIGURES_DIR = "figures"
INTERVAL_RULE = "[95% interval of the difference, Welch's t]; dotted: the interval includes 0"
"""The relative figures' legend for the intervals and the cells they mark."""


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
            differences = compare_summaries(summaries, (key,))
            if differences:
                figures[f"forest-{metric}"] = forest_figure(plt, [(spec.task, spec.task, differences)],
                                                            f"{spec.task}: {title}")
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


def _relative_cell(values: dict | None, baseline: dict | None) -> Interval | None:
    """Strategy minus baseline with its interval (:func:`~ltexec.intervals.welch_interval`); None if one is missing."""
    if values is None or baseline is None:
        return None
    return welch_interval(baseline, values)


def _relative_text(interval: Interval | None) -> str:
    if interval is None:
        return ""
    text = f"{100 * interval.difference:+.1f}"
    if interval.known:
        text += f"\n[{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return text


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
    finite = [abs(100 * i.difference) for panel in panels.values() for row in panel for i in row if i is not None]
    limit = max(finite + [5.0])
    figure, axes = plt.subplots(1, len(others), squeeze=False,
                                figsize=(_panel_width(len(spec.lengths), 1.0) * len(others),
                                         0.7 * len(rows) + 2.2),
                                layout="constrained")
    for column, strategy in enumerate(others):
        panel = panels[strategy]
        _heatmap(axes[0][column], [[math.nan if i is None else 100 * i.difference for i in row] for row in panel],
                 [[_relative_text(i) for i in row] for row in panel],
                 [str(r) for r in rows], [str(length) for length in spec.lengths], "RdBu", -limit, limit,
                 [[i is not None and i.known and not i.excludes_zero for i in row] for row in panel])
        axes[0][column].set(title=f"{strategy} - baseline", xlabel="length", ylabel=row_name if column == 0 else "")
    seeds = f"\nmeans over {spec.seeds} seeds; {INTERVAL_RULE}" if spec.seeds > 1 else ""
    figure.suptitle(f"{spec.task}: {title}, percentage points relative to baseline{seeds}")
    return figure


def forest_figure(plt, groups: list[tuple[str, str, list[Difference]]], title: str):
    """Differences against baseline with their intervals, one line per cell, grouped (e.g. by task).

    ``groups`` holds (label, task, differences) for one accuracy each; the
    groups stack top to bottom, each strategy in its own colour. A filled mark:
    the interval excludes 0; a hollow one: it includes 0 (or is unknown, shown
    without a line).
    """
    rows = [(label, task, d) for label, task, differences in groups for d in differences]
    strategies = sorted({d.cell.strategy for _, _, d in rows}, key=("naive", "mix", "combined").index)
    colours = dict(zip(("naive", "mix", "combined"), ("tab:green", "tab:orange", "tab:purple")))
    figure, axes = plt.subplots(figsize=(8.5, 1.4 + 0.32 * len(rows)), layout="constrained")
    labels = []
    for position, (label, task, d) in enumerate(rows):
        y = len(rows) - 1 - position
        interval, colour = d.interval, colours[d.cell.strategy]
        if interval.known:
            axes.plot([100 * interval.low, 100 * interval.high], [y, y], color=colour, linewidth=2)
        axes.plot(100 * interval.difference, y, "o", color=colour, markersize=6,
                  markerfacecolor=colour if interval.excludes_zero else "white")
        prefix = f"{label}: " if len(groups) > 1 else ""
        suffix = f" ({d.cell.strategy})" if len(strategies) > 1 else ""
        labels.append(f"{prefix}{target_name(task, d.cell)}{suffix}")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(rows)), list(reversed(labels)))
    axes.set_ylim(-0.7, len(rows) - 0.3)
    values = axes.twinx()                                        # each line's figures, as right-hand tick labels
    values.set_ylim(axes.get_ylim())
    values.set_yticks(range(len(rows)), [format_interval(d.interval) for _, _, d in reversed(rows)], fontsize=8)
    metrics = sorted({METRIC_NAMES[d.metric] for _, _, d in rows})
    strategy = strategies[0] if len(strategies) == 1 else "strategy"
    axes.set_xlabel(f"{strategy} - baseline, {' / '.join(metrics)} accuracy, percentage points")
    axes.grid(axis="x", color="0.9")
    axes.set_title(f"{title}\nmean difference over seeds, its {100 * CONFIDENCE:g}% interval (Welch's t); "
                   f"filled: excludes 0", fontsize=9)
    return figure


def _panel_width(columns: int, per_column: float = 0.6) -> float:
    """Inches for a heatmap panel of ``columns`` cells ``per_column`` inches wide, its labels included."""
    return max(3.0, per_column * columns + 1.2)


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
