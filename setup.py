"""Packaging for ltexec (src layout). The CUDA C kernels in kernels/ ship inside the package."""

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
    package_dir={"": "src"},
    packages=find_packages("src"),
    data_files=[],
    install_requires=["numpy>=1.23", "numba>=0.59"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "torch": ["torch"],
        "cuda12": ["cupy-cuda12x", "numba-cuda[cu12]"],
        "cuda13": ["cupy-cuda13x", "numba-cuda[cu13]"],
    },
    entry_points={"console_scripts": ["ltexec = ltexec.cli:main"]},
)
