"""The benchmark scripts run and write complete records (tiny sizes; no timing is asserted)."""

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_lstm  # noqa: E402
import bench_sampler  # noqa: E402
import bench_step_product  # noqa: E402
import figures  # noqa: E402
import machine  # noqa: E402
import npi_vs_lte  # noqa: E402
import time_to_accuracy  # noqa: E402
from flops import PAPER_STEP_GFLOP, check_paper_count, step_flops  # noqa: E402

import ltexec.machine  # noqa: E402
from ltexec.backends import BACKENDS, available_backends  # noqa: E402

RECORD_KEYS = {"backend", "device", "lanes", "batch", "hidden", "layers", "seq_len", "dtype", "ms_per_step",
               "chars_per_s", "machine", "launch_mode", "backend_choices"}
MACHINE_KEYS = {"processor", "cpu_count", "machine", "vector_flags", "python", "implementation", "numpy", "numba",
                "torch", "threadpools", "thread_settings", "git"}
THREADPOOL_KEYS = {"user_api", "internal_api", "version", "architecture", "num_threads", "library"}


def check_machine(about: dict) -> None:
    """A record's description of the machine: hardware, versions, BLAS, thread settings, git commit."""
    assert MACHINE_KEYS <= set(about)
    assert about["cpu_count"] >= 1
    assert about["numpy"] == np.__version__ and about["numba"] == numba.__version__
    assert about["torch"] is None or isinstance(about["torch"], str)
    if os.path.exists("/proc/cpuinfo"):
        assert set(about["vector_flags"]) <= set(ltexec.machine.VECTOR_FLAGS)
    blas = [pool for pool in about["threadpools"] if pool["user_api"] == "blas"]
    assert blas, about["threadpools"]                      # NumPy's BLAS, with the kernel it selected
    for pool in about["threadpools"]:
        assert THREADPOOL_KEYS <= set(pool) and pool["num_threads"] >= 1 and "/" not in pool["library"]
    assert about["thread_settings"] == {name: os.environ.get(name) for name in ltexec.machine.THREAD_VARIABLES}
    assert {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS"} <= set(about["thread_settings"])
    git = about["git"]
    if (machine.REPOSITORY / ".git").exists():
        assert re.fullmatch("[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)


def test_step_flops_match_the_paper_count_and_scale_with_the_shape():
    assert abs(check_paper_count(51) / 77.4e9 - 1) < 0.001
    assert PAPER_STEP_GFLOP == round(step_flops(batch=100, seq_len=50, hidden=400, layers=2, vocab=51) / 1e9, 1)
    rows, H, V = 2 * 3, 4, 5                               # six (rows, H, 4H) products per layer
    assert step_flops(batch=2, seq_len=3, hidden=H, layers=2, vocab=V) == \
        2 * (6 * 2 * rows * H * 4 * H) + 3 * 2 * rows * H * V


def test_bench_lstm_times_every_runner_and_lists_the_others_as_skipped(capsys):
    tiny = bench_lstm.Config("tiny", batch=4, hidden=8, layers=2, seq_len=3)
    records = bench_lstm.bench_config(tiny, quick=True, repeats=1)
    by_backend = {r["backend"]: r for r in records}
    assert set(BACKENDS) <= set(by_backend) and "torch" in by_backend
    for name, reason in available_backends().items():
        record = by_backend[name]
        assert RECORD_KEYS <= set(record)
        assert (record["batch"], record["hidden"], record["layers"], record["seq_len"]) == (4, 8, 2, 3)
        if reason is None:
            assert record["status"] == "ok" and record["ms_per_step"] > 0
            # ms_per_step is rounded to 0.01 ms: over 1% of this tiny step's ~0.4 ms
            assert 12 / record["chars_per_s"] * 1e3 == pytest.approx(record["ms_per_step"], abs=0.0051)
        else:
            assert record["status"] == "skipped" and record["reason"] == reason
        if name == "cpu" and reason is None:
            assert record["lanes"] >= 1 and f"{record['lanes']} lane" in record["device"]
        else:
            assert record["lanes"] is None
    check_machine(records[0]["machine"])
    json.dumps(records)                                    # the --json output is plain JSON
    bench_lstm.print_table(records)
    lines = capsys.readouterr().out.splitlines()
    for record in records:
        line = next(line for line in lines if line.split()[:2] == ["tiny", record["backend"]])
        assert ("skipped: " in line) == (record["status"] == "skipped")


def test_bench_lstm_times_every_forced_cpu_variant_beside_the_tuned_default():
    factories, _ = bench_lstm.runner_factories()
    if "cpu" not in factories:
        pytest.skip("the cpu backend cannot run here")
    tiny = bench_lstm.Config("tiny", batch=4, hidden=8, layers=1, seq_len=3)
    variants = bench_lstm.cpu_variants()
    assert {"cpu-blas-1lane", "cpu-tiled-1lane"} <= set(variants) <= set(factories)
    for label, choice in variants.items():
        forced = factories[label](tiny).launch_details()
        assert forced["backend_choices"] == choice and forced["tuning"]["source"] == "given"
    default = factories["cpu"](tiny).launch_details()
    assert default["backend_choices"] in variants.values()
    assert default["tuning"]["source"] in ("measured", "cached")
    assert set(default["tuning"]["timings_ms"]) == {" ".join(f"{k}={v}" for k, v in c.items())
                                                     for c in variants.values()}


def test_bench_step_product_checks_and_times_every_block_and_records_the_machine(tmp_path, capsys):
    out = tmp_path / "records.json"
    assert bench_step_product.main(["--seconds", "0.005", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    variants = {r["variant"] for r in records}
    assert {"np.matmul", "step_product 5x64", "np.copyto(WhT, Wh.T)"} <= variants
    timed = [r for r in records if r["gflops"] is not None]
    assert {(r["config"], r["part"]) for r in timed} == {(c, d) for c in ("small", "paper")
                                                         for d in ("forward", "backward")}
    assert all(r["us"] > 0 and r["speedup_vs_matmul"] > 0 for r in timed)
    check_machine(records[0]["machine"])
    assert "| forward | small | 50 x 128 x 512 | np.matmul |" in capsys.readouterr().out


def test_bench_lstm_records_say_how_the_backend_launched(monkeypatch):
    tiny = bench_lstm.Config("tiny", batch=4, hidden=8, layers=1, seq_len=3)
    monkeypatch.setattr(bench_lstm, "runner_factories",
                        lambda: ({"cpu": lambda cfg: bench_lstm.LtexecRunner("cpu", cfg, threads=1)},
                                 {"cupy": "no GPU here"}))
    records = {r["backend"]: r for r in bench_lstm.bench_config(tiny, quick=True, repeats=1)}
    for record in records.values():
        assert "launch_mode" in record and "graph_fallback_reason" not in record
    assert records["cpu"]["launch_mode"] is None and records["cpu"]["backend_choices"]["lanes"] == 1   # threads=1
    assert records["cupy"]["status"] == "skipped" and records["cupy"]["launch_mode"] is None


def test_launch_details_read_a_backends_launch_mode():
    assert bench_lstm.launch_details(SimpleNamespace(launch_mode="persistent")) == {"launch_mode": "persistent"}
    assert bench_lstm.launch_details(object()) == {"launch_mode": None}


def test_bench_sampler_measures_every_task():
    records = bench_sampler.measure(count=50, repeats=1)
    assert [r["task"] for r in records] == ["addition", "copy", "programs"]
    assert all(r["examples_per_s"] > 0 and r["generate_per_s"] > 0 for r in records)
    assert records[0]["machine"]["cpu_count"] >= 1
    check_machine(records[0]["machine"])


def test_bench_sampler_writes_dated_records(tmp_path, capsys):
    path = tmp_path / "sampler.json"
    assert bench_sampler.main(["--count", "20", "--repeats", "1", "--json", str(path)]) == 0
    records = json.loads(path.read_text(encoding="utf-8"))
    assert [r["task"] for r in records] == ["addition", "copy", "programs"]
    assert len({r["date"] for r in records}) == 1 and re.match(r"\d{4}-\d\d-\d\dT", records[0]["date"])
    assert "sample_example/s" in capsys.readouterr().out


def test_machine_reads_vector_flags_and_leaves_unknowns_empty(tmp_path):
    assert ltexec.machine.vector_flags({"flags": "fpu sse4_2 avx avx2 fma avx512f"}) == \
        ["sse4_2", "avx", "avx2", "fma", "avx512f"]
    assert ltexec.machine.vector_flags({"Features": "fp asimd sve"}) == ["asimd", "sve"]
    assert ltexec.machine.vector_flags({}) is None
    assert ltexec.machine.processor_name({"model name": "AMD EPYC"}) == "AMD EPYC"
    assert machine.git_revision(tmp_path) == {"commit": None, "dirty": None}


def test_time_to_accuracy_runs_each_seed_and_records_every_key(tmp_path, capsys):
    path = tmp_path / "tta.json"
    # Zero targets are met at the first evaluation (step 20); the budget only has to reach it on a busy machine.
    job = ["--minutes", "3", "--length", "1", "--hidden", "8", "--eval-every", "20", "--backend", "numpy",
           "--target-tf", "0", "--target-exact", "0"]
    assert time_to_accuracy.main(["--seeds", "0-1", *job, "--runs", str(tmp_path / "runs"), "--json", str(path)]) == 0
    document = json.loads(path.read_text(encoding="utf-8"))
    assert {"date", "machine", "command", "runs", "summary"} <= set(document)
    check_machine(document["machine"])
    assert document["command"].startswith("python examples/train_addition.py --stop-at-target --seed '{seed}'")
    assert "--hidden 8" in document["command"]
    runs = document["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert {"seed", "status", "reached", "run_dir", "error", *time_to_accuracy.FROM_SUMMARY} == set(r)
        assert (r["status"], r["reached"], r["target_step"], r["stopped"], r["length"]) == ("done", True, 20,
                                                                                           "target met", 1)
        assert r["test_examples"] == 2000 and r["spikes"] == 0 and r["chars_per_s"] > 0
        assert (Path(r["run_dir"]) / "checkpoint.npz").is_file() and (Path(r["run_dir"]) / "train.log").is_file()
    assert document["summary"]["seeds"] == document["summary"]["reached"] == 2
    assert document["summary"]["median_target_step"] == 20
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["seed", "reached", "target"]
    assert [line.split()[:2] for line in table[2:4]] == [["0", "yes"], ["1", "yes"]]
    assert table[-1].startswith("reached the target in 2 of 2 seeds; median ")


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("0,3,5", [0, 3, 5]), ("2,0-2", [2, 0, 1])])
def test_time_to_accuracy_reads_seed_ranges_and_lists(text, seeds):
    assert time_to_accuracy.parse_seeds(text) == seeds


def test_time_to_accuracy_sets_seed_and_out_itself(capsys):
    with pytest.raises(SystemExit):
        time_to_accuracy.main(["--seeds", "0", "--seed", "3"])
    assert "--seed is set for each seed by this script" in capsys.readouterr().err


def test_the_readmes_figures_are_drawn_from_the_committed_records(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert figures.main(["--out", str(tmp_path)]) == 0
    names = ("time-to-accuracy.png", "training-step.png", "npi-vs-lte.png", "curriculum-forest.png")
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / name) for name in names]
    npi = {"max_digits": 2,
           "seeds": {"0": {"npi": {"exact_by_digits": {"1": 1.0, "9": 1.0}}, "lte": {"exact_by_digits": {"1": 0.5}}},
                     "1": {"npi": {"exact_by_digits": {"1": 1.0}}, "lte": {"exact_by_digits": {"1": 0.7}}}}}
    drawn = figures.npi_vs_lte_figure(npi, "t")
    assert [text.get_text() for text in drawn.axes[0].texts] == ["1 seed"]      # 9 digits: one seed of two
    labels = [text.get_text() for text in drawn.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["NPI (2x256 core, traces): mean of 2 seeds",
                          "Learning to Execute (1x128 LSTM): mean of 2 seeds"]
    record = {"runs": [{"target_minutes": 2.0}, {"target_minutes": None}, {"target_minutes": 3.0}]}
    drawn = figures.time_to_accuracy_figure([("a row", record)], "t")
    texts = [text.get_text() for text in drawn.axes[0].texts]
    assert "median 2.50 min" in texts and "1 not reached" in texts and "2 of 3 seeds" in texts


def test_npi_vs_lte_writes_its_record_with_the_fastest_seed_at_3000_digits_and_no_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(npi_vs_lte, "run_npi", lambda seed, args, out, log: {
        "minutes": 3.0 - seed, "exact_by_digits": {"1": 1.0}, "by_digits": {"1": {"exact": 1.0}}})
    monkeypatch.setattr(npi_vs_lte, "run_lte", lambda seed, args, out, log: {"exact_by_digits": {"1": 0.5}})
    monkeypatch.setattr(npi_vs_lte, "load_trained_npi", lambda run_dir: ("model", "config"))
    monkeypatch.setattr(npi_vs_lte, "exact_by_digits",
                        lambda model, config, digits, count, per_step, log: {"3000": {"exact": 1.0}})
    path = tmp_path / "record.json"
    assert npi_vs_lte.main(["--seeds", "0-1", "--out", str(tmp_path / "runs"), "--json", str(path)]) == 0
    record = json.loads(path.read_text())
    assert record["command"] == "python benchmarks/npi_vs_lte.py --seeds 0-1"     # where things went is not kept
    assert record["seeds"]["1"]["npi"]["exact_by_digits"] == {"1": 1.0, "3000": 1.0}   # the fastest to train
    assert record["seeds"]["0"]["npi"]["exact_by_digits"] == {"1": 1.0}
    assert record["seeds"]["0"]["lte"]["exact_by_digits"] == {"1": 0.5} and record["max_digits"] == 10


def test_npi_vs_lte_refuses_training_lengths_lte_cannot_be_measured_at_twice(capsys):
    with pytest.raises(SystemExit):
        npi_vs_lte.parse_args(["--max-digits", "11"])
    assert "--max-digits must be in 1..10 (LtE is evaluated at 2N <= 20), got 11" in capsys.readouterr().err
    assert npi_vs_lte.seeds_arg("2-4") == [2, 3, 4] and npi_vs_lte.seeds_arg("7") == [7]

