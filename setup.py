"""Packaging for ltexec (src layout). The CUDA C kernels in kernels/ ship inside the package.

This is the build script and holds the metadata; pyproject.toml names the build
system and holds the linter's and pytest's settings.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="ltexec",
    version="0.1.0",
    description="Learning to Execute (Zaremba & Sutskever) with hand-written LSTM forward/backward kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ (CUDA C sources read by the CuPy backend) installs as the package ltexec.kernels.
    package_dir={"": "src", "ltexec.kernels": "kernels"},
    packages=find_packages("src") + ["ltexec.kernels"],
    package_data={"ltexec.kernels": ["*.cu", "*.cuh"]},
    # threadpoolctl: the benchmarks record which BLAS library and kernel NumPy runs, and with how many
    # threads; pure Python, no dependencies, so every checkout that runs them has it.
    install_requires=["numpy>=1.23", "numba>=0.59", "threadpoolctl>=3"],
    extras_require={
        # The tests need no CUDA: the GPU-only ones skip with their reason. ruff (pinned: each release
        # adds checks) lints the tree before the tests in CI.
        "test": ["pytest>=7", "hypothesis>=6", "numba-cuda>=0.30", "matplotlib>=3.5", "ruff==0.17.6"],
        # Compiling and checking every CUDA kernel without a GPU (NVRTC through cuda-bindings, NVVM through
        # numba-cuda, ptxas's register and spill reports from nvcc of NVVM's release), and CuPy, to check
        # that one without a driver is reported and passed over: CUDA 13's compilers alone, without the
        # GPU libraries of cuda13 (1.6 GB). Not with cuda12 (its own CuPy). NVIDIA ships these wheels for
        # Linux and Windows only.
        "compile": [f"{requirement}; platform_system != 'Darwin'" for requirement in (
            "cuda-bindings>=13,<14", "nvidia-cuda-nvrtc>=13,<14", "nvidia-nvvm>=13,<14",
            "nvidia-cuda-nvcc>=13,<14", "cupy-cuda13x>=14")],
        "torch": ["torch"],
        "plot": ["matplotlib>=3.5"],       # ltexec plot: a sweep's heatmaps
        "ray": ["ray>=2"],                 # ltexec sweep --ray: cells as tasks on a Ray cluster
        # A GPU: one extra per CUDA major version of the driver, alone or with test; never two of cuda12,
        # cuda13 and compile together (two CuPy wheels, both the module cupy).
        # Each brings the CUDA libraries (cuBLAS, NVRTC), NVVM and ptxas of its release.
        "cuda12": ["cupy-cuda12x[ctk]>=14", "numba-cuda[cu12]>=0.30"],
        "cuda13": ["cupy-cuda13x[ctk]>=14", "numba-cuda[cu13]>=0.30", "nvidia-cuda-nvcc>=13,<14"],
    },
    entry_points={"console_scripts": ["ltexec = ltexec.cli:main"]},
)
