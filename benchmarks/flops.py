"""Floating-point work of one training step, counted from the shapes.

Only the matrix products are counted (2 m n k each): they are the step's
arithmetic, everything else (gates, softmax, clipping, the update) is a few
operations per element, under 1% of the total at the paper's configuration.
With T steps, B columns, H units, D = H inputs per layer (the embedding has H
dimensions) and V output classes, one LSTM layer does six products of
T*B x 4H against D or H::

    forward   X Wx (T*B,D)(D,4H)         h_{t-1} Wh, per step (B,H)(H,4H)
    backward  dA Wx^T -> dX              da_t Wh^T, per step -> dh_{t-1}
              X^T dA -> dWx              H_prev^T dA -> dWh

and the output layer three products of T*B x H x V (logits, dH, dWy).
At the paper's configuration (T=50, B=100, H=400, 2 layers, V=51) that is
2 * (6 * 6.4e9) + 3 * 0.204e9 = 77.412e9: a paper-configuration step is 77.4 GFLOP.
"""

from __future__ import annotations

PAPER_STEP_GFLOP = 77.4
"""A paper-configuration step's count (above), rounded to 0.1 GFLOP; :func:`step_flops` must reproduce it."""


def step_flops(batch: int, seq_len: int, hidden: int, layers: int, vocab: int) -> int:
    """Matrix-product FLOPs of one forward + backward pass (the update adds no products)."""
    rows = seq_len * batch                       # T*B: every (step, column) pair
    gates = 4 * hidden
    per_layer = 3 * 2 * rows * hidden * gates    # input side: X Wx, dA Wx^T, X^T dA   (D = H)
    per_layer += 3 * 2 * rows * hidden * gates   # recurrent side: H Wh, dA Wh^T, H_prev^T dA
    output = 3 * 2 * rows * hidden * vocab       # logits, dH, dWy
    return layers * per_layer + output


def check_paper_count(vocab: int) -> int:
    """The paper configuration's count, after checking that it is PAPER_STEP_GFLOP (within 1%)."""
    flops = step_flops(batch=100, seq_len=50, hidden=400, layers=2, vocab=vocab)
    if abs(flops / (PAPER_STEP_GFLOP * 1e9) - 1) > 0.01:
        raise AssertionError(f"FLOP count of a paper step is {flops / 1e9:.2f}e9, expected ~{PAPER_STEP_GFLOP}e9")
    return flops
