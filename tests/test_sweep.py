"""Sweeps: the grid, the spec check, validation, resume after a kill, parallel workers, seeds and their
summaries, sweeps written before seeds existed, the Ray executor."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Executor, Future
from pathlib import Path

import pytest

import ltexec
from ltexec import sweep
from ltexec.machine import git_revision, speed_key
from ltexec.cli import main
from ltexec.generalization import beyond_levels, evaluate_beyond
from ltexec.sweep import Cell, SweepSpec
from ltexec.trainer import Trainer

TINY = {"hidden": 8, "layers": 1, "batch": 4, "window": 10, "backend": "numpy", "eval_every": 5,
        "eval_examples": 8}
TINY_FLAGS = ["--hidden", "8", "--layers", "1", "--batch", "4", "--backend", "numpy", "--eval-every", "5",
              "--eval-examples", "8"]


def tiny_spec(**fields) -> SweepSpec:
    values = {"task": "addition", "strategies": ("baseline", "combined"), "lengths": (1, 2),
              "steps_per_cell": 10, "beyond": (1,), "train": TINY}
    return SweepSpec.from_dict({**values, **fields})


class InlineExecutor(Executor):
    """Runs each submitted call at once in this process (the tests' stand-in for worker processes)."""

    def __init__(self, fail_cell: str | None = None):
        self.fail_cell = fail_cell

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            if self.fail_cell and Path(args[0]["dir"]).name == self.fail_cell:
                raise RuntimeError("this cell fails")
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def inline_executor(fail_cell=None):
    @contextlib.contextmanager
    def factory(workers, threads):
        yield InlineExecutor(fail_cell)
    return factory


# ---------------------------------------------------------------------------- the grid
def test_programs_grid_is_strategies_by_nesting_by_length():
    spec = SweepSpec.from_dict({"task": "programs", "strategies": ["baseline", "mix"], "lengths": [1, 2, 3],
                                "nestings": [1, 2]})
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 3
    assert cells[0] == Cell("baseline", 1, 1, "none") and cells[-1] == Cell("mix", 3, 2, "none")
    assert len({c.name for c in cells}) == len(cells)
    assert cells[0].name == "baseline-L1-N1-none"


def test_copy_grid_is_strategies_by_transform_by_length():
    spec = SweepSpec.from_dict({"task": "copy", "strategies": ["combined"], "lengths": [5, 15],
                                "transforms": ["none", "reverse", "double", "both"]})
    cells = spec.cells()
    assert [(c.transform, c.length) for c in cells] == [(t, n) for t in ("none", "reverse", "double", "both")
                                                        for n in (5, 15)]
    assert {c.nesting for c in cells} == {1}


def test_cell_config_takes_grid_budget_and_training_options():
    spec = tiny_spec(strategies=["naive"], steps_per_cell=7)
    config = spec.cell_config(Cell("naive", 2))
    assert (config.task, config.length, config.strategy, config.max_steps, config.minutes) == \
        ("addition", 2, "naive", 7, None)
    assert (config.hidden, config.batch, config.backend) == (8, 4, "numpy")


def test_presets_and_overrides():
    paper = sweep.preset("paper")
    assert (paper.task, paper.lengths, paper.nestings, len(paper.strategies)) == \
        ("programs", (1, 2, 3, 4, 5, 6), (1, 2, 3), 4)
    assert paper.cell_config(paper.cells()[0]).hidden == 400
    cpu = sweep.preset("cpu", lengths=(1,), train={"seed": 3})
    assert cpu.lengths == (1,) and cpu.train["seed"] == 3
    assert cpu.train["hidden"] == sweep.PRESETS["cpu"]["train"]["hidden"]
    timed = sweep.preset("cpu", minutes_per_cell=2.0)
    assert (timed.minutes_per_cell, timed.steps_per_cell) == (2.0, None)


@pytest.mark.parametrize("fields, message", [
    ({"task": "chess"}, "task must be one of addition, copy, programs; got 'chess'"),
    ({"strategies": ["baseline", "best"]}, "strategies must be one of baseline, naive, mix, combined; got 'best'"),
    ({"lengths": [0]}, "lengths must be an integer >= 1, got 0"),
    ({"lengths": [2, 2]}, "lengths must not repeat a value, got 2 more than once"),
    ({"lengths": []}, "lengths must list at least one value"),
    ({"nestings": [2]}, "nestings apply only to task programs"),
    ({"transforms": ["none", "reverse"]}, "a sweep of task addition takes one transform"),
    ({"minutes_per_cell": 1.0}, "give steps_per_cell or minutes_per_cell, not both"),
    ({"steps_per_cell": 0}, "steps_per_cell must be an integer >= 1, got 0"),
    ({"train": {"length": 3}}, "train options must not set length"),
    ({"train": {"hiddn": 3}}, "unknown training option(s): hiddn"),
    ({"train": {"hidden": 0}}, "hidden must be an integer >= 1, got 0"),
    ({"seeds": 0}, "seeds must be an integer >= 1, got 0"),
])
def test_bad_spec_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError) as error:
        tiny_spec(**fields)
    assert message in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "0..2"], "argument --lengths: lengths must be an integer >= 1, got 0"),
    (["--strategies", "baseline,best"],
     "argument --strategies: strategies must be one of baseline, naive, mix, combined; got 'best'"),
    (["--workers", "0"], "argument --workers: workers must be an integer >= 1, got 0"),
    (["--preset", "gpu"], "argument --preset: invalid choice: 'gpu'"),
    (["--task", "copy", "--lengths", "5", "--nestings", "2"], "nestings apply only to task programs"),
    (["--seeds", "0"], "argument --seeds: seeds must be an integer >= 1, got 0"),
    (["--seeds", "x"], "argument --seeds: seeds must be an integer >= 1, got 'x'"),
])
def test_cli_refuses_bad_arguments_with_exit_2_and_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(["sweep", "--out", str(tmp_path / "s"), *argv])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_lists_accept_ranges():
    from ltexec.cli import build_parser

    args = build_parser().parse_args(["sweep", "--out", "x", "--lengths", "1..3,5", "--strategies", "mix,naive"])
    assert args.lengths == (1, 2, 3, 5) and args.strategies == ("mix", "naive")


