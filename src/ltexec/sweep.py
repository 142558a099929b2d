"""Curriculum sweeps: the paper's grids of training runs, resumable and parallel.

A sweep trains ``seeds`` ordinary runs (:func:`~ltexec.trainer.open_run`) per
cell of a grid, one per seed: strategies x target length x nesting for
``programs`` and ``addition`` (the paper's Figures 4 and 5), strategies x
input transform x length for ``copy`` (Figure 7). Its directory holds

- ``sweep.json``: the grid, seeds and training options, written at the start;
  a restart with a different grid is refused, so results never mix two grids
  (more seeds are the exception: they add runs to every cell);
- ``cells/NAME/``: each run's own ``metrics.jsonl``, ``checkpoint.npz``,
  ``train.log`` (the trainer's output) and, once it is done, ``result.json``
  (written atomically: its presence is what marks the run finished; it names
  the code that made it, ``source``: ltexec's version and the git commit it
  ran from, with ``dirty`` where tracked files differed, the command
  that ran it and the machine, :func:`ltexec.machine.speed_key`). NAME is
  the cell's name, followed by ``-sSEED`` when the sweep has several seeds;
- ``results.jsonl``: every finished run's result, in grid order, rewritten
  after each run.

:func:`cell_summaries` gives each cell's mean and spread over its seeds.
Restarting the same sweep skips finished runs and resumes an interrupted
run from its checkpoint, so a killed sweep loses at most the work since the
last evaluation of the runs in flight. Cells run in worker processes on this
machine (:func:`local_executor`) or as Ray tasks on a cluster
(:class:`RayExecutor`); both are ``concurrent.futures`` executors and give the
same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from ltexec import __version__
from ltexec.atomic import atomic_write
from ltexec.backends import backend_options, get_backend
from ltexec.checkpoint import checkpoint_path
from ltexec.config import TrainConfig
from ltexec.curriculum import STRATEGIES
from ltexec.generalization import evaluate_beyond
from ltexec.machine import git_revision, speed_key
from ltexec.sampler import TASKS
from ltexec.trainer import open_run
from ltexec.validation import check_choice, check_float, check_int
from ltexec.vocab import TRANSFORMS

SPEC_NAME = "sweep.json"
RESULTS_NAME = "results.jsonl"
CELLS_DIR = "cells"
CELL_RESULT_NAME = "result.json"
CELL_LOG_NAME = "train.log"
SPEC_FORMAT = "ltexec-sweep"
SPEC_VERSION = 2
GRID_FIELDS = ("task", "length", "nesting", "strategy", "transform", "minutes", "max_steps")
"""TrainConfig fields that the grid and the budget set for each cell; the other fields are ``train`` options."""
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SUMMARY_METRICS = ("teacher_forced_acc", "exact_match_acc", "steps", "chars_per_s")
"""Result fields that :func:`summarize_cell` averages over a cell's seeds."""
BEYOND_METRICS = ("teacher_forced_acc", "exact_match_acc")
"""Fields of each level beyond the target that :func:`summarize_cell` averages."""


@dataclass(frozen=True)
class Cell:
    """One training run of a sweep: its target level, curriculum and input transform."""

    strategy: str
    length: int
    nesting: int = 1
    transform: str = "none"

    @property
    def name(self) -> str:
        """The cell's directory name, e.g. ``combined-L4-N3-none``."""
        return f"{self.strategy}-L{self.length}-N{self.nesting}-{self.transform}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: a cell trained from one seed, in the directory ``cells/NAME``."""

    cell: Cell
    seed: int
    name: str


