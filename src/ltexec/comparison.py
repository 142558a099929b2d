"""Each strategy against ``baseline``, cell by cell: the difference of mean accuracies and its interval.

For every cell of a sweep that has a ``baseline`` counterpart (same target
and transform) and every accuracy, :func:`compare_sweep` gives both sides'
mean, sample sd and number of seeds and Welch's 95% interval of the
difference strategy - baseline (:mod:`ltexec.intervals`); a sweep without
``baseline`` can take it from another sweep trained alike.
:func:`comparison_table` writes them as Markdown, with a line saying which
code and arithmetic made the results (:func:`provenance`): results from
several commits or backend paths are said to be pooled, never silently mixed.
``ltexec compare SWEEP_DIR`` prints that table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ltexec.intervals import CONFIDENCE, Interval, welch_interval
from ltexec.sweep import Cell, SweepSpec, cell_summaries, format_spread, load_results

METRICS = {"teacher_forced_acc": "teacher-forced", "exact_match_acc": "exact match"}
"""Result fields compared, with their names in tables and figures."""
AGAINST = "baseline"


@dataclass(frozen=True)
class Difference:
    """One cell and accuracy: the strategy's and baseline's spreads over seeds and the interval of their difference."""

    cell: Cell
    metric: str
    strategy: dict
    baseline: dict
    interval: Interval


def baseline_cell(cell: Cell) -> Cell:
    return Cell(AGAINST, cell.length, cell.nesting, cell.transform)


def compare_summaries(summaries: dict[Cell, dict], metrics=tuple(METRICS),
                      confidence: float = CONFIDENCE) -> list[Difference]:
    """Every (cell, metric) whose cell and baseline counterpart have finished seeds, in the summaries' order."""
    differences = []
    for cell, summary in summaries.items():
        base = summaries.get(baseline_cell(cell))
        if cell.strategy == AGAINST or base is None:
            continue
        for metric in metrics:
            differences.append(Difference(cell, metric, summary[metric], base[metric],
                                          welch_interval(base[metric], summary[metric], confidence)))
    return differences


COMPARABLE_FIELDS = ("task", "transforms", "steps_per_cell", "minutes_per_cell", "train", "backend_options")
"""What a sweep and the one it takes its baseline from must share."""


def load_compared(sweep_dir, baseline_dir=None) -> tuple[SweepSpec, dict[Cell, dict], list[dict]]:
    """The sweep's spec, its cells' summaries and its finished results.

    With ``baseline_dir``, the ``baseline`` cells come from that sweep (trained
    alike: :data:`COMPARABLE_FIELDS` equal), and its baseline results join the list.
    """
    spec, results = load_results(sweep_dir)
    summaries, finished = cell_summaries(spec, results), list(results.values())
    if baseline_dir is None:
        return spec, summaries, finished
    if AGAINST in spec.strategies:
        raise ValueError(f"{sweep_dir} has its own {AGAINST}; a baseline from another sweep is for one without")
    base_spec, base_results = load_results(baseline_dir)
    if AGAINST not in base_spec.strategies:
        raise ValueError(f"{baseline_dir} has no {AGAINST} cells")
    theirs, ours = base_spec.to_dict(), spec.to_dict()
    differing = [f"{key}: {ours[key]!r} here, {theirs[key]!r} there" for key in COMPARABLE_FIELDS
                 if ours[key] != theirs[key]]
    if differing:
        raise ValueError(f"{sweep_dir} and {baseline_dir} were not trained alike ({'; '.join(differing)})")
    base = {cell: summary for cell, summary in cell_summaries(base_spec, base_results).items()
            if cell.strategy == AGAINST}
    return spec, {**base, **summaries}, finished + [r for run, r in base_results.items()
                                                    if run.cell.strategy == AGAINST]


def compare_sweep(sweep_dir, metrics=tuple(METRICS), confidence: float = CONFIDENCE,
                  baseline_dir=None) -> list[Difference]:
    """:func:`compare_summaries` of the sweep in ``sweep_dir`` (its finished runs; baseline's from
    ``baseline_dir`` if given, see :func:`load_compared`)."""
    _, summaries, _ = load_compared(sweep_dir, baseline_dir)
    return compare_summaries(summaries, metrics, confidence)


def target_name(task: str, cell: Cell) -> str:
    """A cell's target in words: ``length 3, nesting 2``, ``4 digits`` or ``length 15, reverse``."""
    if task == "addition":
        return f"{cell.length} digits"
    if task == "copy":
        return f"length {cell.length}, {cell.transform}"
    return f"length {cell.length}, nesting {cell.nesting}"