def test_restart_with_another_grid_is_refused(tmp_path):
    sweep.open_sweep_dir(tmp_path, tiny_spec())
    sweep.open_sweep_dir(tmp_path, tiny_spec())                     # the same grid continues
    with pytest.raises(ValueError, match=r"different grid \(lengths: \[1, 2\] there, \[1, 3\] now\)"):
        sweep.open_sweep_dir(tmp_path, tiny_spec(lengths=[1, 3]))
    with pytest.raises(ValueError, match=r"different grid \(seeds: 1 there, 2 now\) \(seeds can be raised, not "
                                         r"lowered, and not from 1, whose runs are named without a seed\)"):
        sweep.open_sweep_dir(tmp_path, tiny_spec(seeds=2))
    assert sweep.load_spec(tmp_path) == tiny_spec()


def test_a_restart_with_more_seeds_adds_them_and_keeps_the_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "local_executor", inline_executor())
    argv = ["sweep", "--out", str(tmp_path), "--task", "addition", "--strategies", "baseline", "--lengths", "1",
            "--steps-per-cell", "6", "--beyond", "1", *TINY_FLAGS]
    assert main([*argv, "--seeds", "2"]) == 0
    kept = (tmp_path / sweep.RESULTS_NAME).read_text()
    with pytest.raises(ValueError, match=r"seeds: 2 there, 1 now\) \(seeds can be raised, not lowered"):
        sweep.open_sweep_dir(tmp_path, dataclasses.replace(sweep.load_spec(tmp_path), seeds=1))
    with pytest.raises(ValueError, match=r"lengths: \[1\] there, \[2\] now; seeds: 2 there, 3 now"):
        sweep.open_sweep_dir(tmp_path, dataclasses.replace(sweep.load_spec(tmp_path), lengths=(2,), seeds=3))
    capsys.readouterr()
    assert main([*argv, "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "seeds raised from 2 to 3: seeds 2-2 added" in out and "2 already done" in out
    assert sweep.load_spec(tmp_path).seeds == 3
    records = [json.loads(line) for line in (tmp_path / sweep.RESULTS_NAME).open()]
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert (tmp_path / sweep.RESULTS_NAME).read_text().startswith(kept)     # the first two runs untouched


# ------------------------------------------------------------------------- running
def test_parallel_workers_run_every_cell_and_keep_training_output_in_cell_logs(tmp_path):
    lines = []
    results = sweep.run_sweep(tiny_spec(), tmp_path, workers=2, log=lines.append)
    spec = tiny_spec()
    assert [r["cell"] for r in results] == [c.to_dict() for c in spec.cells()]
    assert [r["seed"] for r in results] == [0] * 4
    for run, result in zip(spec.runs(), results):
        directory = sweep.run_dir(tmp_path, run)
        assert {"metrics.jsonl", "checkpoint.npz", "train.log", "result.json"} <= {p.name for p in directory.iterdir()}
        assert "ltexec train: addition" in (directory / "train.log").read_text()
        assert result["steps"] == 10 and 0.0 <= result["exact_match_acc"] <= 1.0
        assert result["config"]["max_steps"] == 10 and result["chars_per_s"] > 0
        assert [level["offset"] for level in result["beyond"]] == ["length+1"]
        assert result["source"] == {"ltexec": ltexec.__version__, **git_revision(), "command": None,
                                    "machine": speed_key()}                  # the code and machine that made it
        assert result["backend_choices"] is not None
    assert len((tmp_path / sweep.RESULTS_NAME).read_text().splitlines()) == 4
    assert sum("finished" in line for line in lines) == 4 and "4/4 done" in lines[-1]
    assert not any("step " in line for line in lines)               # no trainer output among the progress lines
    table = sweep.results_table(tmp_path)
    assert table.count("\n") == 1 + 4 and "not run" not in table


def test_resume_after_kill_skips_finished_cells(tmp_path):
    """A sweep killed after its first cell: the restart keeps that cell and completes the others."""
    argv = [sys.executable, "-m", "ltexec", "sweep", "--out", str(tmp_path), "--task", "addition",
            "--strategies", "baseline,naive,combined", "--lengths", "1", "--steps-per-cell", "150",
            "--beyond", "1", *TINY_FLAGS]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    first = tmp_path / sweep.CELLS_DIR / "baseline-L1-N1-none" / sweep.CELL_RESULT_NAME
    deadline = time.monotonic() + 60
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert first.exists(), process.stderr.read().decode()
    kept = first.read_text()
    spec = sweep.load_spec(tmp_path)
    _, finished = sweep.load_results(tmp_path)
    assert len(finished) < len(spec.cells()), "the sweep ended before it was killed; make its cells longer"

    lines = []
    results = sweep.run_sweep(spec, tmp_path, executor_factory=inline_executor(), log=lines.append)
    assert first.read_text() == kept                                  # not re-run
    assert f"{len(finished)} already done" in lines[0]
    assert [r["cell"]["strategy"] for r in results] == ["baseline", "naive", "combined"]
    assert all(r["steps"] == 150 for r in results)
    assert len((tmp_path / sweep.RESULTS_NAME).read_text().splitlines()) == 3


def test_cell_with_a_checkpoint_resumes_from_it(tmp_path):
    spec = tiny_spec(strategies=["mix"], lengths=[1], steps_per_cell=12)
    (run,) = spec.runs()
    interrupt_after_5_steps(spec, run, tmp_path)
    (result,) = sweep.run_sweep(spec, tmp_path, executor_factory=inline_executor(), log=lambda line: None)
    assert "resumed from" in (sweep.run_dir(tmp_path, run) / "train.log").read_text()
    assert result["steps"] == 12
    assert logged_steps(tmp_path, run) == [5, 10, 12]


def interrupt_after_5_steps(spec: SweepSpec, run: sweep.Run, sweep_dir) -> None:
    """Leave ``run`` as a sweep killed after its step 5 leaves it: a checkpoint and no result."""
    config = spec.cell_config(run.cell, run.seed)
    config.max_steps = 5
    Trainer(config, sweep.run_dir(sweep_dir, run), log=lambda line: None).run()


def logged_steps(sweep_dir, run: sweep.Run) -> list[int]:
    return [json.loads(line)["step"] for line in (sweep.run_dir(sweep_dir, run) / "metrics.jsonl").open()]


def test_a_failed_cell_is_reported_and_the_others_finish(tmp_path):
    failed = "1 run\\(s\\) failed: baseline-L2-N1-none: RuntimeError: this cell fails"
    with pytest.raises(sweep.SweepError, match=failed):
        sweep.run_sweep(tiny_spec(), tmp_path, executor_factory=inline_executor("baseline-L2-N1-none"),
                        log=lambda line: None)
    _, results = sweep.load_results(tmp_path)
    assert len(results) == 3 and Cell("baseline", 2) not in results
    assert "| baseline | 1 | 2 | not run |" in sweep.results_table(tmp_path)


# --------------------------------------------------------------------------- seeds
def test_seeds_name_the_run_directories_only_when_several():
    assert [r.name for r in tiny_spec(lengths=[1]).runs()] == ["baseline-L1-N1-none", "combined-L1-N1-none"]
    spec = tiny_spec(lengths=[1], seeds=2, train={**TINY, "seed": 3})
    assert [(r.name, r.seed) for r in spec.runs()] == [("baseline-L1-N1-none-s3", 3), ("baseline-L1-N1-none-s4", 4),
                                                       ("combined-L1-N1-none-s3", 3), ("combined-L1-N1-none-s4", 4)]
    assert spec.cell_config(Cell("naive", 1), 4).seed == 4 and spec.cell_config(Cell("naive", 1)).seed == 3
    assert sweep.SweepSpec.from_dict(spec.to_dict()).seeds == 2


def test_two_seeds_per_cell_train_resume_and_are_skipped_on_a_rerun(tmp_path, monkeypatch, capsys):
    """Each cell trains once per seed (the seed reaches the run), an interrupted seed resumes, a rerun skips all."""
    monkeypatch.setattr(sweep, "local_executor", inline_executor())
    argv = ["sweep", "--out", str(tmp_path), "--task", "addition", "--strategies", "baseline", "--lengths", "1",
            "--steps-per-cell", "12", "--beyond", "1", "--seeds", "2", "--seed", "3", *TINY_FLAGS]
    flags_train = {k: v for k, v in TINY.items() if k != "window"}    # what TINY_FLAGS set
    spec = SweepSpec.from_dict({"task": "addition", "strategies": ["baseline"], "lengths": [1], "seeds": 2,
                                "steps_per_cell": 12, "beyond": [1], "train": {**flags_train, "seed": 3}})
    first, second = spec.runs()
    sweep.open_sweep_dir(tmp_path, spec)
    interrupt_after_5_steps(spec, second, tmp_path)
    assert main(argv) == 0
    assert "1 cells x 2 seeds, 0 already done" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / sweep.RESULTS_NAME).open()]
    assert [(r["seed"], r["config"]["seed"], r["steps"]) for r in records] == [(3, 3, 12), (4, 4, 12)]
    assert ["resumed from" in (sweep.run_dir(tmp_path, run) / "train.log").read_text()
            for run in (first, second)] == [False, True]
    assert logged_steps(tmp_path, first) == [5, 10, 12] and logged_steps(tmp_path, second) == [5, 10, 12]
    losses = [json.loads((sweep.run_dir(tmp_path, run) / "metrics.jsonl").open().readline())["loss"]
              for run in (first, second)]
    assert losses[0] != losses[1]                                     # different seeds, different training

    kept = [(sweep.run_dir(tmp_path, run) / sweep.CELL_RESULT_NAME).read_text() for run in (first, second)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 already done" in out and "started" not in out
    assert kept == [(sweep.run_dir(tmp_path, run) / sweep.CELL_RESULT_NAME).read_text() for run in (first, second)]
    assert "| baseline | 1 | 1 | " in out and "(n=2) | 12 ± 0 (n=2) |" in out
    assert {r["source"]["command"] for r in records} == {"ltexec " + " ".join(argv)}   # the command that made it


def test_backend_options_pin_the_cpu_path_of_every_run_and_are_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "local_executor", inline_executor())
    argv = ["sweep", "--out", str(tmp_path), "--task", "addition", "--strategies", "baseline,combined",
            "--lengths", "1", "--steps-per-cell", "6", "--beyond", "1", "--seeds", "2",
            *TINY_FLAGS[:6], *TINY_FLAGS[8:], "--backend", "cpu", "--step-products", "blas", "--lanes", "1",
            "--threads-per-cell", "1"]
    assert main(argv) == 0
    spec = sweep.load_spec(tmp_path)
    assert spec.backend_options == {"step_products": "blas", "lanes": 1}
    records = [json.loads(line) for line in (tmp_path / sweep.RESULTS_NAME).open()]
    assert len(records) == 4
    assert all(r["backend_choices"] == {"step_products": "blas", "lanes": 1} for r in records)
    assert main(["sweep", "--out", str(tmp_path)]) == 0                 # --out alone continues it: nothing left
    assert "4 already done" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--step-products", "blas"], "backend options (step_products) need a named backend (e.g. --backend cpu)"),
    (["--backend", "numpy", "--lanes", "1"], "backend 'numpy' takes no option 'lanes' in a sweep"),
    (["--backend", "cpu", "--lanes", "2", "--threads-per-cell", "1"], "lanes must be an integer"),
])
def test_bad_backend_options_are_refused_before_any_run(argv, message, tmp_path, capsys):
    code = main(["sweep", "--out", str(tmp_path / "s"), "--task", "addition", "--lengths", "1",
                 "--steps-per-cell", "2", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "s" / sweep.CELLS_DIR).exists()


def record(teacher_forced: float, exact: float, beyond_exact: float, steps: int = 10) -> dict:
    """A made-up finished run's result, with one level beyond its target."""
    return {"status": "done", "teacher_forced_acc": teacher_forced, "exact_match_acc": exact, "steps": steps,
            "chars_per_s": 1000.0, "beyond": [{"offset": "length+1", "teacher_forced_acc": beyond_exact,
                                               "exact_match_acc": beyond_exact}]}


def test_cell_summaries_give_mean_sample_sd_min_max_and_the_seeds_finished():
    spec = tiny_spec(strategies=["baseline"], seeds=3)
    l1, l2 = spec.cells()
    runs = spec.runs()
    results = {runs[0]: record(0.5, 0.1, 0.0), runs[1]: record(0.6, 0.2, 0.1, steps=20),
               runs[2]: record(0.7, 0.6, 0.2), runs[4]: record(0.9, 0.8, 0.3)}   # L2: only its seed 1
    summaries = sweep.cell_summaries(spec, results)
    assert list(summaries) == [l1, l2]
    tf = summaries[l1]["teacher_forced_acc"]
    assert (tf["mean"], tf["sd"], tf["min"], tf["max"], tf["n"]) == pytest.approx((0.6, 0.1, 0.5, 0.7, 3))
    assert summaries[l1]["exact_match_acc"]["sd"] == pytest.approx(math.sqrt(0.07))   # sample sd: divides by n - 1
    assert summaries[l1]["steps"]["mean"] == pytest.approx(40 / 3) and summaries[l1]["n"] == 3
    assert summaries[l1]["beyond"]["length+1"]["exact_match_acc"]["mean"] == pytest.approx(0.1)
    one = summaries[l2]
    assert one["n"] == 1 and one["teacher_forced_acc"]["mean"] == 0.9 and math.isnan(one["teacher_forced_acc"]["sd"])
    assert sweep.cell_summaries(spec, {}) == {}


def write_results(sweep_dir, spec: SweepSpec, records: dict[str, dict]) -> None:
    """A sweep directory whose runs named in ``records`` have finished with those results."""
    sweep.open_sweep_dir(sweep_dir, spec)
    for run in spec.runs():
        if run.name in records:
            sweep.write_json(sweep.run_dir(sweep_dir, run) / sweep.CELL_RESULT_NAME, records[run.name])


def test_table_shows_plain_values_for_one_seed_and_mean_sd_n_for_several(tmp_path):
    one = tiny_spec(strategies=["baseline"])
    write_results(tmp_path / "one", one, {"baseline-L1-N1-none": record(0.5, 0.25, 0.125)})
    assert sweep.results_table(tmp_path / "one").splitlines() == [
        "| strategy | nesting | length | teacher-forced | exact match | exact length+1 | steps | chars/s |",
        "|---|---|---|---|---|---|---|---|",
        "| baseline | 1 | 1 | 50.0% | 25.0% | 12.5% | 10 | 1,000 |",
        "| baseline | 1 | 2 | not run |  |  |  |  |"]
    two = tiny_spec(strategies=["baseline"], seeds=2)
    write_results(tmp_path / "two", two, {"baseline-L1-N1-none-s0": record(0.5, 0.25, 0.125),
                                          "baseline-L1-N1-none-s1": record(0.6, 0.35, 0.125, steps=20),
                                          "baseline-L2-N1-none-s1": record(0.7, 0.5, 0.0)})
    assert sweep.results_table(tmp_path / "two").splitlines()[2:] == [
        "| baseline | 1 | 1 | 55.0 ± 7.1% (n=2) | 30.0 ± 7.1% (n=2) | 12.5 ± 0.0% (n=2) | 15 ± 7 (n=2) | 1,000 |",
        "| baseline | 1 | 2 | 70.0% (n=1) | 50.0% (n=1) | 0.0% (n=1) | 10 (n=1) | 1,000 |"]


def test_a_sweep_written_before_seeds_existed_loads_resumes_and_tables_as_before(tmp_path, monkeypatch, capsys):
    """sweep.json without "seeds" and run directories named after their cell: one seed, the same layout."""
    spec = tiny_spec(strategies=["baseline", "naive"], lengths=[1], steps_per_cell=5)
    sweep.run_sweep(spec, tmp_path, executor_factory=inline_executor(), log=lambda line: None)
    old_spec = {k: v for k, v in json.loads((tmp_path / sweep.SPEC_NAME).read_text()).items() if k != "seeds"}
    sweep.write_json(tmp_path / sweep.SPEC_NAME, old_spec)
    unfinished = tmp_path / sweep.CELLS_DIR / "naive-L1-N1-none" / sweep.CELL_RESULT_NAME
    unfinished.unlink()                                               # killed after its last checkpoint
    table = sweep.results_table(tmp_path)
    assert "| naive | 1 | 1 | not run |" in table and "(n=" not in table
    assert sweep.load_spec(tmp_path) == spec and sweep.load_spec(tmp_path).seeds == 1

    monkeypatch.setattr(sweep, "local_executor", inline_executor())
    assert main(["sweep", "--out", str(tmp_path)]) == 0               # continue the sweep held there
    out = capsys.readouterr().out
    assert "2 cells, 1 already done" in out and "started  naive-L1-N1-none\n" in out and "started  baseline" not in out
    assert "resumed from" in unfinished.with_name("train.log").read_text() and unfinished.exists()
    assert json.loads((tmp_path / sweep.SPEC_NAME).read_text()) == old_spec      # left as it was
    assert out.rstrip().endswith(sweep.results_table(tmp_path)) and "not run" not in sweep.results_table(tmp_path)
    assert [r["cell"]["strategy"] for r in map(json.loads, (tmp_path / sweep.RESULTS_NAME).open())] == \
        ["baseline", "naive"]


# --------------------------------------------------------------------------- Ray
class FakeRay:
    """The part of Ray's API that RayExecutor uses: init, remote(fn).options(...).remote(...).future(), shutdown."""

    def __init__(self):
        self.calls = []

    def init(self, address):
        self.calls.append(("init", address))

    def shutdown(self):
        self.calls.append(("shutdown",))

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **options):
                fake.calls.append(("options", options))
                return self

            def remote(self, *args):
                future = Future()
                future.set_result(fn(*args))

                class Ref:
                    def future(self):
                        return future
                return Ref()
        return Task()


