"""Strategies against baseline: the differences and intervals per cell, the table, what made the results
(pooled commits or backend paths said), and a published sweep read from its results.jsonl alone."""

from __future__ import annotations

import json
import shutil

import pytest

from ltexec import comparison, sweep
from ltexec.cli import main
from ltexec.intervals import welch_interval
from ltexec.sweep import Cell, SweepSpec

SPEC = {"task": "addition", "strategies": ["baseline", "combined"], "lengths": [3, 4], "seeds": 3,
        "steps_per_cell": 1}
ACCURACY = {("baseline", 3): [0.60, 0.62, 0.64], ("combined", 3): [0.50, 0.70, 0.90],
            ("baseline", 4): [0.50, 0.51, 0.52], ("combined", 4): [0.40, 0.41, 0.42]}


def fake_sweep(directory, commits=("a" * 40,), choices=({"step_products": "tiled", "lanes": 1},)) -> SweepSpec:
    """A finished sweep with the accuracies above; run k names commit and backend choices k % len(...)."""
    spec = SweepSpec.from_dict(SPEC)
    sweep.open_sweep_dir(directory, spec)
    for k, run in enumerate(spec.runs()):
        accuracy = ACCURACY[(run.cell.strategy, run.cell.length)][run.seed]
        sweep.write_json(sweep.run_dir(directory, run) / sweep.CELL_RESULT_NAME, {
            "status": "done", "cell": run.cell.to_dict(), "seed": run.seed, "teacher_forced_acc": accuracy,
            "exact_match_acc": accuracy / 10, "steps": 1, "chars_per_s": 1.0, "beyond": [], "backend": "cpu",
            "stopped": "reached 1 steps", "minutes": 0.25,
            **({} if run.seed == 2 else {"level": [run.seed + 1, 1], "advances": [{"step": 700, "to": [2, 1]}]
                                           if run.seed else []}),
            "backend_choices": choices[k % len(choices)],
            "source": {"ltexec": "0", "commit": commits[k % len(commits)], "dirty": False,
                       "command": "ltexec sweep --task addition"}})
    sweep.write_results_file(directory)
    return spec


def test_each_cell_is_compared_with_its_baseline_by_welch_interval(tmp_path):
    fake_sweep(tmp_path)
    differences = comparison.compare_sweep(tmp_path)
    assert [(d.cell, d.metric) for d in differences] == [
        (Cell("combined", 3), "teacher_forced_acc"), (Cell("combined", 3), "exact_match_acc"),
        (Cell("combined", 4), "teacher_forced_acc"), (Cell("combined", 4), "exact_match_acc")]
    wide, _, narrow, _ = differences
    assert wide.interval == welch_interval(sweep.spread(ACCURACY["baseline", 3]), sweep.spread(ACCURACY["combined", 3]))
    assert wide.interval.difference == pytest.approx(0.08) and not wide.interval.excludes_zero
    assert narrow.interval.difference == pytest.approx(-0.10) and narrow.interval.excludes_zero
    assert (narrow.baseline["n"], narrow.strategy["n"]) == (3, 3)


def test_table_rows_say_which_intervals_exclude_zero_and_name_the_code(tmp_path):
    fake_sweep(tmp_path)
    table = comparison.comparison_table(tmp_path)
    lines = table.splitlines()
    assert lines[2] == ("| combined | 3 digits | teacher-forced | 62.0 ± 2.0 (n=3) | 70.0 ± 20.0 (n=3) | "
                        "+8.0 [−41.0, +57.0] | includes 0 |")
    assert lines[4] == ("| combined | 4 digits | teacher-forced | 51.0 ± 1.0 (n=3) | 41.0 ± 1.0 (n=3) | "
                        "−10.0 [−12.3, −7.7] | below 0 |")
    assert lines[-1].endswith("12 runs; commit aaaaaaa; backend path cpu step_products=tiled lanes=1; "
                              "command ltexec sweep --task addition.")
    assert "Welch's t, 95%" in lines[-1] and "POOLED" not in table


def test_results_from_several_commits_or_paths_are_said_to_be_pooled(tmp_path):
    fake_sweep(tmp_path, commits=("a" * 40, "b" * 40), choices=({"step_products": "tiled"}, {"step_products": "blas"}))
    last = comparison.comparison_table(tmp_path).splitlines()[-1]
    assert "POOLED from 2 commits: aaaaaaa (6 runs); bbbbbbb (6 runs)" in last
    assert "POOLED from 2 backend paths: cpu step_products=tiled (6 runs); cpu step_products=blas (6 runs)" in last
    assert comparison.provenance([{"backend": "cpu"}]) == ("1 runs; commit unrecorded; backend path cpu (path "
                                                           "unrecorded); command unrecorded.")


