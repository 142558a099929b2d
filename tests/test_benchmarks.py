"""The benchmark scripts run and write the records SPEC section 5 promises (tiny sizes; no timing is asserted)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_lstm  # noqa: E402
import bench_sampler  # noqa: E402
from flops import check_paper_count, step_flops  # noqa: E402
from ltexec.backends import BACKENDS, available_backends  # noqa: E402

RECORD_KEYS = {"backend", "device", "batch", "hidden", "layers", "seq_len", "dtype", "ms_per_step", "chars_per_s"}


def test_step_flops_match_the_paper_count_and_scale_with_the_shape():
    assert abs(check_paper_count(51) / 77.4e9 - 1) < 0.001
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
            assert record["chars_per_s"] == pytest.approx(12 / (record["ms_per_step"] / 1e3), rel=1e-2)
        else:
            assert record["status"] == "skipped" and record["reason"] == reason
    json.dumps(records)                                    # the --json output is plain JSON
    bench_lstm.print_table(records)
    lines = capsys.readouterr().out.splitlines()
    for record in records:
        line = next(line for line in lines if line.split()[:2] == ["tiny", record["backend"]])
        assert ("skipped: " in line) == (record["status"] == "skipped")


def test_bench_sampler_measures_every_task():
    records = bench_sampler.measure(count=50, repeats=1)
    assert [r["task"] for r in records] == ["addition", "copy", "programs"]
    assert all(r["examples_per_s"] > 0 and r["generate_per_s"] > 0 for r in records)
    assert records[0]["machine"]["cpu_count"] >= 1
