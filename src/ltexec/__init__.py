"""ltexec: Learning to Execute (Zaremba & Sutskever, 2014), reproduced with hand-written LSTM kernels."""

__version__ = "0.1.0"