def points(value: float) -> str:
    """A fraction as signed percentage points, with a true minus sign."""
    return f"{100 * value:+.1f}".replace("-", "−")


def format_interval(interval: Interval) -> str:
    """``−10.1 [−14.2, −6.0]`` in percentage points, or the difference alone where no interval is known."""
    if not interval.known:
        return f"{points(interval.difference)} (no interval: fewer than 2 seeds)"
    return f"{points(interval.difference)} [{points(interval.low)}, {points(interval.high)}]"


def verdict(interval: Interval) -> str:
    if not interval.known:
        return ""
    if interval.excludes_zero:
        return "below 0" if interval.high < 0 else "above 0"
    return "includes 0"


def comparison_table(sweep_dir, metrics=tuple(METRICS), confidence: float = CONFIDENCE, baseline_dir=None) -> str:
    """Markdown: per cell and accuracy, baseline and strategy (mean ± sd (n=seeds)), the difference and its interval.

    Ends with the :func:`provenance` of the results (``baseline_dir``'s baseline runs included).
    """
    spec, summaries, results = load_compared(sweep_dir, baseline_dir)
    differences = compare_summaries(summaries, metrics, confidence)
    percent = f"{100 * confidence:g}%"
    head = ["strategy", "target", "accuracy", "baseline, %", "strategy, %",
            f"difference, points [{percent} interval]", "interval"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in differences:
        rows.append("| " + " | ".join([d.cell.strategy, target_name(spec.task, d.cell), METRICS[d.metric],
                                       format_spread(d.baseline, True, scale=100),
                                       format_spread(d.strategy, True, scale=100),
                                       format_interval(d.interval), verdict(d.interval)]) + " |")
    if not differences:
        rows.append("| " + " | ".join(["(no cell with both a strategy and baseline finished)"] + [""] * 6) + " |")
    note = (f"Mean ± sample sd over seeds; interval: Welch's t, {percent}, of the strategy's mean minus "
            f"baseline's{f' (baseline: {baseline_dir})' if baseline_dir is not None else ''}. "
            f"{provenance(results)}")
    return "\n".join(rows) + "\n\n" + note


def provenance(results) -> str:
    """One sentence naming the commits, backend paths and commands the results came from, with run counts."""
    results = list(results)
    if not results:
        return "No finished runs."
    commits, paths, commands = Counter(), Counter(), Counter()
    for result in results:
        source = result.get("source") or {}
        commit = source["commit"][:7] if source.get("commit") else "unrecorded"
        commits[commit + (" (uncommitted changes)" if source.get("dirty") else "")] += 1
        choices = result.get("backend_choices")
        paths[f"{result.get('backend', '?')} " + (" ".join(f"{k}={v}" for k, v in choices.items())
                                                  if choices else "(path unrecorded)")] += 1
        commands[source.get("command") or "unrecorded"] += 1

    def listed(counter: Counter, what: str, several: str) -> str:
        if len(counter) == 1:
            return f"{what} {next(iter(counter))}"
        return f"{several} {len(counter)} {what}s: " + "; ".join(f"{key} ({count} runs)"
                                                              for key, count in counter.most_common())

    return (f"{len(results)} runs; {listed(commits, 'commit', 'POOLED from')}; "
            f"{listed(paths, 'backend path', 'POOLED from')}; {listed(commands, 'command', 'run by')}.")


def format_level(level) -> str:
    return f"{level[0]},{level[1]}"


def runs_table(sweep_dir) -> str:
    """Markdown, one row per finished run: why it stopped, steps, minutes, where its curriculum got to, accuracies.

    ``advances`` lists each advance as ``LENGTH,NESTING@STEP``; runs whose
    result predates these fields show ``not recorded``.
    """
    spec, results = load_results(sweep_dir)
    head = ["strategy", "target", "seed", "stopped", "steps", "minutes", "level reached", "advances (level@step)",
            "teacher-forced", "exact match"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in spec.runs():
        result = results.get(run)
        if result is None:
            continue
        if "level" in result:
            level = format_level(result["level"])
            advances = ", ".join(f"{format_level(a['to'])}@{a['step']}" for a in result["advances"]) or "none"
        else:
            level = advances = "not recorded"
        rows.append("| " + " | ".join([
            run.cell.strategy, target_name(spec.task, run.cell), str(run.seed), result["stopped"],
            f"{result['steps']:,}", f"{result['minutes']:.1f}", level, advances,
            f"{100 * result['teacher_forced_acc']:.1f}%", f"{100 * result['exact_match_acc']:.1f}%"]) + " |")
    return "\n".join(rows)
