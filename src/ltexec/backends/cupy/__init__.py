"""The ``cupy`` backend: the CUDA C kernels of the top-level ``kernels/`` folder, launched through CuPy.

* ``backend.py``: :class:`~ltexec.backends.cupy.backend.CupyBackend`, its device layer and launches.
"""
