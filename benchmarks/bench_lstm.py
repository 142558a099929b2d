"""Training-step throughput of every backend and of torch.nn.LSTM, against the machine's GEMM ceiling.

One step is what training runs: forward over the window, BPTT, global-norm
clipping and the SGD update (``LSTMModel.loss_and_grads`` + ``SGD.step`` for
ltexec backends; Embedding + nn.LSTM + Linear + cross-entropy + clip_grad_norm_
+ torch.optim.SGD, with torch's default threads and oneDNN settings, for the
baseline). Inputs are random tokens, the mask about 30% ones, the state
carried from step to step.

Everything is measured in one run and interleaved: after a warm-up, each
repetition times one block of steps of every runner, in a rotated order and
after a short pause (so no runner starts while the previous one's idle
BLAS/OpenMP threads still spin), plus one large float32 matrix product
through NumPy's BLAS with its default threads (the machine's GEMM ceiling).
Each number is the median over repetitions, so load from other processes
hits every runner alike; how much CPU time other processes took meanwhile
is recorded with the results. FLOP/s are the step's nominal matrix-product
FLOPs (``flops.py``) over its time, the same count for every runner (a
backend that finds a shorter way shows more than it executes). Backends that
cannot run here are listed as skipped with their reason. Every record says
what it was measured on (``machine.py``: CPU, library versions, the BLAS and
its kernel, thread settings, git commit), for the ``cpu`` backend its lane
count and the options it fixed (``backend_choices``, and for the tuned
``cpu`` how: ``tuning``), and how the backend ran its recurrence
(``launch_mode``: "persistent" or "per-step launches (why)" for the GPU
backends, None for backends without launch modes), so a GPU timing never
stands for a mode that did not run.

    python benchmarks/bench_lstm.py [--config {paper,small,all}] [--quick] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from flops import check_paper_count, step_flops
from machine import machine, write_records
from ltexec.backends import available_backends, get_backend
from ltexec.model import LSTMModel
from ltexec.optim import SGD
from ltexec.vocab import VOCAB_SIZE

MASK_DENSITY = 0.3
LEARNING_RATE = 0.5
CLIP = 5.0
SETTLE_S = 0.25
"""Pause before each timed block: idle BLAS and OpenMP workers spin for up to ~0.1 s after their
last job, and would otherwise steal the cores from whichever runner comes next. One untimed step
follows the pause, so the block times steady back-to-back steps as in training."""


@dataclass(frozen=True)
class Config:
    name: str
    batch: int
    hidden: int
    layers: int
    seq_len: int
    vocab: int = VOCAB_SIZE
    dtype: str = "float32"

    @property
    def chars(self) -> int:
        """Characters one step trains on."""
        return self.batch * self.seq_len


CONFIGS = {
    "paper": Config("paper", batch=100, hidden=400, layers=2, seq_len=50),
    "small": Config("small", batch=100, hidden=128, layers=2, seq_len=20),
}


def random_window(cfg: Config, seed: int = 0):
    """Random ids x, y (T,B) and a 0/1 mask with about MASK_DENSITY ones."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cfg.vocab, (cfg.seq_len, cfg.batch))
    y = rng.integers(0, cfg.vocab, (cfg.seq_len, cfg.batch))
    mask = (rng.random((cfg.seq_len, cfg.batch)) < MASK_DENSITY).astype(cfg.dtype)
    return x, y, mask


def launch_details(backend) -> dict:
    """How ``backend`` ran its recurrence: ``launch_mode``.

    The GPU backends say "persistent" (one launch per layer and window) or
    "per-step launches (why)"; backends without launch modes (``numpy``,
    ``cpu``) give None for both. Read it after the timed steps: the mode is
    decided per shape when a layer first runs.
    """
    return {"launch_mode": getattr(backend, "launch_mode", None)}


class LtexecRunner:
    """One training step of LSTMModel on an ltexec backend, through the public API; ``options`` go to the backend.

    ``label`` names the runner in the records (default: the backend's name).
    """

    def __init__(self, backend_name: str, cfg: Config, label: str | None = None, make_backend=get_backend,
                 **options):
        self.name = label or backend_name
        self.backend = make_backend(backend_name, cfg.dtype, **options)
        # Options left to the tuner are fixed here, at the step's shapes, as the trainer does.
        self.tuning = self.backend.tune(cfg.seq_len, cfg.batch, cfg.hidden)
        self.device = self.backend.device_name()
        self.lanes = self.backend.lanes.count if backend_name == "cpu" else None
        self.model = LSTMModel(cfg.vocab, cfg.hidden, cfg.layers, backend=self.backend)
        self.optimizer = SGD(lr=LEARNING_RATE, clip=CLIP)
        self.x, self.y, self.mask = random_window(cfg)
        self.state = None

    def step(self) -> None:
        result = self.model.loss_and_grads(self.x, self.y, self.mask, self.state)
        self.optimizer.step(self.backend, self.model.params, result.grads)
        self.state = result.state
        self.backend.synchronize()

    def launch_details(self) -> dict:
        tuning = None if self.tuning is None else {"source": self.tuning.source, "workload": self.tuning.workload,
                                                   "timings_ms": self.tuning.timings_ms}
        return {**launch_details(self.backend), "step_products": getattr(self.backend, "step_products", None),
                "backend_choices": self.backend.choices, "tuning": tuning}


