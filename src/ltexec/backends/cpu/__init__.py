"""The ``cpu`` backend: the reference's arithmetic around the BLAS and the cores.

* ``backend.py``: :class:`~ltexec.backends.cpu.backend.CpuBackend`, its lanes and its tuning;
* ``kernels.py``: Numba passes for the pointwise work between the products;
* ``step_kernels.py``: the register-blocked per-step products (the tuner's ``tiled`` choice).
"""
