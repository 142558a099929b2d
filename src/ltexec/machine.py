"""What this machine is, as far as speed goes: CPU, vector extensions, BLAS library and its kernel, versions.

The benchmarks record these facts with every figure; the tuner
(:mod:`ltexec.tuning`) keys its remembered choices on them
(:func:`speed_key`), so a choice timed on one machine, BLAS kernel or library
version is never taken for another.
"""

from __future__ import annotations

import hashlib
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


def cpu_flags(fields: dict[str, str] | None = None) -> list[str] | None:
    """Every feature flag of the CPU (x86-64 ``flags``, Arm ``Features``), sorted; None where unreadable."""
    fields = cpuinfo_fields() if fields is None else fields
    flags = fields.get("flags", fields.get("Features"))
    return None if flags is None else sorted(set(flags.split()))


def vector_flags(fields: dict[str, str] | None = None) -> list[str] | None:
    """Which of :data:`VECTOR_FLAGS` the CPU has (from /proc/cpuinfo), or None where it cannot be read."""
    flags = cpu_flags(fields)
    return None if flags is None else [flag for flag in VECTOR_FLAGS if flag in flags]


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it), at least 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return usable or 1


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
    return [_described(pool) for pool in threadpool_info()]


def _described(pool: dict) -> dict:
    return {**{key: pool.get(key) for key in THREADPOOL_KEYS}, "library": os.path.basename(pool["filepath"])}


def thread_settings() -> dict[str, str | None]:
    """The values of :data:`THREAD_VARIABLES` in the environment (None: unset)."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def numpy_blas() -> list[dict]:
    """The BLAS libraries NumPy multiplies with (:func:`threadpools` entries).

    Those inside NumPy's installation (a wheel's ``numpy.libs``) where there
    are any, else every BLAS loaded: other packages (SciPy, torch) bring their
    own, loaded or not depending on what was imported.
    """
    numpy_root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    own = [pool for pool in blas
           if os.path.basename(os.path.dirname(pool["filepath"])) in ("numpy.libs", ".libs")
           and os.path.abspath(pool["filepath"]).startswith(numpy_root)]
    return [_described(pool) for pool in own or blas]


def speed_key() -> dict:
    """What decides which of the package's code paths runs fastest here.

    The CPU (model, a digest of its feature flags, usable cores), NumPy's
    BLAS (:func:`numpy_blas`) with its version and the kernel family it picked (not its
    current thread count, which the backends change while they run), and the
    versions of Python, NumPy, Numba, llvmlite and ltexec.
    """
    from ltexec import __version__
    fields = cpuinfo_fields()
    flags = cpu_flags(fields)
    blas = sorted((pool["internal_api"] or "", pool["version"] or "", pool["architecture"] or "", pool["library"])
                  for pool in numpy_blas())
    return {"processor": processor_name(fields), "machine": platform.machine(),
            "flags_sha256": None if flags is None else hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
            "usable_cores": usable_cores(),
            "blas": [dict(zip(("library", "version", "kernel", "file"), pool)) for pool in blas],
            "python": platform.python_version(), "numpy": np.__version__, "numba": package_version("numba"),
            "llvmlite": package_version("llvmlite"), "ltexec": __version__}


SOURCE_TREE = Path(__file__).resolve().parents[2]
"""The folder above ``src/``: the repository, where ltexec runs from a clone (an editable install)."""


def git_revision(repository: Path = SOURCE_TREE) -> dict:
    """The commit checked out in ``repository`` and whether tracked files differ from it (None: unknown, e.g.
    an installed wheel has no repository). Runs record it, so a result names the code that made it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}