class TorchRunner:
    """The same step with torch.nn.LSTM and PyTorch's optimizer (defaults: threads, oneDNN).

    ``device_type`` "cuda" runs it on the current GPU (cuDNN's LSTM); TF32
    stays as torch's flags say (``gpu_check.py`` sets them).
    """

    name = "torch"
    lanes = None

    def __init__(self, cfg: Config, device_type: str = "cpu"):
        import torch
        self.torch = torch
        torch.manual_seed(0)
        self.device = torch_device_name(torch, device_type)
        dtype = getattr(torch, cfg.dtype)
        self.embedding = torch.nn.Embedding(cfg.vocab, cfg.hidden).to(device_type, dtype)
        self.lstm = torch.nn.LSTM(cfg.hidden, cfg.hidden, cfg.layers).to(device_type, dtype)
        self.linear = torch.nn.Linear(cfg.hidden, cfg.vocab).to(device_type, dtype)
        self.params = [p for m in (self.embedding, self.lstm, self.linear) for p in m.parameters()]
        for p in self.params:
            torch.nn.init.uniform_(p, -0.08, 0.08)
        self.optimizer = torch.optim.SGD(self.params, lr=LEARNING_RATE)
        x, y, mask = random_window(cfg)
        self.x, self.y = torch.from_numpy(x).to(device_type), torch.from_numpy(y).reshape(-1).to(device_type)
        self.mask = torch.from_numpy(mask).reshape(-1).to(device_type)
        self.cfg = cfg
        self.state = None

    def step(self) -> None:
        torch, cfg = self.torch, self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        hs, (h, c) = self.lstm(self.embedding(self.x), self.state)
        logits = self.linear(hs).reshape(-1, cfg.vocab)
        xent = torch.nn.functional.cross_entropy(logits, self.y, reduction="none")
        loss = (xent * self.mask).sum() / cfg.batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        self.state = (h.detach(), c.detach())
        loss.item()

    @staticmethod
    def launch_details() -> dict:
        return {"launch_mode": None, "step_products": None, "backend_choices": {},
                "tuning": None}


def torch_device_name(torch, device_type: str) -> str:
    """What a torch runner runs on: the CPU and its threads, or the GPU with the CUDA and cuDNN versions."""
    if device_type == "cpu":
        return f"CPU ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    return (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}")


class GemmRunner:
    """One n x n x n float32 product through NumPy's BLAS: the ceiling the steps are measured against."""

    name = "gemm"

    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        self.out = np.empty((n, n), np.float32)
        self.flops = 2 * n ** 3

    def step(self) -> None:
        np.matmul(self.a, self.b, out=self.out)


