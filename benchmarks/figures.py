"""The README's figures, drawn from the committed benchmark records (``pip install -e ".[plot]"``).

* ``time-to-accuracy.png``: minutes to the main job's target, seed by seed,
  one row per ``time_to_accuracy.py`` record (its seeds, how many reached
  the target, the median);
* ``training-step.png``: milliseconds per training step of the ``cpu``
  backend as it runs by default, of each of its forced variants and of torch,
  per configuration and run, from one ``bench_lstm.py`` record file (ratios
  are only compared within a run);
* ``npi-vs-lte.png``: exact match against the number of digits (log scale),
  every seed of the NPI and of Learning to Execute's LSTM trained on the same
  lengths, from one ``npi_vs_lte.py`` record.
* ``curriculum-forest.png``: ``combined`` minus ``baseline`` per cell with
  its 95% interval (Welch's t), teacher-forced accuracy, from the committed
  ten-seed sweeps in ``docs/curriculum-10-seeds/`` (their ``sweep.json`` and
  ``results.jsonl``): the 5,000-step grid and the two cells trained to the
  paper's stopping rule.

    python benchmarks/figures.py [--out docs/figures]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TIME_TO_ACCURACY = (
    ("AVX-512 rule, tiled products (cecad9d)", "time-to-accuracy-cpu-2core-amd-epyc-zen4-avx512-tiled-2026-12-02.json"),
    ("tuned default (57563e4)", "time-to-accuracy-cpu-2core-amd-epyc-zen4-tuned-2026-12-07-57563e4.json"),
)
"""(label, record file) of the time-to-accuracy rows, bottom to top."""
TRAINING_STEP = "cpu-2core-amd-epyc-zen4-tuned-2026-12-07-964ce45.json"
NPI_VS_LTE = "npi-vs-lte-2026-12-07-9ad8762.json"
"""The ``npi_vs_lte.py`` record drawn."""
CURRICULUM = Path(__file__).resolve().parents[1] / "docs" / "curriculum-10-seeds"
CURRICULUM_SWEEPS = (("5,000 steps, addition", "addition"), ("5,000 steps, programs", "programs"),
                     ("until lr < 0.001, addition", "addition-lr-rule"),
                     ("until lr < 0.001, programs", "programs-lr-rule"))
"""(label, folder under CURRICULUM) of the sweeps in the curriculum figure, top to bottom."""
RUNNERS = ("cpu", "cpu-tiled-2lanes", "cpu-blas-2lanes", "cpu-blas-1lane", "cpu-tiled-1lane", "torch")
"""The runners drawn, in order: the tuned default first."""


def time_to_accuracy_figure(records: list[tuple[str, dict]], title: str):
    """One row per (label, record): each seed's minutes to the target (x where not reached), the median marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.5, 1.2 + 0.75 * len(records)))
    for row, (_, record) in enumerate(records):
        reached = [run["target_minutes"] for run in record["runs"] if run["target_minutes"] is not None]
        missed = [run for run in record["runs"] if run["target_minutes"] is None]
        axes.scatter(reached, [row] * len(reached), s=36, alpha=0.7, color="tab:blue", zorder=3)
        if reached:
            median = statistics.median(reached)
            axes.plot([median, median], [row - 0.3, row + 0.3], color="black", linewidth=2, zorder=4)
            axes.annotate(f"median {median:.2f} min", (median, row + 0.32), ha="center", fontsize=8)
        if missed:
            axes.annotate(f"{len(missed)} not reached", (0.99, row), xycoords=("axes fraction", "data"),
                          ha="right", va="center", fontsize=8, color="tab:red")
        axes.annotate(f"{len(reached)} of {len(record['runs'])} seeds", (0.01, row - 0.35),
                      xycoords=("axes fraction", "data"), fontsize=7, color="dimgray")
    axes.set_yticks(range(len(records)), [label for label, _ in records])
    axes.set_ylim(-0.6, len(records) - 0.3)
    axes.set_xlim(left=0)
    axes.set_xlabel("minutes to the target (99% teacher-forced, 95% exact match); one dot per seed", fontsize=8)
    figure.suptitle(title, fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def training_step_figure(records: list[dict], title: str):
    """Per configuration, ms per step of every runner in :data:`RUNNERS`, one bar per run, torch's marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({r["config"] for r in records}, key=lambda c: ("paper", "small").index(c)
                     if c in ("paper", "small") else 2)
    runs = sorted({r.get("run", 1) for r in records})
    figure, panels = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.4), squeeze=False)
    for axes, config in zip(panels[0], configs):
        width = 0.8 / len(runs)
        for k, run in enumerate(runs):
            by_runner = {r["backend"]: r for r in records if r["config"] == config and r.get("run", 1) == run
                         and r["status"] == "ok"}
            shown = [name for name in RUNNERS if name in by_runner]
            ms = [by_runner[name]["ms_per_step"] for name in shown]
            colors = ["tab:blue" if name == "cpu" else "tab:gray" if name == "torch" else "tab:cyan"
                      for name in shown]
            axes.barh([i + (k - (len(runs) - 1) / 2) * width for i in range(len(shown))], ms, height=width,
                      color=colors, alpha=0.85)
        axes.set_yticks(range(len(shown)), [f"{name} (default, tuned)" if name == "cpu" else name
                                            for name in shown], fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel("ms per training step (lower is faster)", fontsize=8)
        sample = next(r for r in records if r["config"] == config)
        axes.set_title(f"{config}: {sample['layers']}x{sample['hidden']}, batch {sample['batch']}, "
                       f"window {sample['seq_len']}", fontsize=9)
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def npi_vs_lte_figure(record: dict, title: str):
    """Exact match against digits (log scale): a thin line per seed and system, their mean thick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.5, 3.6))
    systems = (("npi", "NPI (2x256 core, traces)", "tab:blue"), ("lte", "Learning to Execute (1x128 LSTM)",
                                                                  "tab:orange"))
    for key, label, color in systems:
        runs = [seed[key]["exact_by_digits"] for seed in record["seeds"].values() if key in seed]
        if not runs:
            continue
        digits = sorted({int(d) for run in runs for d in run})
        for run in runs:
            shown = sorted(int(d) for d in run)
            axes.plot(shown, [100 * run[str(d)] for d in shown], color=color, alpha=0.35, linewidth=1)
        mean = [100 * statistics.mean(run[str(d)] for run in runs if str(d) in run) for d in digits]
        for d in digits:
            measured = sum(str(d) in run for run in runs)
            if measured < len(runs):                     # a point not every seed was measured at
                axes.annotate(f"{measured} seed", (d, 100 * statistics.mean(run[str(d)] for run in runs
                                                                             if str(d) in run) - 6),
                              ha="center", fontsize=7, color=color)
        axes.plot(digits, mean, color=color, linewidth=2.2, marker="o", markersize=3,
                  label=f"{label}: mean of {len(runs)} seeds")
    trained = record["max_digits"]
    axes.axvspan(1, trained, color="gray", alpha=0.12, label=f"training lengths (1-{trained})")
    axes.set_xscale("log")
    axes.set_xlabel("digits of the longer operand (log scale)", fontsize=8)
    axes.set_ylabel("exact match, % of held-out additions", fontsize=8)
    axes.set_ylim(-3, 103)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center right")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def curriculum_forest_figure(sweeps: list[tuple[str, Path]], title: str):
    """Each sweep's combined - baseline per cell with its interval, teacher-forced accuracy, one figure."""
    from ltexec.comparison import compare_sweep
    from ltexec.plot import forest_figure, import_pyplot
    from ltexec.sweep import load_spec

    groups = [(label, load_spec(path).task, compare_sweep(path, ("teacher_forced_acc",))) for label, path in sweeps]
    return forest_figure(import_pyplot(), groups, title)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures"),
                        help="folder for the PNG files (default docs/figures)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tta = [(label, json.loads((RESULTS / name).read_text(encoding="utf-8"))) for label, name in TIME_TO_ACCURACY]
    figure = time_to_accuracy_figure(tta, "main job (3-digit addition, 1x128 LSTM): 2-core AMD EPYC (Zen 4), "
                                          "no GPU, one seed at a time")
    figure.savefig(out / "time-to-accuracy.png", dpi=120)
    steps = json.loads((RESULTS / TRAINING_STEP).read_text(encoding="utf-8"))
    figure = training_step_figure(steps, "one training step, float32, 2-core AMD EPYC (Zen 4); one bar per run "
                                         "(4 runs, OpenBLAS's own and AVX2 kernels alternating; medians of 9)")
    figure.savefig(out / "training-step.png", dpi=120)
    record = json.loads((RESULTS / NPI_VS_LTE).read_text(encoding="utf-8"))
    figure = npi_vs_lte_figure(record, "addition trained on 1-10 digits; 100 held-out additions per point; "
                                       "5 seeds each; 2-core AMD EPYC (Zen 4), no GPU")
    figure.savefig(out / "npi-vs-lte.png", dpi=120)
    figure = curriculum_forest_figure([(label, CURRICULUM / name) for label, name in CURRICULUM_SWEEPS],
                                      "after 5,000 steps, and until the paper's stopping rule; 10 seeds a cell "
                                      "(1x128 LSTM; 2-core AMD EPYC, Zen 4)")
    figure.savefig(out / "curriculum-forest.png", dpi=120, bbox_inches="tight")
    for name in ("time-to-accuracy.png", "training-step.png", "npi-vs-lte.png", "curriculum-forest.png"):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
