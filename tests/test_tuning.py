"""The tuner: its choice for injected timing profiles, its cache file, and the cpu backend's use of it.

Timings are injected (a fake clock that each run advances by the candidate's
profile time, or a fake ``measure``), so the choice for an Intel-like profile
(OpenBLAS's kernels beat the tiled one) and an AMD-like one (the tiled
kernel wins) is checked on any machine.
"""

import json
import os
import re
import warnings

import numpy as np
import pytest

from ltexec import tuning
from ltexec.tuning import TuningCacheWarning, choose, label

CANDIDATES = [{"step_products": p, "lanes": n} for p in ("blas", "tiled") for n in (2, 1)]

# One layer's forward and backward at the paper's size, in ms, shaped like what was measured: on an Intel
# Xeon with two 512-bit FMA units OpenBLAS's per-step products beat the tiled kernel; on a Zen 4 the reverse.
INTEL_LIKE = {"step_products=blas lanes=2": 50.0, "step_products=blas lanes=1": 61.0,
              "step_products=tiled lanes=2": 70.0, "step_products=tiled lanes=1": 90.0}
AMD_LIKE = {"step_products=blas lanes=2": 69.0, "step_products=blas lanes=1": 72.0,
            "step_products=tiled lanes=2": 64.0, "step_products=tiled lanes=1": 82.0}
MACHINE = {"processor": "test CPU", "blas": [{"library": "openblas", "kernel": "SkylakeX"}]}


class FakeClock:
    """A clock that only ``run`` advances, by the candidate's time in ``profile`` (ms) plus ``noise``."""

    def __init__(self, profile: dict, noise=lambda label, n: 0.0):
        self.now, self.profile, self.noise, self.runs = 0.0, profile, noise, []

    def __call__(self) -> float:
        return self.now

    def run(self, choice: dict) -> None:
        name = label(choice)
        self.runs.append(name)
        self.now += (self.profile[name] + self.noise(name, len(self.runs))) / 1e3


@pytest.fixture(autouse=True)
def fresh_tuner(tmp_path, monkeypatch):
    """Each test with its own cache file and nothing remembered in the process."""
    monkeypatch.setenv(tuning.CACHE_VARIABLE, str(tmp_path / "tuning.json"))
    monkeypatch.setattr(tuning, "_chosen", {})
    return tmp_path / "tuning.json"


def tune(profile, machine=MACHINE, workload=None, **options):
    clock = FakeClock(profile, options.pop("noise", lambda name, n: 0.0))
    result = choose(CANDIDATES, clock.run, workload or {"backend": "cpu", "hidden": 400}, "one layer",
                    clock=clock, machine=machine, **options)
    return result, clock


@pytest.mark.parametrize("profile, chosen", [(INTEL_LIKE, {"step_products": "blas", "lanes": 2}),
                                             (AMD_LIKE, {"step_products": "tiled", "lanes": 2})])
def test_the_fastest_candidate_of_the_profile_is_chosen_and_every_time_reported(profile, chosen):
    result, _ = tune(profile)
    assert result.choice == chosen and result.source == "measured"
    assert result.timings_ms == pytest.approx(profile)
    line = result.describe()
    assert line.startswith(label(chosen) + " (tuned, measured") and all(name in line for name in profile)


def test_interference_after_a_switch_only_adds_time_so_it_does_not_move_the_choice():
    # The first runs after switching candidates are slowed (another candidate's threads still spinning).
    slowed = {"count": 0, "last": None}

    def noise(name, n):
        slowed["count"] = 0 if name != slowed["last"] else slowed["count"] + 1
        slowed["last"] = name
        return 40.0 if slowed["count"] < 2 else 0.0

    result, _ = tune(AMD_LIKE, noise=noise)
    assert result.choice == {"step_products": "tiled", "lanes": 2}


