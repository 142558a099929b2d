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
logic runs here too. Its device limits and occupancy are fixed numbers
(injectable, to drive the backend's fallback); a cooperative launch that
would not fit them fails, as on a GPU. Stream capture is modelled only as
far as CuPy refuses it: inside ``capturing()`` a cuBLAS product raises
CuPy's NotImplementedError, so a test can show that a code path makes no
library call where a graph would be captured.

The build happens once per test session (per process), in a temporary
directory removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ltexec.backends.cupy import backend as cupy_backend

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


def production_sources(directory: Path) -> dict[Path, list[str]]:
    """Every kernel source of the package, written into ``directory`` as NVRTC gets it (the shared header in
    front: :func:`ltexec.kernels.source`), and the name expressions the backend instantiates from it."""
    sources = {}
    for source in cupy_backend.KERNELS:
        path = directory / source
        path.write_text(cupy_backend.kernel_source(source), encoding="utf-8")
        sources[path] = cupy_backend.name_expressions(source)
    return sources


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
    return EmulatedKernels(build({**production_sources(directory), SELFTEST_SOURCE: SELFTEST_KERNELS}, directory))


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

    def launch(self, name: str, grid: int, block: int, args: tuple) -> None:
        """Run kernel ``name`` (a name expression) on a 1-D grid, like ``RawKernel((grid,), (block,), args)``."""
        packed = self.pack(args)   # held until the call returns: the params array holds only addresses
        self._check_result(name, self._lib.launch_kernel(name.encode(), grid, block, self._params(packed)))

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
        packed = self.pack(args)   # held until the call returns: the params array holds only addresses
        result = self._lib.launch_kernel_cooperative(name.encode(), grid, block, shared_bytes, self._params(packed))
        self._check_result(name, result)


EMULATED_LIMITS = cupy_backend.DeviceLimits(sms=6, shared_per_block=48 * 1024, cooperative=True)
"""The emulated device: few SMs, so small layers already need several blocks of several units."""

CUBLAS_CAPTURE_ERROR = "calling cuBLAS API during stream capture is currently unsupported"
"""What CuPy's NotImplementedError says when cuBLAS is called while the current stream captures."""


class EmulatedDevice:
    """The CuPy backend's device layer on the CPU: NumPy arrays and products, the emulated kernels.

    ``limits`` are the device's (:data:`EMULATED_LIMITS` by default) and
    ``resident_per_sm`` is what its occupancy query answers for every
    kernel and shape. A cooperative launch with more blocks than fit at once
    (SMs x ``resident_per_sm``) or more shared memory than a block may have
    fails, as it does on a GPU. Inside ``capturing()`` a product raises
    CuPy's NotImplementedError (launches still run at once: no graph is
    recorded). New arrays are full of NaN (floats) or the integer minimum.
    """

    xp = np

    def __init__(self, limits: cupy_backend.DeviceLimits = EMULATED_LIMITS, resident_per_sm: int = 2):
        self.limits, self.resident_per_sm = limits, resident_per_sm
        self.is_capturing = False

    def name(self) -> str:
        return "CPU emulation of the CUDA kernels"

    def empty(self, shape: tuple, dtype):
        array = np.empty(shape, dtype)
        array.fill(np.nan if array.dtype.kind == "f" else np.iinfo(array.dtype).min)
        return array

    def check_device(self, name: str, array) -> None:
        """Host arrays have no device to disagree about."""

    def gemm(self, a, b, out, transpose_a: bool = False, transpose_b: bool = False) -> None:
        if self.is_capturing:
            raise NotImplementedError(CUBLAS_CAPTURE_ERROR)
        np.matmul(a.T if transpose_a else a, b.T if transpose_b else b, out=out)

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        kernels().launch(kernel, grid, block, args)   # built on the first launch: checks that never launch need no g++

    def launch_cooperative(self, kernel: str, grid: int, block: int, shared_bytes: int, args: tuple) -> None:
        fits = self.limits.sms * self.resident_per_sm
        if not self.limits.cooperative or grid > fits or shared_bytes > self.limits.shared_per_block:
            raise RuntimeError(f"cudaErrorCooperativeLaunchTooLarge: {grid} blocks with {shared_bytes} B of "
                               f"shared memory each, the device holds {fits} at once with at most "
                               f"{self.limits.shared_per_block} B each")
        kernels().launch_cooperative(kernel, grid, block, shared_bytes, args)

    def persistent_limits(self) -> cupy_backend.DeviceLimits:
        return self.limits

    def resident_blocks(self, kernel: str, block: int, shared_bytes: int) -> int:
        return self.resident_per_sm

    @contextlib.contextmanager
    def capturing(self):
        """The current stream captures: products are refused as CuPy refuses them."""
        self.is_capturing = True
        try:
            yield
        finally:
            self.is_capturing = False

    def synchronize(self) -> None:
        """Everything ran when it was called."""


class DeviceRead(AssertionError):
    """A device array was read on the host while :meth:`ReadGuardedDevice.no_reads` was in force."""


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy device array, for :class:`ReadGuardedDevice`.

    Results of arithmetic on it are DeviceArrays too, reductions included
    (kept as 0-d arrays, as CuPy keeps them), and every way CuPy lets the host
    read one (``float``, ``int``, ``bool``, ``item``, ``tolist``, ``get``,
    ``cupy.asnumpy``) raises :class:`DeviceRead` while reads are forbidden.
    """

    reads_forbidden = False

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return array.view(DeviceArray)

    def _read(self, how: str):
        if DeviceArray.reads_forbidden:
            raise DeviceRead(f"{how} of a device array of shape {self.shape} read it back to the host")
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read("float()"))

    def __int__(self):
        return int(self._read("int()"))

    def __index__(self):
        return self._read("an index").__index__()

    def __bool__(self):
        return bool(self._read("bool()"))

    def item(self, *args):
        return self._read("item()").item(*args)

    def tolist(self):
        return self._read("tolist()").tolist()

    def get(self):
        return self._read("get()").copy()


class _GuardedArrayModule:
    """NumPy, except that every array a function returns is a DeviceArray and ``asnumpy`` is a device read."""

    ndarray = DeviceArray

    def __getattr__(self, name):
        value = getattr(np, name)
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def on_device(*args, **kwargs):
            result = value(*args, **kwargs)
            return result.view(DeviceArray) if isinstance(result, np.ndarray) else result
        return on_device

    def asnumpy(self, a):
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)


class ReadGuardedDevice(EmulatedDevice):
    """The emulated device, with DeviceArrays that raise :class:`DeviceRead` on a host read inside ``no_reads()``."""

    xp = _GuardedArrayModule()

    def empty(self, shape: tuple, dtype):
        return super().empty(shape, dtype).view(DeviceArray)

    @staticmethod
    @contextlib.contextmanager
    def no_reads():
        DeviceArray.reads_forbidden = True
        try:
            yield
        finally:
            DeviceArray.reads_forbidden = False
