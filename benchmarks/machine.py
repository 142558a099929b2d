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
from pathlib import Path

import numpy as np

from ltexec.machine import (cpuinfo_fields, git_revision, package_version, processor_name, thread_settings,
                            threadpools, vector_flags)

REPOSITORY = Path(__file__).resolve().parents[1]


def machine(**extra) -> dict:
    """Hardware, software, BLAS, thread settings and git commit, plus anything given as ``extra``."""
    fields = cpuinfo_fields()
    return {"processor": processor_name(fields), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "vector_flags": vector_flags(fields),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "numpy": np.__version__, "numba": package_version("numba"),
            "torch": package_version("torch"),
            "threadpools": threadpools(), "thread_settings": thread_settings(), "git": git_revision(REPOSITORY),
            **extra}


def write_records(path, records: list[dict]) -> None:
    """Write ``records`` to ``path`` as a JSON list, each stamped with the current UTC time as ``date``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "w", encoding="utf-8") as out:
        json.dump([{**record, "date": stamp} for record in records], out, indent=1)
        out.write("\n")