def test_the_budget_bounds_the_passes_and_every_candidate_is_warmed_up_first():
    _, quick = tune({name: 1.0 for name in INTEL_LIKE})             # 1 ms a run: all passes fit
    _, slow = tune({name: 200.0 for name in INTEL_LIKE}, refresh=True)   # 200 ms a run: one pass only
    assert quick.runs[:4] == [label(c) for c in CANDIDATES]          # one untimed run each, in order
    timed_per_pass = len(CANDIDATES) * tuning.REPEATS
    assert len(slow.runs) == len(CANDIDATES) + len(CANDIDATES) * (1 + tuning.REPEATS)
    assert len(quick.runs) > len(CANDIDATES) + tuning.MAX_PASSES * timed_per_pass   # warm-up runs too
    assert slow.runs[-tuning.REPEATS:] == [label(CANDIDATES[-1])] * tuning.REPEATS   # then stopped: over budget


def test_a_close_call_is_timed_again_where_the_budget_allows():
    close = {**INTEL_LIKE, "step_products=blas lanes=1": 50.5}          # within 3% of blas lanes=2
    result, clock = tune({name: ms / 50 for name, ms in close.items()})   # ~1 ms a run: budget to spare
    count = {name: clock.runs.count(name) for name in close}
    assert count["step_products=blas lanes=2"] > count["step_products=tiled lanes=2"]
    assert count["step_products=blas lanes=1"] > count["step_products=tiled lanes=1"]
    assert set(clock.runs[-30:]) <= {"step_products=blas lanes=2", "step_products=blas lanes=1"}
    assert result.choice == {"step_products": "blas", "lanes": 2}
    _, slow = tune({name: ms * 4 for name, ms in close.items()}, refresh=True)   # 200 ms a run: no time left
    assert set(slow.runs[-3:]) == {"step_products=tiled lanes=1"}


def test_a_single_candidate_is_taken_untimed():
    result = choose([{"lanes": 1}], lambda choice: pytest.fail("timed"), {"backend": "cpu"}, "x")
    assert result.source == "given" and result.choice == {"lanes": 1} and result.timings_ms is None
    assert result.describe() == "lanes=1 (given, not timed)"


def test_a_choice_is_remembered_in_the_file_for_the_same_machine_and_workload_only(fresh_tuner):
    first, _ = tune(INTEL_LIKE)
    assert fresh_tuner.exists() and not [p for p in os.listdir(fresh_tuner.parent) if p.endswith(".tmp")]
    tuning._chosen.clear()                                          # a new process: only the file remembers
    again, clock = tune(AMD_LIKE)
    assert again.source == "cached" and again.choice == first.choice and clock.runs == []
    assert "cached for this machine" in again.describe()
    other_blas = {**MACHINE, "blas": [{"library": "openblas", "kernel": "Haswell"}]}
    moved, _ = tune(AMD_LIKE, machine=other_blas)                   # another BLAS kernel: timed anew
    assert moved.source == "measured" and moved.choice["step_products"] == "tiled"
    wider, _ = tune(AMD_LIKE, workload={"backend": "cpu", "hidden": 800})
    assert wider.source == "measured"
    refreshed, _ = tune(AMD_LIKE, refresh=True)
    assert refreshed.source == "measured" and refreshed.choice["step_products"] == "tiled"
    entries = json.loads(fresh_tuner.read_text())["entries"]
    assert len(entries) == 3 and len(tuning.remembered(MACHINE)) == 2


def test_the_environment_variable_turns_the_file_off(fresh_tuner, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_VARIABLE, "off")
    assert tuning.cache_path() is None
    result, _ = tune(AMD_LIKE)
    assert result.source == "measured" and not fresh_tuner.exists()


@pytest.mark.parametrize("content, why", [("{not json", "could not be read as JSON"),
                                          ('{"format": "something-else", "version": 1}', "not an ltexec"),
                                          ('[1, 2]', "not an ltexec"),
                                          ('{"format": "ltexec-tuning", "version": 99, "entries": {}}',
                                           "version 99"),
                                          ('{"format": "ltexec-tuning", "version": 1, "entries": {"k": 3}}',
                                           "malformed")])
def test_a_corrupt_or_foreign_file_is_ignored_with_a_warning_and_rewritten(fresh_tuner, content, why):
    fresh_tuner.write_text(content)
    with pytest.warns(TuningCacheWarning, match=why):
        result, _ = tune(INTEL_LIKE)
    assert result.choice == {"step_products": "blas", "lanes": 2}
    assert json.loads(fresh_tuner.read_text())["format"] == tuning.FORMAT