def test_a_published_sweep_is_read_from_its_results_file_alone(tmp_path):
    spec = fake_sweep(tmp_path / "full")
    published = tmp_path / "published"
    published.mkdir()
    for name in (sweep.SPEC_NAME, sweep.RESULTS_NAME):
        shutil.copy(tmp_path / "full" / name, published / name)
    assert sweep.load_results(published) == sweep.load_results(tmp_path / "full")
    assert comparison.comparison_table(published) == comparison.comparison_table(tmp_path / "full")
    lines = (published / sweep.RESULTS_NAME).read_text().splitlines()
    stray = json.loads(lines[0])
    stray["seed"] = 7
    (published / sweep.RESULTS_NAME).write_text("\n".join([json.dumps(stray)] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="line 1 is a run the sweep's grid does not hold: baseline-L3-N1-none, seed 7"):
        sweep.load_results(published)
    (published / sweep.RESULTS_NAME).write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not a sweep result"):
        sweep.load_results(published)
    assert len(spec.runs()) == 12


def test_compare_command_prints_the_table_and_refuses_bad_arguments(tmp_path, capsys):
    fake_sweep(tmp_path / "s")
    assert main(["compare", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| strategy | target | accuracy |") and "−10.0 [−12.3, −7.7]" in out
    assert main(["compare", str(tmp_path / "s"), "--confidence", "0.5"]) == 0
    assert "50% interval" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "is not a sweep directory (no sweep.json)" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "s"), "--confidence", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "ltexec compare: error: confidence must be a finite number > 0.0 and < 1.0, got 1\n"


def test_runs_table_says_where_each_curriculum_got_to(tmp_path, capsys):
    fake_sweep(tmp_path)
    lines = comparison.runs_table(tmp_path).splitlines()
    assert len(lines) == 2 + 12
    assert lines[2] == "| baseline | 3 digits | 0 | reached 1 steps | 1 | 0.2 | 1,1 | none | 60.0% | 6.0% |"
    assert lines[3] == "| baseline | 3 digits | 1 | reached 1 steps | 1 | 0.2 | 2,1 | 2,1@700 | 62.0% | 6.2% |"
    assert "| 2 | reached 1 steps | 1 | 0.2 | not recorded | not recorded |" in lines[4]    # a result before the fields
    assert main(["compare", str(tmp_path), "--runs"]) == 0
    assert capsys.readouterr().out.endswith("\n".join(lines) + "\n")


def test_a_sweep_without_baseline_takes_it_from_another_trained_alike(tmp_path, capsys):
    fake_sweep(tmp_path / "base")
    spec = SweepSpec.from_dict({**SPEC, "strategies": ["mix"], "seeds": 2})
    sweep.open_sweep_dir(tmp_path / "mix", spec)
    for run in spec.runs():
        sweep.write_json(sweep.run_dir(tmp_path / "mix", run) / sweep.CELL_RESULT_NAME, {
            "status": "done", "cell": run.cell.to_dict(), "seed": run.seed, "teacher_forced_acc": 0.3 + run.seed / 10,
            "exact_match_acc": 0.0, "steps": 1, "chars_per_s": 1.0, "beyond": [], "backend": "cpu"})
    differences = comparison.compare_sweep(tmp_path / "mix", baseline_dir=tmp_path / "base")
    assert [d.cell for d in differences[::2]] == [Cell("mix", 3), Cell("mix", 4)]
    assert (differences[0].baseline["n"], differences[0].strategy["n"]) == (3, 2)
    assert differences[0].interval.difference == pytest.approx(0.35 - 0.62)
    table = comparison.comparison_table(tmp_path / "mix", baseline_dir=tmp_path / "base")
    assert f"(baseline: {tmp_path / 'base'})" in table and "10 runs" in table      # 4 mix runs + 6 baseline runs
    assert main(["compare", str(tmp_path / "mix"), "--baseline-from", str(tmp_path / "base")]) == 0
    assert "| mix | 3 digits | teacher-forced | 62.0 ± 2.0 (n=3) | 35.0 ± 7.1 (n=2) |" in capsys.readouterr().out

    with pytest.raises(ValueError, match="has its own baseline"):
        comparison.compare_sweep(tmp_path / "base", baseline_dir=tmp_path / "base")
    sweep.open_sweep_dir(tmp_path / "other", SweepSpec.from_dict({**SPEC, "strategies": ["naive"],
                                                                  "steps_per_cell": 2, "train": {"hidden": 8}}))
    with pytest.raises(ValueError, match=r"not trained alike \(steps_per_cell: 2 here, 1 there; train: "
                                         r"\{'hidden': 8\} here, \{\} there\)"):
        comparison.compare_sweep(tmp_path / "other", baseline_dir=tmp_path / "base")
    with pytest.raises(ValueError, match="has no baseline cells"):
        comparison.compare_sweep(tmp_path / "other", baseline_dir=tmp_path / "mix")
