"""``ltexec sweep --ray`` against a real local Ray instance: the same results as ``--workers``.

Skipped when Ray is not installed (``pip install -e ".[ray]"``). The test starts its own
head node (2 CPUs, no dashboard) in a temporary directory and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

SWEEP = ["--task", "addition", "--strategies", "baseline,combined", "--lengths", "1", "--steps-per-cell", "10",
         "--beyond", "1", "--hidden", "8", "--layers", "1", "--batch", "4", "--backend", "numpy",
         "--eval-every", "5", "--eval-examples", "8", "--seed", "3"]
SAME = ("cell", "task", "length", "nesting", "strategy", "steps", "teacher_forced_acc", "exact_match_acc",
        "stopped", "beyond", "config")
"""The result fields that depend only on the run, not on where or when it ran."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_head():
    """The address of a fresh local Ray head node with 2 CPUs, stopped after the test.

    The node runs in its own process group (``ray start --block``) and only that
    group is stopped, never other Ray instances of the same user.
    """
    temp = Path(tempfile.gettempdir()) / f"ltexec-ray-{os.getpid()}"     # short: Ray's socket paths have a limit
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    head = subprocess.Popen([*command, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        wait_for_port(port, head)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_port(port: int, head: subprocess.Popen, seconds: float = 120.0) -> None:
    """Return once the head node accepts connections; fail with its error output if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}: {head.stderr.read()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"the Ray head node did not listen on port {port} within {seconds:.0f} s")


def sweep(out: Path, *extra: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "ltexec", "sweep", "--out", str(out), *SWEEP, *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_sweep_on_a_real_ray_instance_equals_the_same_sweep_with_workers(ray_head, tmp_path):
    on_ray = sweep(tmp_path / "ray", "--ray", ray_head)
    with_workers = sweep(tmp_path / "workers", "--workers", "2")
    assert len(on_ray) == len(with_workers) == 2
    assert [{k: r[k] for k in SAME} for r in on_ray] == [{k: r[k] for k in SAME} for r in with_workers]
    assert all(r["status"] == "done" for r in on_ray)
