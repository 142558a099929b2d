"""What a benchmark's numbers were measured on, recorded with every result."""

from __future__ import annotations

import os
import platform


def processor_name() -> str:
    """The CPU model where the system names it (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra) -> dict:
    """Processor, CPU count, architecture and Python, plus any library versions given as ``extra``."""
    return {"processor": processor_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "implementation": platform.python_implementation(), **extra}
