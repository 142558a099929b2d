"""Heatmaps and forest plots from a synthetic sweep: every figure written, missing cells drawn, several seeds
summarized and differences whose interval includes 0 marked, no display needed."""

from __future__ import annotations

import math
import sys

import pytest

from ltexec import sweep
from ltexec.cli import main
from ltexec.generalization import beyond_levels
from ltexec.sweep import SweepSpec

pytest.importorskip("matplotlib", reason='the plots need matplotlib: pip install -e ".[plot]"')

from ltexec import plot  # noqa: E402  (after the skip: plot needs matplotlib)


def fake_sweep(directory, spec: SweepSpec, skip=(), per_seed=0.0) -> None:
    """A sweep directory whose runs have made-up results (accuracy rising with the strategy's index and the seed)."""
    sweep.open_sweep_dir(directory, spec)
    for run in spec.runs():
        if run.name in skip:
            continue
        cell = run.cell
        accuracy = 0.2 + 0.2 * spec.strategies.index(cell.strategy) / cell.length + per_seed * run.seed
        beyond = [{**level, "teacher_forced_acc": accuracy / 2, "exact_match_acc": accuracy / 4}
                  for level in beyond_levels(spec.task, cell.length, cell.nesting, spec.beyond)]
        sweep.write_json(sweep.run_dir(directory, run) / sweep.CELL_RESULT_NAME,
                         {"status": "done", "cell": cell.to_dict(), "teacher_forced_acc": accuracy,
                          "exact_match_acc": accuracy / 2, "steps": 10, "chars_per_s": 1.0, "beyond": beyond})


def programs_spec(strategies=("baseline", "combined"), lengths=(1, 2), seeds=1) -> SweepSpec:
    return SweepSpec.from_dict({"task": "programs", "strategies": strategies, "lengths": lengths,
                                "nestings": [1, 2], "seeds": seeds, "steps_per_cell": 1})


def summaries_of(directory) -> dict:
    return sweep.cell_summaries(*sweep.load_results(directory))


def test_plot_writes_absolute_and_relative_figures_with_missing_cells(tmp_path):
    fake_sweep(tmp_path, programs_spec(), skip={"combined-L2-N2-none", "baseline-L1-N1-none"})
    written = plot.plot_sweep(tmp_path)
    names = {p.name for p in written}
    assert names == {f"{kind}-{metric}.{ext}" for kind in ("absolute", "relative", "forest")
                     for metric in ("teacher_forced", "exact_match") for ext in ("png", "svg")}
    for path in written:
        assert path.parent == tmp_path / "figures" and path.stat().st_size > 10_000
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in path.read_bytes()[:2000]


def test_grids_hold_percentages_and_nan_for_cells_not_run(tmp_path):
    spec = programs_spec()
    fake_sweep(tmp_path, spec, skip={"combined-L2-N1-none"})
    summaries = summaries_of(tmp_path)
    grid = plot._means(plot._grid(spec, summaries, "combined", "teacher_forced_acc"))
    assert len(grid) == 2 and len(grid[0]) == 2
    assert math.isnan(grid[0][1]) and grid[1][0] == pytest.approx(100 * (0.2 + 0.2 * 1 / 1))
    labels, columns, values = plot._beyond_grid(spec, summaries, "combined", "exact_match_acc")
    assert columns == ["target", "length+1", "length+2", "nesting+1", "nesting+2"]
    assert labels[:2] == ["L1 N1", "L2 N1"] and all(v is None for v in values[1])
    assert plot._accuracy_texts(values)[0][:2] == ["20", "10"]                   # one seed: no spread


def test_copy_sweep_without_baseline_has_transform_rows_and_no_relative_figure(tmp_path):
    spec = SweepSpec.from_dict({"task": "copy", "strategies": ["naive", "combined"], "lengths": [5],
                                "transforms": ["none", "reverse", "double", "both"], "steps_per_cell": 1})
    fake_sweep(tmp_path, spec)
    out = tmp_path / "elsewhere"
    written = plot.plot_sweep(tmp_path, out)
    assert sorted(p.name for p in written) == sorted(f"absolute-{m}.{e}" for m in ("teacher_forced", "exact_match")
                                                     for e in ("png", "svg"))
    assert plot._rows(spec) == ("transform", ("none", "reverse", "double", "both"))


