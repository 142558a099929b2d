"""Neural Programmer-Interpreters (Reed & de Freitas, 2016) on ltexec's backends.

* ``programs.py``: programs, calls and hierarchical execution traces, for any environment;
* ``addition.py``: the addition scratch pad, its programs and the grade-school algorithm as a trace;
* ``data.py``: every invocation of a trace one sequence, batched with masks;
* ``model.py``: encoder, program memory, LSTM core and heads, on the backend interface;
* ``execute.py``: the model running by itself, with its own call stack.
"""
