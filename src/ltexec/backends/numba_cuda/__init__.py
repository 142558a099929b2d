"""The ``numba_cuda`` backend: the whole training step in CUDA kernels written in Python.

* ``backend.py``: :class:`~ltexec.backends.numba_cuda.backend.NumbaCudaBackend`;
* ``kernels.py``: the per-step fused cell kernels, the tiled product, softmax and reductions;
* ``persistent.py``: the persistent recurrence (one cooperative launch per layer and window).
"""
