"""The ``numpy`` backend: the float64-checkable reference every other backend is tested against.

* ``backend.py``: the LSTM layer and its backpropagation through time, one function per cell step.
"""