def test_an_unwritable_cache_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(tuning.CACHE_VARIABLE, str(blocker / "tuning.json"))   # its folder is a file
    with pytest.warns(TuningCacheWarning, match="could not write the tuning cache"):
        result, _ = tune(AMD_LIKE)
    assert result.choice["step_products"] == "tiled"


@pytest.mark.parametrize("platform_name, variable, expected", [
    ("linux", "XDG_CACHE_HOME", ("xdg", "ltexec", "tuning.json")),
    ("darwin", None, ("home", "Library", "Caches", "ltexec", "tuning.json")),
    ("win32", "LOCALAPPDATA", ("local", "ltexec", "tuning.json"))])
def test_the_default_file_follows_the_platforms_cache_convention(tmp_path, monkeypatch, platform_name, variable,
                                                                 expected):
    monkeypatch.setattr(tuning.sys, "platform", platform_name)
    monkeypatch.setattr(tuning.Path, "home", lambda: tmp_path / "home")
    monkeypatch.delenv(tuning.CACHE_VARIABLE)
    if variable:
        monkeypatch.setenv(variable, str(tmp_path / expected[0]))
    assert tuning.cache_path() == tmp_path.joinpath(*expected)


# ------------------------------------------------------------------ the cpu backend

def fake_measure(profile, calls):
    def measure(candidates, run, budget_s=tuning.BUDGET_S, clock=None):
        calls.append([label(c) for c in candidates])
        return {label(c): [profile[label(c)] / 1e3] for c in candidates}
    return measure


@pytest.fixture
def cpu_backend():
    cpu = pytest.importorskip("ltexec.backends.cpu.backend")
    if cpu.CpuBackend.unavailable_reason():
        pytest.skip(cpu.CpuBackend.unavailable_reason())
    if cpu.Lanes().count < 2:
        pytest.skip("one lane only here: the lane candidates collapse to one")
    return cpu.CpuBackend


@pytest.mark.parametrize("profile, chosen", [(INTEL_LIKE, ("blas", 2)), (AMD_LIKE, ("tiled", 2))])
def test_the_cpu_backend_takes_the_profiles_choice(cpu_backend, monkeypatch, profile, chosen):
    calls = []
    monkeypatch.setattr(tuning, "measure", fake_measure(profile, calls))
    backend = cpu_backend()
    assert backend.choices == {}                                    # nothing fixed before tuning
    result = backend.tune(50, 100, 400)
    assert calls == [["step_products=blas lanes=2", "step_products=tiled lanes=2",     # lanes first (SETTLE_S)
                      "step_products=blas lanes=1", "step_products=tiled lanes=1"]]
    assert (backend.step_products, backend.lanes.count) == chosen
    assert backend.choices == {"step_products": chosen[0], "lanes": chosen[1]} == result.choice
    assert backend.tune(20, 8, 16) is result and len(calls) == 1   # fixed once


def test_given_options_are_never_timed_and_a_half_given_choice_times_the_rest(cpu_backend, monkeypatch):
    calls = []
    monkeypatch.setattr(tuning, "measure", fake_measure(INTEL_LIKE, calls))
    given = cpu_backend(step_products="tiled", lanes=1)
    assert given.choices == {"step_products": "tiled", "lanes": 1}
    assert given.tune(50, 100, 400).source == "given" and calls == []
    half = cpu_backend(step_products="tiled")
    assert half.tune(50, 100, 400).choice == {"step_products": "tiled", "lanes": 2}
    assert calls == [["step_products=tiled lanes=2", "step_products=tiled lanes=1"]]


def test_the_first_layer_run_tunes_at_its_own_shapes(cpu_backend, monkeypatch):
    workloads = []
    real_choose = tuning.choose
    monkeypatch.setattr(tuning, "measure", fake_measure(AMD_LIKE, []))
    monkeypatch.setattr(tuning, "choose", lambda c, r, workload, *a, **k: workloads.append(workload)
                        or real_choose(c, r, workload, *a, **k))
    backend = cpu_backend()
    rng = np.random.default_rng(0)
    T, B, D, H = 3, 5, 4, 6
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((T, B, D), (B, H), (B, H), (D, 4 * H),
                                                                   (H, 4 * H), (4 * H,))]
    backend.lstm_forward(*arrays, False)
    assert [(w["window"], w["batch"], w["hidden"]) for w in workloads] == [(T, B, H)]
    assert backend.choices == {"step_products": "tiled", "lanes": 2}


