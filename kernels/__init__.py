"""The CUDA C sources of ltexec's GPU kernels, shipped as package data of ``ltexec.kernels``.

* ``lstm_cell.cu``: the fused LSTM cell, one step forward and one step backward.
* ``lstm_persistent.cu``: the whole LSTM recurrence of a window in one launch,
  forward or backward (W_h slices in shared memory, a grid-wide barrier).
* ``softmax_xent.cu``: softmax, masked cross-entropy, its gradient and the argmax count.

They are plain text compiled at run time (by NVRTC, through CuPy's
``RawModule``), so the package carries the sources rather than binaries and
the binary matches whatever GPU the user has. Each file is self-contained (no
``#include``), which keeps every compile a single string and lets the test
suite compile the same text with a C++ compiler to run it on the CPU.
"""

from importlib import resources


def source_names() -> list[str]:
    """The names of the kernel sources in this package, sorted."""
    return sorted(entry.name for entry in resources.files(__name__).iterdir() if entry.name.endswith(".cu"))


def source(name: str) -> str:
    """The text of the kernel source ``name`` (e.g. ``"lstm_cell.cu"``)."""
    if name not in source_names():
        raise ValueError(f"no kernel source {name!r} in {__name__}; there are {source_names()}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