def seconds_per_step(runner, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return (time.perf_counter() - start) / steps


def time_interleaved(runners: list, block_s: float, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per step of every runner for each repetition, runners rotated between repetitions.

    After ``warmup`` steps (JIT compilation, first-touch allocation), each
    runner's block is as many steps as take about ``block_s``. Returns the
    times and the steps per block.
    """
    steps = {}
    for runner in runners:
        for _ in range(warmup):
            runner.step()
        steps[runner.name] = max(1, round(block_s / seconds_per_step(runner, 2)))
    times = {runner.name: [] for runner in runners}
    for rep in range(repeats):
        for k in range(len(runners)):
            runner = runners[(rep + k) % len(runners)]
            time.sleep(SETTLE_S)
            runner.step()
            times[runner.name].append(seconds_per_step(runner, steps[runner.name]))
    return times, steps


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class OtherLoad:
    """Share of the machine's CPU time that other processes used between start() and share() (Linux)."""

    def start(self) -> None:
        self._busy, self._own, self._wall = self._machine_busy_s(), self._own_s(), time.perf_counter()

    def share(self) -> float | None:
        if self._busy is None:
            return None
        others = (self._machine_busy_s() - self._busy) - (self._own_s() - self._own)
        return round(max(0.0, others) / ((time.perf_counter() - self._wall) * (os.cpu_count() or 1)), 3)

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def _machine_busy_s() -> float | None:
        try:
            with open("/proc/stat", encoding="utf-8") as stat:
                fields = [int(v) for v in stat.readline().split()[1:8]]
        except OSError:
            return None
        busy = sum(fields) - fields[3] - fields[4]               # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")


def cpu_variants() -> dict[str, dict]:
    """The cpu backend's forced variants, the tuner's candidates: per-step products x (the most lanes, one)."""
    from ltexec.backends.cpu.backend import Lanes
    most = Lanes().count
    return {f"cpu-{products}-{count}lane{'s' if count > 1 else ''}": {"step_products": products, "lanes": count}
            for products in ("blas", "tiled") for count in sorted({most, 1}, reverse=True)}


def runner_factories() -> tuple[dict, dict[str, str]]:
    """The runnable runner factories and, for every runner that cannot run here, the reason."""
    factories, skipped = {}, {}
    for name, reason in available_backends().items():
        if reason is None:
            factories[name] = lambda cfg, name=name: LtexecRunner(name, cfg)
            if name == "cpu":     # every candidate the tuner chooses from, beside its choice, for same-run ratios
                for label, choice in cpu_variants().items():
                    factories[label] = lambda cfg, label=label, choice=choice: LtexecRunner("cpu", cfg, label,
                                                                                            **choice)
        else:
            skipped[name] = reason
    try:
        import torch  # noqa: F401
        factories["torch"] = TorchRunner
    except ImportError as exc:
        skipped["torch"] = f"torch is not installed ({exc})"
    return factories, skipped


def bench_config(cfg: Config, quick: bool, repeats: int) -> list[dict]:
    factories, skipped = runner_factories()
    runners = [make(cfg) for make in factories.values()]
    gemm = GemmRunner(2048 if quick else 3072)
    load_before, other_load = load_average(), OtherLoad()
    other_load.start()
    times, steps = time_interleaved(runners + [gemm], block_s=0.15 if quick else 0.5,
                                    warmup=2, repeats=repeats)
    load_after = load_average()

    peak = gemm.flops / statistics.median(times[gemm.name])
    flops = step_flops(cfg.batch, cfg.seq_len, cfg.hidden, cfg.layers, cfg.vocab)
    torch_s = statistics.median(times["torch"]) if "torch" in times else None
    shape = {key: value for key, value in asdict(cfg).items() if key != "name"}
    common = {"config": cfg.name, **shape, "flops_per_step": flops,
              "gemm_peak_gflops": round(peak / 1e9, 1), "repeats": repeats, "quick": quick,
              "load_average_before": load_before, "load_average_after": load_after,
              "other_processes_cpu_share": other_load.share(), "machine": machine()}
    records = []
    for runner in runners:
        s = statistics.median(times[runner.name])
        records.append({"backend": runner.name, "device": runner.device, "lanes": runner.lanes,
                        **runner.launch_details(), **common, "status": "ok", "reason": None,
                        "ms_per_step": round(s * 1e3, 2),
                        "ms_per_step_min_max": [round(min(times[runner.name]) * 1e3, 2),
                                                round(max(times[runner.name]) * 1e3, 2)],
                        "steps_per_block": steps[runner.name],
                        "chars_per_s": round(cfg.chars / s, 1),
                        "gflops": round(flops / s / 1e9, 1),
                        "fraction_of_gemm_peak": round(flops / s / peak, 3),
                        "speedup_vs_torch": round(torch_s / s, 3) if torch_s else None})
    for name, reason in skipped.items():
        records.append({"backend": name, "device": None, "lanes": None, "launch_mode": None, "step_products": None,
                        "backend_choices": None, "tuning": None,
                        **common,
                        "status": "skipped", "reason": reason,
                        "ms_per_step": None, "chars_per_s": None, "gflops": None,
                        "fraction_of_gemm_peak": None, "speedup_vs_torch": None})
    return records


def print_table(records: list[dict]) -> None:
    header = (f"{'config':<7}{'backend':<18}{'ms/step':>10}{'chars/s':>10}{'GFLOP/s':>9}{'of peak':>9}{'vs torch':>9}"
              "  launch mode")
    print(header)
    print("-" * len(header))
    for r in records:
        if r["status"] != "ok":
            print(f"{r['config']:<7}{r['backend']:<18}  skipped: {r['reason']}")
            continue
        vs_torch = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        print(f"{r['config']:<7}{r['backend']:<18}{r['ms_per_step']:>10.1f}{r['chars_per_s']:>10.0f}"
              f"{r['gflops']:>9.1f}{r['fraction_of_gemm_peak']:>9.0%}{vs_torch:>9}  {r['launch_mode'] or '-'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("paper", "small", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--repeats", type=int, help="timed repetitions per runner (default 9, quick 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the records to FILE as a JSON list")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    check_paper_count(VOCAB_SIZE)

    names = list(CONFIGS) if args.config == "all" else [args.config]
    records = []
    for name in names:
        cfg = CONFIGS[name]
        print(f"{name}: {cfg.layers} x {cfg.hidden}, batch {cfg.batch}, window {cfg.seq_len}, "
              f"vocabulary {cfg.vocab}, {cfg.dtype}, "
              f"{step_flops(cfg.batch, cfg.seq_len, cfg.hidden, cfg.layers, cfg.vocab) / 1e9:.2f} GFLOP/step",
              file=sys.stderr)
        config_records = bench_config(cfg, args.quick, repeats)
        first = config_records[0]
        share = first["other_processes_cpu_share"]
        print(f"  float32 GEMM ceiling {first['gemm_peak_gflops']} GFLOP/s; other processes used "
              f"{'an unknown share' if share is None else f'{share:.0%}'} of the CPU time meanwhile "
              f"(load average {first['load_average_before']} -> {first['load_average_after']})",
              file=sys.stderr)
        records += config_records
    print_table(records)
    if args.json:
        write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