def test_ray_executor_runs_cells_as_tasks_with_thread_limits(tmp_path):
    ray = FakeRay()
    results = sweep.run_sweep(tiny_spec(lengths=[1]), tmp_path, workers=2, threads=3,
                              executor_factory=sweep.ray_executor("ray://head:10001", ray=ray), log=lambda line: None)
    assert len(results) == 2 and all(r["status"] == "done" for r in results)
    assert ray.calls[0] == ("init", "ray://head:10001") and ray.calls[-1] == ("shutdown",)
    options = [call[1] for call in ray.calls if call[0] == "options"]
    assert options == [{"num_cpus": 3, "runtime_env": {"env_vars": {
        "OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}}}] * 2


def test_missing_ray_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)                     # "import ray" raises ImportError
    with pytest.raises(sweep.MissingExtra, match=r'pip install "ltexec\[ray\]"'):
        sweep.ray_executor("auto")
    assert main(["sweep", "--out", str(tmp_path), "--task", "addition", "--lengths", "1", "--ray", "auto"]) == 1
    assert 'pip install "ltexec[ray]"' in capsys.readouterr().err


# ----------------------------------------------------------------- generalization
def test_beyond_levels():
    levels = beyond_levels("programs", 2, 3, (1, 2))
    assert [(d["length"], d["nesting"]) for d in levels] == [(3, 3), (4, 3), (2, 4), (2, 5)]
    assert [d["offset"] for d in beyond_levels("copy", 5, 1, (1,))] == ["length+1"]
    with pytest.raises(ValueError, match="beyond offsets must be an integer >= 1, got 0"):
        beyond_levels("addition", 2, 1, (0,))


def test_evaluate_beyond_loads_the_checkpoint_and_is_repeatable(tmp_path):
    spec = SweepSpec.from_dict({"task": "programs", "strategies": ["baseline"], "lengths": [1], "nestings": [1],
                                "steps_per_cell": 5, "beyond": [1], "train": TINY})
    (result,) = sweep.run_sweep(spec, tmp_path, executor_factory=inline_executor(), log=lambda line: None)
    again = evaluate_beyond(sweep.run_dir(tmp_path, spec.runs()[0]), offsets=(1,))
    assert again == result["beyond"]
    assert [(d["length"], d["nesting"]) for d in again] == [(2, 1), (1, 2)]


def test_the_paper_presets_follow_the_original_code():
    paper = sweep.preset("paper")
    assert paper.cell_config(paper.cells()[0]).eval_every == 100          # half the original's 200-step epoch
    assert paper.cell_config(paper.cells()[0]).draw == "number"
    copy = sweep.preset("paper-copy")
    assert copy.steps_per_cell == 4000                                      # Figure 7: 20 epochs of 200 steps
    assert copy.cell_config(copy.cells()[0]).eval_every == 100


def test_a_sweep_written_before_the_draw_option_keeps_drawing_per_example(tmp_path):
    spec = tiny_spec()
    sweep.open_sweep_dir(tmp_path, spec)
    path = tmp_path / sweep.SPEC_NAME
    old = {**json.loads(path.read_text()), "version": 1}
    path.write_text(json.dumps(old))
    assert sweep.load_spec(tmp_path).train["draw"] == "example"
    assert tiny_spec().train.get("draw") is None