@dataclass
class SweepSpec:
    """A grid of cells plus what every cell shares: budget, training options, generalization offsets.

    ``steps_per_cell`` or ``minutes_per_cell`` bounds each cell (neither: the
    paper's rule, train until the learning rate falls below ``min_lr``).
    ``train`` holds any other :class:`TrainConfig` field (hidden, layers, batch,
    seed, backend, ...). ``seeds`` is the number of runs per cell, from the
    ``train`` seed on. ``beyond`` lists the offsets k at which each trained
    model is also evaluated, at length + k and (programs) nesting + k.
    ``backend_options`` fixes options of the ``train`` backend (named, not
    ``auto``) in every run, e.g. the ``cpu`` backend's ``step_products``: a
    sweep can pin its float32 arithmetic instead of taking the tuner's choice.
    """

    task: str
    strategies: tuple = STRATEGIES
    lengths: tuple = (1,)
    nestings: tuple = (1,)
    transforms: tuple = ("none",)
    seeds: int = 1
    steps_per_cell: int | None = None
    minutes_per_cell: float | None = None
    beyond: tuple = (1, 2)
    train: dict = dataclasses.field(default_factory=dict)
    backend_options: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> SweepSpec:
        """Check every field; raise ValueError naming the first bad one."""
        check_choice("task", self.task, TASKS)
        self.strategies = check_list("strategies", self.strategies, lambda s: check_choice("strategies", s, STRATEGIES))
        self.lengths = check_list("lengths", self.lengths, lambda v: check_int("lengths", v, 1))
        self.nestings = check_list("nestings", self.nestings, lambda v: check_int("nestings", v, 1))
        self.transforms = check_list("transforms", self.transforms,
                                     lambda t: check_choice("transforms", t, TRANSFORMS))
        self.seeds = check_int("seeds", self.seeds, 1)
        self.beyond = check_list("beyond", self.beyond, lambda v: check_int("beyond", v, 1), allow_empty=True)
        if self.task != "programs" and self.nestings != (1,):
            raise ValueError(f"nestings apply only to task programs; got nestings "
                             f"{','.join(map(str, self.nestings))} for task {self.task}")
        if self.task != "copy" and len(self.transforms) > 1:
            raise ValueError(f"transforms: a sweep of task {self.task} takes one transform (its grid is nesting x "
                             f"length); got {','.join(self.transforms)}")
        if self.steps_per_cell is not None and self.minutes_per_cell is not None:
            raise ValueError("give steps_per_cell or minutes_per_cell, not both")
        if self.steps_per_cell is not None:
            self.steps_per_cell = check_int("steps_per_cell", self.steps_per_cell, 1)
        if self.minutes_per_cell is not None:
            self.minutes_per_cell = check_float("minutes_per_cell", self.minutes_per_cell, 0.0, inclusive_min=False)
        if not isinstance(self.train, dict):
            raise ValueError(f"train must be a dict of training options, got {type(self.train).__name__}")
        clash = sorted(set(self.train) & set(GRID_FIELDS))
        if clash:
            raise ValueError(f"train options must not set {', '.join(clash)}: the grid and the budget set them")
        self.cell_config(self.cells()[0])          # the training options themselves, as TrainConfig checks them
        self._check_backend_options()
        return self

    def _check_backend_options(self) -> None:
        if not isinstance(self.backend_options, dict):
            raise ValueError(f"backend_options must be a dict, got {type(self.backend_options).__name__}")
        if not self.backend_options:
            return
        name = self.train.get("backend", TrainConfig.backend)
        if name == "auto":
            raise ValueError(f"backend options ({', '.join(self.backend_options)}) need a named backend "
                             f"(e.g. --backend cpu), not auto: the backend auto picks may not take them")
        accepted = [option for option in backend_options(name) if option != "threads"]
        unknown = sorted(set(self.backend_options) - set(accepted))
        if unknown:
            raise ValueError(f"backend {name!r} takes no option {unknown[0]!r} in a sweep; "
                             f"its options are: {', '.join(accepted) or 'none'} (threads: --threads-per-cell)")

    def cells(self) -> list[Cell]:
        """Every cell, in grid order (strategy, then rows, then length)."""
        return [Cell(strategy, length, nesting, transform)
                for strategy, transform, nesting, length
                in itertools.product(self.strategies, self.transforms, self.nestings, self.lengths)]

    def seed_values(self) -> tuple[int, ...]:
        """The seeds every cell trains from: the ``train`` seed (default TrainConfig's) and the ones after it."""
        first = check_int("seed", self.train.get("seed", TrainConfig.seed), 0)
        return tuple(range(first, first + self.seeds))

    def runs(self) -> list[Run]:
        """Every run, in grid order with a cell's seeds together.

        The directory name carries the seed only when there are several, so a
        one-seed sweep has the layout of sweeps written before seeds existed.
        """
        return [Run(cell, seed, f"{cell.name}-s{seed}" if self.seeds > 1 else cell.name)
                for cell in self.cells() for seed in self.seed_values()]

    def cell_config(self, cell: Cell, seed: int | None = None) -> TrainConfig:
        """The validated training configuration of one cell trained from ``seed`` (default: the ``train`` seed)."""
        train = self.train if seed is None else {**self.train, "seed": seed}
        return TrainConfig.from_dict({**train, "task": self.task, "length": cell.length,
                                      "nesting": cell.nesting, "strategy": cell.strategy,
                                      "transform": cell.transform, "max_steps": self.steps_per_cell,
                                      "minutes": self.minutes_per_cell})

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}

    @classmethod
    def from_dict(cls, values: dict) -> SweepSpec:
        if values.get("version", SPEC_VERSION) < 2 and isinstance(values.get("train", {}), dict):
            # Written before the curriculum's draw option: its cells drew mix and combined per example.
            values = {**values, "train": {"draw": "example", **values.get("train", {})}}
        values = {k: v for k, v in values.items() if k not in ("format", "version")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sweep option(s): {', '.join(unknown)}")
        if "task" not in values:
            raise ValueError("a sweep needs a task: one of " + ", ".join(TASKS))
        return cls(**values).validate()


def check_list(name: str, values, check_item: Callable, allow_empty: bool = False) -> tuple:
    """``values`` as a tuple of checked items, refusing an empty list (unless allowed) and repeats."""
    if isinstance(values, (str, int)):
        values = (values,)
    items = tuple(check_item(v) for v in values)
    if not items and not allow_empty:
        raise ValueError(f"{name} must list at least one value")
    repeated = sorted({str(v) for v in items if items.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} must not repeat a value, got {', '.join(repeated)} more than once")
    return items


PRESETS = {
    # The paper's Figures 4 and 5: program evaluation, 2x400 LSTM, batch 100, until the lr rule stops it.
    "paper": {"task": "programs", "lengths": (1, 2, 3, 4, 5, 6), "nestings": (1, 2, 3)},
    # The paper's Figure 7: copying 5 to 65 digits under the four input transforms, "limited to 20
    # epochs" (its caption): 20 x 200 steps.
    "paper-copy": {"task": "copy", "lengths": (5, 15, 25, 35, 45, 55, 65), "transforms": TRANSFORMS,
                   "steps_per_cell": 4000},
    # Small enough for a 2-core CPU in about 30 minutes with two workers (see docs/experiments.md).
    "cpu": {"task": "programs", "lengths": (1, 2), "nestings": (1, 2), "steps_per_cell": 9000,
            "train": {"hidden": 128, "layers": 1, "batch": 32, "eval_every": 100, "eval_examples": 200}},
}


def preset(name: str, **overrides) -> SweepSpec:
    """A preset grid with some fields replaced (``train`` options are merged; a budget replaces the preset's)."""
    values = dict(PRESETS[check_choice("preset", name, PRESETS)])
    if {"steps_per_cell", "minutes_per_cell"} & set(overrides):
        values.pop("steps_per_cell", None)
        values.pop("minutes_per_cell", None)
    values["train"] = {**values.get("train", {}), **overrides.pop("train", {})}
    return SweepSpec.from_dict({**values, **overrides})


# ------------------------------------------------------------------ the sweep directory
def run_dir(sweep_dir, run: Run) -> Path:
    return Path(sweep_dir) / CELLS_DIR / run.name


def write_json(path, value) -> None:
    """Write ``value`` as JSON atomically (a reader sees the old file or the new one, never half of it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write((json.dumps(value, indent=1) + "\n").encode("utf-8")))


def load_spec(sweep_dir) -> SweepSpec:
    """The grid a sweep directory was started with."""
    path = Path(sweep_dir) / SPEC_NAME
    if not path.is_file():
        raise ValueError(f"{sweep_dir} is not a sweep directory (no {SPEC_NAME})")
    try:
        return SweepSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a readable sweep spec ({error})") from None


def open_sweep_dir(sweep_dir, spec: SweepSpec) -> str | None:
    """Write the spec of a new sweep, or check that a restart asks for the grid the directory holds.

    A restart may raise the seeds of a sweep that has several (its finished
    runs keep their names): ``sweep.json`` is rewritten and a line saying so
    returned. Any other difference is refused.
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SPEC_NAME
    wanted = spec.validate().to_dict()
    if not path.exists():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, wanted)
        return None
    held = load_spec(sweep_dir).to_dict()
    changed = [key for key in wanted if held.get(key) != wanted.get(key)]
    if not changed:
        return None
    before, after = held["seeds"], wanted["seeds"]
    if changed == ["seeds"] and 1 < before < after:
        write_json(path, wanted)
        return f"seeds raised from {before} to {after}: seeds {before}-{after - 1} added"
    differences = [f"{key}: {held.get(key)!r} there, {wanted.get(key)!r} now" for key in changed]
    extend = " (seeds can be raised, not lowered, and not from 1, whose runs are named without a seed)" \
        if "seeds" in changed else ""
    raise ValueError(f"{sweep_dir} holds a sweep with a different grid ({'; '.join(differences)}){extend}; "
                     f"rerun with the same arguments to continue it, or choose another --out")


def load_results(sweep_dir) -> tuple[SweepSpec, dict[Run, dict]]:
    """The sweep's spec and every finished run's result (runs not yet finished are absent).

    A sweep directory kept without its runs' directories (``sweep.json`` and
    ``results.jsonl`` alone, as a published result is) gives its results file's runs.
    """
    spec = load_spec(sweep_dir)
    if not (Path(sweep_dir) / CELLS_DIR).is_dir():
        return spec, results_from_file(spec, Path(sweep_dir) / RESULTS_NAME)
    results = {}
    for run in spec.runs():
        path = run_dir(sweep_dir, run) / CELL_RESULT_NAME
        if path.is_file():
            results[run] = json.loads(path.read_text(encoding="utf-8"))
    return spec, results


def results_from_file(spec: SweepSpec, path: Path) -> dict[Run, dict]:
    """The runs of ``spec`` whose results a ``results.jsonl`` holds; a line of another grid is a ValueError."""
    runs = {(run.cell, run.seed): run for run in spec.runs()}
    results = {}
    if not path.is_file():
        return results
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            key = (Cell(**record["cell"]), record["seed"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} line {number} is not a sweep result ({error})") from None
        if key not in runs:
            raise ValueError(f"{path} line {number} is a run the sweep's grid does not hold: {key[0].name}, "
                             f"seed {key[1]}")
        results[runs[key]] = record
    return results


def write_results_file(sweep_dir) -> Path:
    """Rewrite ``results.jsonl`` from the runs' result files, in grid order."""
    spec, results = load_results(sweep_dir)
    lines = "".join(json.dumps(results[r]) + "\n" for r in spec.runs() if r in results)
    path = Path(sweep_dir) / RESULTS_NAME
    atomic_write(path, lambda handle: handle.write(lines.encode("utf-8")))
    return path


# ------------------------------------------------------------------------- one run
def run_cell(job: dict) -> dict:
    """Train (or resume) one run of a cell, evaluate it beyond its target, write its result file; runs in a worker.

    ``job`` holds ``config`` (a TrainConfig dict, its seed the run's), ``dir``,
    ``cell``, ``beyond``, ``threads`` (the BLAS threads, i.e. lanes of the
    ``cpu`` backend, this run may use), ``backend_options`` and ``command``
    (what started the sweep, recorded in the result). The trainer's output goes to the run's
    ``train.log``. Returns the result, or ``{"status": "interrupted"}`` (no
    result file) if the run was stopped before its budget ran out.
    """
    out = Path(job["dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CELL_LOG_NAME, "a", encoding="utf-8") as log_file, \
            contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
        def log(line: str) -> None:
            print(line, file=log_file, flush=True)

        trainer = open_run(job["config"], out, resume=checkpoint_path(out).exists(), log=log,
                           threads=job["threads"], **job["backend_options"])
        summary = trainer.run()
        if summary["stopped"] == "interrupted":
            return {"status": "interrupted", "cell": job["cell"]}
        beyond = evaluate_beyond(out, job["beyond"], backend=trainer.model.backend)
    result = {"status": "done", "cell": job["cell"], "seed": trainer.config.seed, **summary, "beyond": beyond,
              "config": dataclasses.asdict(trainer.config), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "source": {"ltexec": __version__, **git_revision(), "command": job["command"], "machine": speed_key()}}
    write_json(out / CELL_RESULT_NAME, result)
    return result


# ------------------------------------------------------------------------ executors
def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that cap a fresh process's BLAS and OpenMP threads."""
    return {name: str(threads) for name in THREAD_VARIABLES}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for the block (worker processes spawned in it inherit them)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def local_executor(workers: int, threads: int):
    """Worker processes on this machine ("spawn": a fresh interpreter, no inherited threads or locks).

    A BLAS reads its thread count once, when NumPy is imported, so the cap is
    set in the environment that the workers are spawned with; the pool spawns
    them while the sweep submits its first cells, inside this block.
    """
    with _environment(thread_environment(threads)), \
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        yield pool


class RayExecutor(Executor):
    """Cells as Ray tasks on a cluster, behind the ``concurrent.futures`` interface.

    Every node needs ltexec installed and the sweep directory on a shared
    filesystem at the same path. ``ray`` is the imported module (a stand-in in tests).
    """

    def __init__(self, ray, address: str, threads: int):
        self._ray = ray
        self._threads = threads
        ray.init(address=address)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        task = self._ray.remote(fn).options(num_cpus=self._threads,
                                            runtime_env={"env_vars": thread_environment(self._threads)})
        return task.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._ray.shutdown()


class MissingExtra(RuntimeError):
    """An optional dependency that the requested feature needs is not installed."""


def import_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingExtra('--ray needs Ray, which is not installed: pip install "ltexec[ray]"') from None
    return ray


def ray_executor(address: str, ray=None):
    """An executor factory for :func:`run_sweep` that runs cells on the Ray cluster at ``address``.

    ``ray`` is the module to use (default: ``import ray``, with a clear error if it is missing).
    """
    ray = import_ray() if ray is None else ray

    @contextlib.contextmanager
    def factory(workers: int, threads: int):
        executor = RayExecutor(ray, address, threads)
        try:
            yield executor
        finally:
            executor.shutdown()

    return factory


# ------------------------------------------------------------------------ the sweep
class SweepError(RuntimeError):
    """Some cells of a sweep failed; the others' results are kept."""


class Progress:
    """One line per run started or finished: runs done, running and left, and an ETA."""

    def __init__(self, total: int, done: int, workers: int, log: Callable[[str], None]):
        self.total, self.done, self.workers, self.log = total, done, workers, log
        self.started: dict[Run, float] = {}
        self.durations: list[float] = []

    def start(self, run: Run) -> None:
        self.started[run] = time.monotonic()
        self._line(f"started  {run.name}")

    def finish(self, run: Run, outcome: str, detail: str = "", counted: bool = True) -> None:
        seconds = time.monotonic() - self.started.pop(run)
        if counted:
            self.done += 1
            self.durations.append(seconds)
        self._line(f"{outcome} {run.name} after {format_duration(seconds)}{detail}")

    def _line(self, event: str) -> None:
        running = len(self.started)
        left = self.total - self.done - running
        self.log(f"[sweep {self.done}/{self.total} done, {running} running, {left} left, "
                 f"ETA {self._eta(left)}] {event}")

    def _eta(self, left: int) -> str:
        if not self.durations:
            return "after the first run"
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        in_flight = sum(max(mean - (now - t), 0.0) for t in self.started.values())
        return format_duration((in_flight + left * mean) / self.workers)


def format_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def default_threads(workers: int) -> int:
    """BLAS threads per cell so that ``workers`` cells share this machine's cores without oversubscribing."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // workers)


def run_sweep(spec: SweepSpec, sweep_dir, workers: int = 1, threads: int | None = None,
              executor_factory=local_executor, log: Callable[[str], None] = print,
              command: str | None = None) -> list[dict]:
    """Run every unfinished run of ``spec`` with at most ``workers`` at once; return all results in grid order.

    ``executor_factory(workers, threads)`` is a context manager giving a
    ``concurrent.futures.Executor`` (:func:`local_executor`, :func:`ray_executor`).
    ``command`` (e.g. the ``ltexec sweep`` command line) goes into each result's ``source``.
    Raises :class:`SweepError` after the other runs are done if some failed.
    """
    workers = check_int("workers", workers, 1)
    threads = default_threads(workers) if threads is None else check_int("threads", threads, 1)
    spec.validate()
    if spec.backend_options:        # the backend checks their values (and lanes against threads) before any run
        get_backend(spec.train["backend"], threads=threads, **spec.backend_options)
    extended = open_sweep_dir(sweep_dir, spec)
    if extended:
        log(f"sweep {sweep_dir}: {extended}")
    runs = spec.runs()
    _, finished = load_results(sweep_dir)
    pending = [run for run in runs if run not in finished]
    progress = Progress(len(runs), len(finished), workers, log)
    seeds = f" x {spec.seeds} seeds" if spec.seeds > 1 else ""
    log(f"sweep {sweep_dir}: {len(spec.cells())} cells{seeds}, {len(finished)} already done, "
        f"{workers} worker{'s' if workers > 1 else ''} of {threads} thread{'s' if threads > 1 else ''}")
    failures = []
    if pending:
        with executor_factory(workers, threads) as executor:
            in_flight: dict[Future, Run] = {}
            queue = iter(pending)
            try:
                while True:
                    for run in itertools.islice(queue, workers - len(in_flight)):
                        job = {"config": dataclasses.asdict(spec.cell_config(run.cell, run.seed)),
                               "cell": run.cell.to_dict(), "dir": str(run_dir(sweep_dir, run)),
                               "beyond": list(spec.beyond), "threads": threads,
                               "backend_options": spec.backend_options, "command": command}
                        in_flight[executor.submit(run_cell, job)] = run
                        progress.start(run)
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        run = in_flight.pop(future)
                        failure = _report(future, run, progress)
                        if failure:
                            failures.append(failure)
                        write_results_file(sweep_dir)
            except KeyboardInterrupt:
                log(f"sweep interrupted: the runs in flight save a checkpoint; rerun the same command "
                    f"to continue ({len(in_flight)} run(s) will resume)")
                raise
    write_results_file(sweep_dir)
    if failures:
        raise SweepError(f"{len(failures)} run(s) failed: {'; '.join(failures)}; rerun to retry them "
                         f"(each run's train.log has its output)")
    _, results = load_results(sweep_dir)
    return [results[r] for r in runs if r in results]


def _report(future: Future, run: Run, progress: Progress) -> str | None:
    """Log a finished run; return a one-line failure description if it failed."""
    error = future.exception()
    if error is not None:
        progress.finish(run, "FAILED  ", f": {error}", counted=False)
        return f"{run.name}: {type(error).__name__}: {error}"
    result = future.result()
    if result["status"] == "interrupted":
        progress.finish(run, "stopped ", " (interrupted; it resumes on a rerun)", counted=False)
        return None
    progress.finish(run, "finished", f": {100 * result['teacher_forced_acc']:.1f}% char, "
                                     f"{100 * result['exact_match_acc']:.1f}% exact, {result['steps']} steps")
    return None


# ------------------------------------------------------------------ mean and spread
def spread(values) -> dict:
    """Mean, sample standard deviation (NaN for fewer than two values: no spread known), min, max and count."""
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
            "min": min(values), "max": max(values), "n": len(values)}


def summarize_cell(records: list[dict]) -> dict:
    """One cell's finished runs in one record: ``n`` runs, the spread of each summary metric and beyond level."""
    levels: dict[str, list[dict]] = {}
    for record in records:
        for level in record["beyond"]:
            levels.setdefault(level["offset"], []).append(level)
    return {"n": len(records), **{key: spread(r[key] for r in records) for key in SUMMARY_METRICS},
            "beyond": {offset: {key: spread(level[key] for level in found) for key in BEYOND_METRICS}
                       for offset, found in levels.items()}}


def cell_summaries(spec: SweepSpec, results: dict[Run, dict]) -> dict[Cell, dict]:
    """Each cell's :func:`summarize_cell` over its finished seeds, in grid order; cells with none are absent."""
    finished: dict[Cell, list[dict]] = {}
    for run in spec.runs():
        if run in results:
            finished.setdefault(run.cell, []).append(results[run])
    return {cell: summarize_cell(records) for cell, records in finished.items()}


# -------------------------------------------------------------------------- table
def format_spread(values: dict, several_seeds: bool, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """``mean ± sd (n=K)`` in a sweep of several seeds (no ``± sd`` from one finished seed), else the plain mean."""
    text = f"{scale * values['mean']:.{digits}f}"
    if not several_seeds:
        return text + unit
    if not math.isnan(values["sd"]):
        text += f" ± {scale * values['sd']:.{digits}f}"
    return f"{text}{unit} (n={values['n']})"


def results_table(sweep_dir) -> str:
    """A Markdown table of the sweep's results: one row per cell, missing cells marked.

    With one seed per cell the values are the run's; with several, each is the
    mean ± sample sd over the cell's finished seeds, n of them (chars/s: the mean).
    """
    spec, results = load_results(sweep_dir)
    summaries = cell_summaries(spec, results)
    several = spec.seeds > 1
    beyond = list(next(iter(summaries.values()), {}).get("beyond", {}))
    head = ["strategy", "transform" if spec.task == "copy" else "nesting", "length",
            "teacher-forced", "exact match", *(f"exact {b}" for b in beyond), "steps", "chars/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in spec.cells():
        row = [cell.strategy, cell.transform if spec.task == "copy" else str(cell.nesting), str(cell.length)]
        summary = summaries.get(cell)
        if summary is None:
            row += ["not run"] + [""] * (len(head) - 4)
        else:
            accuracies = [summary["teacher_forced_acc"], summary["exact_match_acc"],
                          *(summary["beyond"][b]["exact_match_acc"] for b in beyond)]
            row += [format_spread(a, several, scale=100, unit="%") for a in accuracies]
            row += [format_spread(summary["steps"], several, digits=0), f"{summary['chars_per_s']['mean']:,.0f}"]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)
