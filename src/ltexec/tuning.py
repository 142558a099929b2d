"""The tuner: among code paths that differ in speed and not in results (beyond rounding), take the fastest here.

A rule about machines ("AVX-512 -> the tiled kernel") was right on the CPU it
was measured on and wrong on the next one. So, as cuDNN's benchmark mode and
FFTW's planner do, a backend times its candidates once, on this machine, at
the shapes in use, and remembers:

* :func:`choose` runs each candidate's workload once untimed (compiling its
  kernels, filling its buffers), then in passes: per candidate, untimed runs
  for :data:`WARM_S` (caches and threads settle after the previous
  candidate) and :data:`REPEATS` timed ones, in the order given (a caller
  orders its candidates so that one leaves the least behind for the next);
  :data:`MIN_PASSES` passes, then more while the next one
  fits the budget (:data:`BUDGET_S`), at most :data:`MAX_PASSES`. A
  candidate's time is the median of its timed runs (not the fastest: one lane
  with a multi-threaded BLAS has a fast tail that the steady state does not
  keep), and the fastest candidate wins. Where several are within
  :data:`CLOSE` of the fastest and the budget is not spent, those are timed
  again (the same way) and their runs pooled: a busy machine can hide a gap
  of 10% in one round.
* The choice and every candidate's time go into a JSON cache file keyed by
  what decides speed (:func:`ltexec.machine.speed_key`: CPU, cores, BLAS
  library and kernel, versions) and by the workload (backend, dtype, shapes),
  written atomically. ``LTEXEC_TUNE_CACHE`` moves it (a file path) or turns it
  off (``off``); by default it lives in the user's cache directory
  (:func:`default_cache_path`). A corrupt or foreign file is ignored with a
  warning and replaced at the next write; an unwritable one costs a warning.
* Within a process a workload is tuned at most once (the file aside).

The timing function is injectable (``clock``), so tests check the choice for
any profile of candidate speeds on any machine.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Callable

from ltexec.atomic import atomic_write

CACHE_VARIABLE = "LTEXEC_TUNE_CACHE"
"""Environment variable: the cache file's path, or ``off`` for none."""

OFF = ("off", "0", "no", "false", "none")
FORMAT = "ltexec-tuning"
VERSION = 1

BUDGET_S = 1.0
"""Seconds of passes after which no further one starts (the first runs, which compile, come on top)."""
MIN_PASSES = 1
MAX_PASSES = 3
REPEATS = 3
"""Timed runs of a candidate per pass."""
CLOSE = 0.03
"""Candidates whose medians are within this fraction of the fastest are timed again, while the budget lasts."""
WARM_S = 0.02
"""Untimed runs of a candidate (at least one) before its timed ones in each pass, in seconds."""


class TuningCacheWarning(UserWarning):
    """The tuning cache could not be read or written; tuning goes on without it."""


def label(choice: dict) -> str:
    """A candidate's name: its options, e.g. ``step_products=tiled lanes=2``."""
    return " ".join(f"{name}={value}" for name, value in choice.items())


@dataclass(frozen=True)
class Tuning:
    """How a backend's speed-only options were fixed.

    ``choice``: the options taken (they reproduce the run as constructor
    options); ``timings_ms``: each candidate's median time for ``workload``
    (None unless something was chosen); ``source``: ``"measured"``,
    ``"cached"`` (this machine measured it before) or ``"given"`` (the caller
    fixed every option); ``seconds``: what choosing cost here.
    """

    choice: dict
    timings_ms: dict | None
    workload: str
    source: str
    seconds: float

    def describe(self) -> str:
        """One line for a run's start: what was chosen, how, and how fast each candidate was."""
        chosen = label(self.choice)
        if self.source == "given":
            return f"{chosen} (given, not timed)"
        how = f"measured in {self.seconds:.1f} s" if self.source == "measured" else "cached for this machine"
        times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.timings_ms.items())
        return f"{chosen} (tuned, {how}; {self.workload}: {times})"


def default_cache_path() -> Path:
    """The platform's per-user cache folder, then ``ltexec/tuning.json``.

    Linux and other Unix: ``$XDG_CACHE_HOME`` or ``~/.cache``; macOS:
    ``~/Library/Caches``; Windows: ``%LOCALAPPDATA%``.
    """
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "ltexec" / "tuning.json"


def cache_path() -> Path | None:
    """Where choices are remembered: ``$LTEXEC_TUNE_CACHE`` if set (None for ``off``), else the default."""
    value = os.environ.get(CACHE_VARIABLE)
    if value is None or value == "":
        return default_cache_path()
    return None if value.strip().lower() in OFF else Path(value).expanduser()