def test_plot_command_and_its_errors(tmp_path, capsys):
    fake_sweep(tmp_path / "s", programs_spec(strategies=["naive"], lengths=[1]))
    assert main(["plot", str(tmp_path / "s"), "--figures", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "f" / f"absolute-{metric}.{ext}")
                                                    for metric in ("teacher_forced", "exact_match")
                                                    for ext in ("png", "svg")]
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "is not a sweep directory (no sweep.json)" in capsys.readouterr().err
    in_the_way = tmp_path / "s" / "figures"
    in_the_way.write_text("in the way")
    assert main(["plot", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == f"ltexec plot: error: figures_dir {in_the_way} is a file, not a directory\n"


def test_relative_cells_carry_the_welch_interval_of_the_difference():
    baseline, better = {"mean": 0.5, "sd": 0.1, "n": 2}, {"mean": 0.7, "sd": 0.1, "n": 2}
    interval = plot._relative_cell(better, baseline)
    assert interval.difference == pytest.approx(0.2) and not interval.excludes_zero    # 2 seeds: t(0.975, 2) = 4.3
    assert plot._relative_text(interval) == "+20.0\n[-23.0, +63.0]"
    assert plot._relative_cell(None, baseline) is None and plot._relative_text(None) == ""
    one_seed = plot._relative_cell({"mean": 0.7, "sd": math.nan, "n": 1}, baseline)
    assert plot._relative_text(one_seed) == "+20.0"                                 # no interval known


def relative_texts(spec, directory):
    """The numbers written in the first relative panel, row by row, and the figure's title."""
    plt = plot.import_pyplot()
    figure = plot._relative_figure(plt, spec, summaries_of(directory), "teacher_forced_acc", "accuracy")
    texts = [text.get_text() for text in figure.axes[0].texts]
    title = figure._suptitle.get_text()
    plt.close(figure)
    return texts, title


def test_seeds_show_mean_and_sd_and_mark_differences_whose_interval_includes_zero(tmp_path):
    """combined beats baseline by 20 points at length 1 and by 10 at length 2; each cell's seeds spread by sd 3.2."""
    spec = programs_spec(seeds=4)
    fake_sweep(tmp_path, spec, per_seed=0.025)
    summaries = summaries_of(tmp_path)
    assert plot._accuracy_texts(plot._grid(spec, summaries, "baseline", "teacher_forced_acc"))[0] == ["24±3"] * 2
    texts, title = relative_texts(spec, tmp_path)
    assert texts == ["+20.0\n[+14.4, +25.6]", "+10.0\n[+4.4, +15.6]"] * 2          # t(0.975, 6) = 2.447
    assert "95% interval of the difference, Welch's t" in title and "4 seeds" in title
    written = plot.plot_sweep(tmp_path)
    assert len(written) == 12 and all(path.stat().st_size > 10_000 for path in written)

    fake_sweep(tmp_path / "noisy", programs_spec(seeds=2), per_seed=0.12)          # 2 seeds, sd 8.5: 10 points is noise
    figure = plot._relative_figure(plot.import_pyplot(), programs_spec(seeds=2), summaries_of(tmp_path / "noisy"),
                                   "teacher_forced_acc", "accuracy")
    dotted = [patch for patch in figure.axes[0].patches if patch.get_hatch() == ".."]
    assert len(dotted) == 4                                  # every interval of 2 seeds that far apart includes 0

    fake_sweep(tmp_path / "one", programs_spec())
    texts, title = relative_texts(programs_spec(), tmp_path / "one")
    assert texts == ["+20.0", "+10.0"] * 2 and "interval" not in title


def test_forest_figure_draws_each_cell_with_its_interval_filled_where_it_excludes_zero(tmp_path):
    from ltexec.comparison import compare_sweep

    fake_sweep(tmp_path, programs_spec(seeds=4), per_seed=0.025)
    differences = compare_sweep(tmp_path, ("teacher_forced_acc",))
    plt = plot.import_pyplot()
    figure = plot.forest_figure(plt, [("A", "programs", differences), ("B", "addition", differences[:1])], "t")
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == [
        "B: 1 digits", "A: length 2, nesting 2", "A: length 1, nesting 2", "A: length 2, nesting 1",
        "A: length 1, nesting 1"]
    bars = [line for line in axes.lines if len(line.get_xdata()) == 2 and line.get_xdata()[0] != 0]
    assert [tuple(round(x, 1) for x in line.get_xdata()) for line in bars][:2] == [(14.4, 25.6), (4.4, 15.6)]
    marks = [line for line in axes.lines if line.get_marker() == "o"]
    assert len(marks) == 5 and all(mark.get_markerfacecolor() != "white" for mark in marks)
    plt.close(figure)


def test_a_sweep_written_before_seeds_existed_plots_as_before(tmp_path):
    spec = programs_spec()
    fake_sweep(tmp_path, spec)
    old_spec = {k: v for k, v in sweep.load_spec(tmp_path).to_dict().items() if k != "seeds"}
    sweep.write_json(tmp_path / sweep.SPEC_NAME, old_spec)
    assert len(plot.plot_sweep(tmp_path)) == 12
    grid = plot._means(plot._grid(spec, summaries_of(tmp_path), "combined", "teacher_forced_acc"))
    assert grid[0] == pytest.approx([40.0, 30.0])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(sweep.MissingExtra, match=r'pip install "ltexec\[plot\]"'):
        plot.import_pyplot()
