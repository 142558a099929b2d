"""What a benchmark's numbers were measured on, recorded with every result.

:func:`machine` describes the hardware (CPU model, core count, vector
extensions), the software (Python, NumPy, Numba, torch), the BLAS library
NumPy calls and the kernel it selected for this CPU, the thread settings in
the environment, and the git commit of the code that ran;
:func:`write_records` writes a run's records, dated, as a JSON list.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np  # also loads NumPy's BLAS, which threadpoolctl only sees once loaded
from threadpoolctl import threadpool_info

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")
"""CPU features worth knowing when comparing BLAS and Numba speeds (x86-64 flags, Arm features)."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Environment variables that set the BLAS's and OpenMP's thread counts or OpenBLAS's kernel choice."""

THREADPOOL_KEYS = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer",
                   "num_threads")

REPOSITORY = Path(__file__).resolve().parents[1]


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux), else an empty dict."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def processor_name(fields: dict[str, str] | None = None) -> str:
    """The CPU model where the system names it (Linux), else what ``platform`` knows."""
    fields = cpuinfo_fields() if fields is None else fields
    return fields.get("model name") or platform.processor() or platform.machine()


def vector_flags(fields: dict[str, str] | None = None) -> list[str] | None:
    """Which of :data:`VECTOR_FLAGS` the CPU has (from /proc/cpuinfo), or None where it cannot be read."""
    fields = cpuinfo_fields() if fields is None else fields
    flags = fields.get("flags", fields.get("Features"))
    if flags is None:
        return None
    present = set(flags.split())
    return [flag for flag in VECTOR_FLAGS if flag in present]


def package_version(name: str) -> str | None:
    """The installed version of a distribution (without importing it), or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def threadpools() -> list[dict]:
    """The BLAS and OpenMP libraries loaded in this process: which, what version, which kernel, how many threads.

    ``architecture`` is the kernel family the BLAS picked for this CPU (e.g.
    OpenBLAS's ``Haswell``, ``SkylakeX`` or ``Zen``); ``library`` is the file's name.
    """
    return [{**{key: pool.get(key) for key in THREADPOOL_KEYS}, "library": os.path.basename(pool["filepath"])}
            for pool in threadpool_info()]


def thread_settings() -> dict[str, str | None]:
    """The values of :data:`THREAD_VARIABLES` in the environment (None: unset)."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def git_revision(repository: Path = REPOSITORY) -> dict:
    """The commit checked out in ``repository`` and whether tracked files differ from it (None: unknown)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine(**extra) -> dict:
    """Hardware, software, BLAS, thread settings and git commit, plus anything given as ``extra``."""
    fields = cpuinfo_fields()
    return {"processor": processor_name(fields), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "vector_flags": vector_flags(fields),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "numpy": np.__version__, "numba": package_version("numba"),
            "torch": package_version("torch"),
            "threadpools": threadpools(), "thread_settings": thread_settings(), "git": git_revision(), **extra}


def write_records(path, records: list[dict]) -> None:
    """Write ``records`` to ``path`` as a JSON list, each stamped with the current UTC time as ``date``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "w", encoding="utf-8") as out:
        json.dump([{**record, "date": stamp} for record in records], out, indent=1)
        out.write("\n")