def entry_id(machine: dict, workload: dict) -> str:
    """The cache key of a workload on a machine: a digest of both, canonically serialised."""
    text = json.dumps({"machine": machine, "workload": workload}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class TuningCache:
    """The cache file: ``{"format", "version", "entries": {id: entry}}``, every machine's entries kept."""

    def __init__(self, path: Path | None):
        self.path = path

    def entries(self) -> dict:
        """Every entry in the file; {} (with a warning) where it is unreadable, corrupt or foreign."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return self._ignored(f"it could not be read as JSON ({error})")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return self._ignored(f"it is not an ltexec tuning cache (format {self._field(data, 'format')})")
        if data.get("version") != VERSION:
            return self._ignored(f"it has version {self._field(data, 'version')}; this ltexec writes {VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(self._valid(e) for e in entries.values()):
            return self._ignored("its entries are malformed")
        return entries

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    def put(self, key: str, entry: dict) -> None:
        """Add or replace one entry (read, merged, written atomically); a failure to write is a warning."""
        if self.path is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TuningCacheWarning)   # said when it was read for this tuning
            entries = {**self.entries(), key: entry}
        text = json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}, indent=1) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda handle: handle.write(text.encode("utf-8")))
        except OSError as error:
            warnings.warn(f"could not write the tuning cache {self.path} ({error}); set {CACHE_VARIABLE} to "
                          f"another file, or to 'off'", TuningCacheWarning, stacklevel=3)

    @staticmethod
    def _field(data, name):
        return repr(data.get(name)) if isinstance(data, dict) else f"of a JSON {type(data).__name__}"

    @staticmethod
    def _valid(entry) -> bool:
        return (isinstance(entry, dict) and isinstance(entry.get("choice"), dict)
                and isinstance(entry.get("timings_ms"), dict)
                and all(isinstance(ms, (int, float)) for ms in entry["timings_ms"].values()))

    def _ignored(self, why: str) -> dict:
        warnings.warn(f"ignoring the tuning cache {self.path}: {why}; it will be rewritten",
                      TuningCacheWarning, stacklevel=4)
        return {}


def measure(candidates: list[dict], run: Callable[[dict], None], budget_s: float = BUDGET_S,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each timed ``run(candidate)``, by :func:`label` (the module docstring says how)."""
    for candidate in candidates:                      # compiles and allocates: untimed
        run(candidate)
    times: dict[str, list[float]] = {label(c): [] for c in candidates}
    started = clock()
    for done in range(1, MAX_PASSES + 1):
        for candidate in candidates:
            warm_from = clock()
            run(candidate)
            while clock() - warm_from < WARM_S:
                run(candidate)
            for _ in range(REPEATS):
                t0 = clock()
                run(candidate)
                times[label(candidate)].append(clock() - t0)
        spent = clock() - started
        if done >= MIN_PASSES and spent + spent / done > budget_s:
            break
    return times


def close_calls(times: dict[str, list[float]]) -> list[str]:
    """The candidates whose median is within :data:`CLOSE` of the fastest median (the fastest first)."""
    medians = {name: median(seconds) for name, seconds in times.items()}
    ranked = sorted(medians, key=medians.get)
    return [name for name in ranked if medians[name] <= (1 + CLOSE) * medians[ranked[0]]]


_chosen: dict[str, Tuning] = {}
"""This process's choices by cache key: each workload is tuned once per process."""


def choose(candidates: list[dict], run: Callable[[dict], None], workload: dict, describe: str, *,
           refresh: bool = False, budget_s: float = BUDGET_S, clock: Callable[[], float] = time.perf_counter,
           machine: dict | None = None) -> Tuning:
    """The fastest of ``candidates`` (option dicts) for ``workload``: remembered, or timed with ``run``.

    ``workload`` (a JSON-able dict: backend, dtype, shapes, the candidates'
    names) and ``machine`` (default :func:`ltexec.machine.speed_key`) key the
    cache; ``describe`` says in words what one run times. ``refresh``
    measures again and replaces what was remembered. A single candidate is
    taken without timing (source ``"given"``).
    """
    started = time.perf_counter()
    if len(candidates) == 1:
        return Tuning(dict(candidates[0]), None, describe, "given", 0.0)
    if machine is None:
        from ltexec.machine import speed_key
        machine = speed_key()
    workload = {**workload, "candidates": [label(c) for c in candidates]}
    key = entry_id(machine, workload)
    cache = TuningCache(cache_path())
    names = {label(c): c for c in candidates}
    if not refresh:
        if key in _chosen:
            return _chosen[key]
        entry = cache.get(key)
        if entry is not None and label(entry["choice"]) in names:
            tuning = Tuning(entry["choice"], entry["timings_ms"], describe, "cached", time.perf_counter() - started)
            _chosen[key] = tuning
            return tuning
    measured_from = clock()
    times = measure(candidates, run, budget_s, clock)
    close = close_calls(times)
    left = budget_s - (clock() - measured_from)
    if len(close) > 1 and left > 0:                   # a close call, and time to look again: only those
        for name, seconds in measure([names[n] for n in close], run, left, clock).items():
            times[name] += seconds
    timings_ms = {name: round(1e3 * median(seconds), 3) for name, seconds in times.items()}
    best = min(timings_ms, key=timings_ms.get)
    tuning = Tuning(dict(names[best]), timings_ms, describe, "measured", time.perf_counter() - started)
    _chosen[key] = tuning
    cache.put(key, {"choice": tuning.choice, "timings_ms": timings_ms, "workload": workload, "machine": machine,
                    "describe": describe,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return tuning


def remembered(machine: dict | None = None) -> list[dict]:
    """This machine's entries in the cache file (the newest first), for ``ltexec tune``."""
    if machine is None:
        from ltexec.machine import speed_key
        machine = speed_key()
    entries = TuningCache(cache_path()).entries().values()
    return sorted((e for e in entries if e.get("machine") == machine), key=lambda e: str(e.get("date")),
                  reverse=True)
