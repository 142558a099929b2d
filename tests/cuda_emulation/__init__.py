"""Run the CUDA C kernels of ``kernels/*.cu`` on the CPU, for tests on machines without a GPU.

The same ``.cu`` text the CuPy backend hands to NVRTC is compiled with g++
against ``cuda_emulation.h`` (which defines the CUDA subset the kernels use)
into one shared library, loaded with ctypes. Each source is included inside a
namespace named after its file, so sources that define the same helper do
not clash. The library exports two entry points with CUDA's own calling
convention: the kernel is found by its name expression
(``lstm_cell_forward<float>``, the strings the backend passes to NVRTC; the
build instantiates exactly those) and ``params`` is an array of pointers to
the argument values, as for ``cuLaunchKernel``:

* ``launch_kernel(name, grid, block, params)`` runs the blocks one after
  another (function-static ``__shared__`` arrays are then per block);
* ``launch_kernel_cooperative(name, grid, block, shared_bytes, params)`` runs
  all blocks at once, each with ``shared_bytes`` of its own dynamic shared
  memory, as a cooperative launch on the GPU: what kernels with a grid-wide
  barrier (``lstm_persistent.cu``) need.

:class:`EmulatedDevice` is the CuPy backend's device layer on top of it
(NumPy arrays, NumPy products, these kernels), so the backend's own window
logic runs here too. Its stream capture is emulated faithfully enough to
catch keying mistakes: a captured "graph" is the list of launches and
products with raw addresses, replayed from those addresses, never from the
Python arrays of the capture.

The build happens once per test session (per process), in a temporary
directory removed at exit.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ltexec.backends import cupy_backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KERNEL_DIR = REPO / "kernels"
SELFTEST_SOURCE = HERE / "selftest.cu"
SELFTEST_KERNELS = ["thread_coordinates", "block_sums<float>", "block_sums<double>",
                    "grid_sums<float>", "grid_sums<double>", "shared_is_per_block"]
GXX_FLAGS = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread"]

_C_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
              np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def gxx_missing_reason() -> str | None:
    """None if g++ is on PATH, else a skip reason."""
    return None if shutil.which("g++") else "g++ is not installed (needed to run the CUDA kernels on the CPU)"


def production_sources() -> dict[Path, list[str]]:
    """Every kernel source of the package and the name expressions the backend instantiates from it."""
    return {KERNEL_DIR / source: cupy_backend.name_expressions(source) for source in cupy_backend.KERNELS}


def translation_unit(sources: dict[Path, list[str]]) -> str:
    """The C++ file that includes every source in its own namespace and maps name expressions to kernels."""
    lines = ['#include "cuda_emulation.h"', "#include <functional>", "#include <map>", "#include <string>",
             "#include <tuple>", "#include <utility>", ""]
    for path in sources:
        lines += [f"namespace {path.stem} {{", f'#include "{path}"', "}", ""]
    lines += [
        "// Runs a kernel with (grid, block, dynamic shared bytes, cooperative?, params); 0, or 2 if",
        "// a block wrote past its dynamic shared memory.",
        "using Entry = std::function<int(unsigned, unsigned, unsigned, bool, void**)>;",
        "",
        "template <typename... Args, std::size_t... I>",
        "int call(void (*kernel)(Args...), unsigned grid, unsigned block, unsigned shared_bytes,",
        "         bool cooperative, void** params, std::index_sequence<I...>)",
        "{",
        "    const std::tuple<Args...> args{*static_cast<Args*>(params[I])...};",
        "    const auto run = [&] { std::apply(kernel, args); };",
        "    if (!cooperative) {",
        "        launch(grid, block, run);",
        "        return 0;",
        "    }",
        "    return launch_cooperative(grid, block, shared_bytes, run) ? 0 : 2;",
        "}",
        "",
        "template <typename... Args>",
        "Entry entry(void (*kernel)(Args...))",
        "{",
        "    return [kernel](unsigned grid, unsigned block, unsigned shared_bytes, bool cooperative, void** params) {",
        "        return call(kernel, grid, block, shared_bytes, cooperative, params,",
        "                    std::index_sequence_for<Args...>{});",
        "    };",
        "}",
        "",
        "// Every kernel by name expression; 1 for a name that is not there.",
        "int run(const char* name, unsigned grid, unsigned block, unsigned shared_bytes, bool cooperative,",
        "        void** params)",
        "{",
        "    static const std::map<std::string, Entry> kernels = {",
    ]
    for path, expressions in sources.items():
        lines += [f'        {{"{expr}", entry(&{path.stem}::{expr})}},' for expr in expressions]
    lines += [
        "    };",
        "    const auto found = kernels.find(name);",
        "    return found == kernels.end() ? 1 : found->second(grid, block, shared_bytes, cooperative, params);",
        "}",
        "",
        'extern "C" int launch_kernel(const char* name, unsigned grid, unsigned block, void** params)',
        "{",
        "    return run(name, grid, block, 0, false, params);",
        "}",
        "",
        'extern "C" int launch_kernel_cooperative(const char* name, unsigned grid, unsigned block,',
        "                                         unsigned shared_bytes, void** params)",
        "{",
        "    return run(name, grid, block, shared_bytes, true, params);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def build(sources: dict[Path, list[str]], directory: Path) -> ctypes.CDLL:
    """Compile ``sources`` with g++ into ``directory`` and load the library."""
    unit = directory / "kernels_host.cpp"
    library = directory / "kernels_host.so"
    unit.write_text(translation_unit(sources), encoding="utf-8")
    result = subprocess.run(["g++", *GXX_FLAGS, f"-I{HERE}", str(unit), "-o", str(library)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed to build the kernel emulation:\n{result.stderr}")
    lib = ctypes.CDLL(str(library))
    lib.launch_kernel.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
    lib.launch_kernel.restype = ctypes.c_int
    lib.launch_kernel_cooperative.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                                              ctypes.POINTER(ctypes.c_void_p)]
    lib.launch_kernel_cooperative.restype = ctypes.c_int
    return lib


@functools.cache
def kernels() -> EmulatedKernels:
    """The package's kernels and the self-test kernels, built once per process."""
    directory = Path(tempfile.mkdtemp(prefix="ltexec-cuda-emulation-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return EmulatedKernels(build({**production_sources(), SELFTEST_SOURCE: SELFTEST_KERNELS}, directory))


class EmulatedKernels:
    """Launches kernels of a library built by :func:`build`, with arguments packed as CuPy packs them."""

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib

    @staticmethod
    def pack(args: tuple) -> list:
        """Each argument as a ctypes value: an array becomes its address, a NumPy scalar its C type."""
        packed = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                packed.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.generic) and arg.dtype in _C_SCALARS:
                packed.append(_C_SCALARS[arg.dtype](arg.item()))
            else:
                raise TypeError(f"cannot pass {type(arg).__name__} to a kernel (use an array or a NumPy scalar)")
        return packed

    @staticmethod
    def _params(packed: list):
        return (ctypes.c_void_p * max(len(packed), 1))(*[ctypes.addressof(value) for value in packed])

    @staticmethod
    def _check_result(name: str, result: int) -> None:
        if result == 1:
            raise KeyError(f"the emulation has no kernel {name!r}")
        if result == 2:
            raise RuntimeError(f"kernel {name!r} wrote past the end of its dynamic shared memory")

    def launch_packed(self, name: str, grid: int, block: int, packed: list) -> None:
        self._check_result(name, self._lib.launch_kernel(name.encode(), grid, block, self._params(packed)))

    def launch(self, name: str, grid: int, block: int, args: tuple) -> None:
        """Run kernel ``name`` (a name expression) on a 1-D grid, like ``RawKernel((grid,), (block,), args)``."""
        self.launch_packed(name, grid, block, self.pack(args))

    def launch_cooperative(self, name: str, grid: int, block: int, shared_bytes: int, args: tuple) -> None:
        """Run kernel ``name`` with all ``grid`` blocks at once, each with ``shared_bytes`` of dynamic shared memory.

        Like a cooperative launch on the GPU (``RawKernel((grid,), (block,),
        args, shared_mem=shared_bytes)`` from a module built with
        ``enable_cooperative_groups=True``): kernels with a grid-wide barrier
        need every block running. One host thread per CUDA thread of the
        grid, so keep ``grid * block`` to a few hundred.
        """
        if shared_bytes < 0:
            raise ValueError(f"shared_bytes must be >= 0, got {shared_bytes}")
        result = self._lib.launch_kernel_cooperative(name.encode(), grid, block, shared_bytes,
                                                     self._params(self.pack(args)))
        self._check_result(name, result)


def array_at(address: int, shape: tuple, dtype) -> np.ndarray:
    """A NumPy view of memory at a raw address (what a replayed graph works on)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(address), dtype).reshape(shape)


class EmulatedGraph:
    """A captured step loop: operations that replay from raw addresses, and the memory they touch."""

    def __init__(self):
        self.operations = []   # callables
        self.regions = []      # (address, nbytes) of every array an operation reads or writes

    def add(self, operation, arrays) -> None:
        self.operations.append(operation)
        self.regions += [(a.ctypes.data, a.nbytes) for a in arrays if isinstance(a, np.ndarray)]


class EmulatedDevice:
    """The CuPy backend's device layer on the CPU: NumPy arrays and products, the emulated kernels.

    ``capture(record)`` runs ``record()`` with every launch and product
    recorded by raw address instead of executed, into an
    :class:`EmulatedGraph`; ``launch_graph`` replays it. ``capture_error``,
    if given, is raised by every capture (to exercise the backend's
    fallback). New arrays are full of NaN (floats) or the integer minimum.
    """

    xp = np

    def __init__(self, capture_error: Exception | None = None):
        self._capture_error = capture_error
        self._recording = None   # the EmulatedGraph being captured

    def name(self) -> str:
        return "CPU emulation of the CUDA kernels"

    def empty(self, shape: tuple, dtype):
        array = np.empty(shape, dtype)
        array.fill(np.nan if array.dtype.kind == "f" else np.iinfo(array.dtype).min)
        return array

    def address(self, array) -> int:
        return array.ctypes.data

    def check_device(self, name: str, array) -> None:
        """Host arrays have no device to disagree about."""

    def gemm(self, a, b, out, transpose_a: bool = False, transpose_b: bool = False) -> None:
        if self._recording is None:
            np.matmul(a.T if transpose_a else a, b.T if transpose_b else b, out=out)
            return
        operands = [(self.address(x), x.shape, x.dtype) for x in (a, b, out)]

        def replay():
            ra, rb, rout = (array_at(*operand) for operand in operands)
            np.matmul(ra.T if transpose_a else ra, rb.T if transpose_b else rb, out=rout)

        self._recording.add(replay, (a, b, out))

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        library = kernels()   # built on the first launch, so checks that never launch need no g++
        packed = library.pack(args)
        if self._recording is None:
            library.launch_packed(kernel, grid, block, packed)
        else:
            self._recording.add(functools.partial(library.launch_packed, kernel, grid, block, packed), args)

    def stream_capture_support(self) -> tuple[bool, bool]:
        return False, True

    def capture(self, record) -> EmulatedGraph:
        if self._capture_error is not None:
            raise self._capture_error
        self._recording = EmulatedGraph()
        try:
            record()
            return self._recording
        finally:
            self._recording = None

    def launch_graph(self, graph: EmulatedGraph) -> None:
        for operation in graph.operations:
            operation()

    def synchronize(self) -> None:
        """Everything ran when it was called."""