@pytest.mark.parametrize("lanes, message", [(0, "lanes must be an integer"), ("two", "lanes must be 'auto' or"),
                                            (3, "lanes must be an integer in 1..2, got 3")])
def test_a_bad_lane_count_is_named(cpu_backend, lanes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_backend(threads=2, lanes=lanes)


def test_a_run_records_its_choice_and_a_resumed_run_keeps_it(cpu_backend, monkeypatch, tmp_path):
    from ltexec.checkpoint import load_checkpoint
    from ltexec.trainer import train

    monkeypatch.setattr(tuning, "measure", fake_measure(AMD_LIKE, []))
    lines = []
    config = dict(task="addition", length=1, hidden=8, layers=1, batch=4, window=6, max_steps=2, eval_every=1,
                  eval_examples=4, backend="cpu")
    summary = train(config, out_dir=tmp_path / "run", log=lines.append)
    amd = {"step_products": "tiled", "lanes": 2}
    assert summary["backend_choices"] == amd
    start = next(line for line in lines if line.startswith("backend choices:"))
    assert "step_products=tiled lanes=2 (tuned, measured" in start and "step_products=blas lanes=1" in start
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(record["backend_choices"] == amd for record in metrics)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[1]["backend"] == {"name": "cpu", "choices": amd}

    # The machine now times the other way: the resumed run still computes as it did.
    monkeypatch.setattr(tuning, "_chosen", {})
    monkeypatch.setattr(tuning, "measure", fake_measure(INTEL_LIKE, []))
    lines.clear()
    resumed = train({"max_steps": 3}, out_dir=tmp_path / "run", resume=True, log=lines.append)
    assert resumed["backend_choices"] == amd
    assert "backend choices: step_products=tiled lanes=2 (given, not timed)" in lines
    with pytest.raises(ValueError, match=r"lanes must be an integer in 1..1, got 2 \(the checkpoint in .* recorded "
                                         r"the backend choices"):
        train({"max_steps": 4}, out_dir=tmp_path / "run", resume=True, threads=1)


def test_ltexec_tune_tunes_then_lists_this_machines_choices(cpu_backend, monkeypatch, capsys, fresh_tuner):
    from ltexec.cli import main

    monkeypatch.setattr(tuning, "measure", fake_measure(INTEL_LIKE, []))
    assert main(["tune", "--hidden", "16", "--batch", "8", "--window", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"tuning cache: {fresh_tuner}"
    assert out[1].startswith("cpu, window 5, batch 8, 16 units, float32: step_products=blas lanes=2 (tuned")
    assert out[2] == "remembered for this machine: 1"
    assert "one layer, 5 steps, batch 8, 16 units, float32" in out[3] and "step_products=tiled lanes=1" in out[3]
    monkeypatch.setattr(tuning, "_chosen", {})
    monkeypatch.setattr(tuning, "measure", fake_measure(AMD_LIKE, []))
    assert main(["tune", "--hidden", "16", "--batch", "8", "--window", "5"]) == 0
    assert "(tuned, cached for this machine" in capsys.readouterr().out     # remembered, not timed again
    assert main(["tune", "--hidden", "16", "--batch", "8", "--window", "5", "--refresh"]) == 0
    refreshed = capsys.readouterr().out
    assert "step_products=tiled lanes=2 (tuned, measured" in refreshed and "remembered for this machine: 1" in refreshed


def test_ltexec_tune_names_a_bad_argument(capsys):
    from ltexec.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["tune", "--hidden", "0"])
    assert stop.value.code == 2
    assert "argument --hidden: hidden must be an integer >= 1, got 0" in capsys.readouterr().err


def test_warnings_from_reading_are_not_repeated_when_writing(fresh_tuner):
    fresh_tuner.write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tune(INTEL_LIKE)
    assert len([w for w in caught if issubclass(w.category, TuningCacheWarning)]) == 1
