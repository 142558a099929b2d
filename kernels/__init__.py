"""The CUDA C sources of ltexec's GPU kernels, shipped as package data of ``ltexec.kernels``.

* ``lstm_cell.cu``: the fused LSTM cell, one step forward and one step backward.
* ``lstm_persistent.cu``: the whole LSTM recurrence of a window in one launch,
  forward or backward (W_h slices in shared memory, a grid-wide barrier).
* ``softmax_xent.cu``: softmax, masked cross-entropy, its gradient and the argmax count.
* ``device_math.cuh``: the device helpers they share (``real_exp``,
  ``real_log``, ``real_tanh``, ``sigmoid``).

They are plain text compiled at run time (by NVRTC, through CuPy's
``RawModule``), so the package carries the sources rather than binaries and
the binary matches whatever GPU the user has. No file has an ``#include``:
:func:`source` puts the shared header in front of a kernel file, so every
compile is a single string (NVRTC needs no include path) and the test suite
compiles the same string with a C++ compiler to run it on the CPU.
"""

from importlib import resources

HEADER = "device_math.cuh"
"""The shared device helpers, put in front of every kernel source."""


def source_names() -> list[str]:
    """The names of the kernel sources in this package, sorted."""
    return sorted(entry.name for entry in resources.files(__name__).iterdir() if entry.name.endswith(".cu"))


def file_text(name: str) -> str:
    """The text of one file of this package as it lies on disk (a kernel source or :data:`HEADER`)."""
    if name != HEADER and name not in source_names():
        raise ValueError(f"no kernel source {name!r} in {__name__}; there are {source_names()}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def source(name: str) -> str:
    """What is compiled for the kernel source ``name`` (e.g. ``"lstm_cell.cu"``): the shared header, then the file."""
    if name not in source_names():
        raise ValueError(f"no kernel source {name!r} in {__name__}; there are {source_names()}")
    return f"{file_text(HEADER)}\n// ---- {name}\n{file_text(name)}"
