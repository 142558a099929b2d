"""Each strategy against ``baseline``, cell by cell: the difference of mean accuracies and its interval.

For every cell of a sweep that has a ``baseline`` counterpart (same target
and transform) and every accuracy, :func:`compare_sweep` gives both sides'
mean, sample sd and number of seeds and Welch's 95% interval of the
difference strategy - baseline (:mod:`ltexec.intervals`).
:func:`comparison_table` writes them as Markdown, with a line saying which
code and arithmetic made the results (:func:`provenance`): results from
several commits or backend paths are said to be pooled, never silently mixed.
``ltexec compare SWEEP_DIR`` prints that table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ltexec.intervals import CONFIDENCE, Interval, welch_interval
from ltexec.sweep import Cell, cell_summaries, load_results

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


def compare_sweep(sweep_dir, metrics=tuple(METRICS), confidence: float = CONFIDENCE) -> list[Difference]:
    """:func:`compare_summaries` of the sweep in ``sweep_dir`` (its finished runs)."""
    spec, results = load_results(sweep_dir)
    return compare_summaries(cell_summaries(spec, results), metrics, confidence)


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


def mean_sd(values: dict) -> str:
    return f"{100 * values['mean']:.1f} ± {100 * values['sd']:.1f} ({values['n']})"


def comparison_table(sweep_dir, metrics=tuple(METRICS), confidence: float = CONFIDENCE) -> str:
    """Markdown: per cell and accuracy, baseline and strategy (mean ± sd (seeds)), the difference and its interval.

    Ends with the :func:`provenance` of the results.
    """
    spec, results = load_results(sweep_dir)
    differences = compare_summaries(cell_summaries(spec, results), metrics, confidence)
    percent = f"{100 * confidence:g}%"
    head = ["strategy", "target", "accuracy", "baseline, % (seeds)", "strategy, % (seeds)",
            f"difference, points [{percent} interval]", "interval"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in differences:
        rows.append("| " + " | ".join([d.cell.strategy, target_name(spec.task, d.cell), METRICS[d.metric],
                                       mean_sd(d.baseline), mean_sd(d.strategy), format_interval(d.interval),
                                       verdict(d.interval)]) + " |")
    if not differences:
        rows.append("| " + " | ".join(["(no cell with both a strategy and baseline finished)"] + [""] * 6) + " |")
    note = (f"Mean ± sample sd over seeds; interval: Welch's t, {percent}, of the strategy's mean minus "
            f"baseline's. {provenance(results.values())}")
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
