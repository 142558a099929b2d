"""Where the tests find CUDA toolkit programs (nvcc, ptxas) for register and spill reports.

The ``compile`` and ``cuda13`` extras install ``nvidia-cuda-nvcc`` (``cuda12``
its CUDA 12 wheel), whose ptxas is the same CUDA release as the NVVM that
numba-cuda compiles with, so it can read the PTX NVVM writes. A toolkit on
PATH is the fallback; it may be older than NVVM (ptxas 13.0 rejects PTX ISA
9.5 from NVVM 13.5), and :func:`run_ptxas` then skips with that reason
instead of failing on a version mismatch.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def toolkit_program(name: str) -> str | None:
    """Path of ``name`` from the nvidia-cuda-nvcc wheel (CUDA 13, else 12), else from PATH, else None."""
    for namespace in ("nvidia.cu13", "nvidia.cuda_nvcc"):    # the CUDA 13 wheels' folder; CUDA 12's nvcc wheel
        try:
            wheel = importlib.import_module(namespace)
        except ImportError:
            continue
        for folder in getattr(wheel, "__path__", ()):
            program = Path(folder) / "bin" / name
            if program.is_file():
                return str(program)
    return shutil.which(name)


def run_ptxas(ptx_file: Path, arch: str, cubin: Path) -> str:
    """ptxas's verbose resource report for one PTX file; skips if no ptxas here can read that PTX."""
    ptxas = toolkit_program("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not installed (pip install nvidia-cuda-nvcc, or a CUDA toolkit on PATH)")
    report = subprocess.run([ptxas, f"-arch={arch}", "-v", str(ptx_file), "-o", str(cubin)],
                            capture_output=True, text=True, timeout=120)
    too_new = re.search(r"Unsupported \.version (\S+); current version is '(\S+)'", report.stderr)
    if too_new:
        pytest.skip(f"{ptxas} reads PTX ISA up to {too_new[2]}, NVVM wrote {too_new[1]}: "
                    "pip install nvidia-cuda-nvcc of NVVM's CUDA release")
    assert report.returncode == 0, report.stderr
    return report.stderr
