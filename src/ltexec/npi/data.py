"""Training data for the NPI: every invocation of a trace is one sequence, and sequences are batched.

Because a callee starts from a fresh core state and its caller resumes from
its own, an invocation's steps depend on nothing outside it: it is one
sequence starting from a zero state. A batch holds B of them, time-major,
padded to the longest with a mask, so the core's kernels see real batches.

Per step t of sequence b (all host NumPy arrays):

* inputs: ``observation`` (T,B,O) the environment's values, ``args`` (T,B,3)
  the invocation's own arguments, ``program`` (T,B) its program;
* targets: ``end`` (T,B) 1 where the invocation ends at this step,
  ``next_program`` (T,B) and ``next_args`` (T,B,3) the call it makes
  (0 where it ends);
* masks: ``mask`` (T,B) 1 on real steps, ``call_mask`` (T,B) 1 on real steps
  that make a call (the program and argument losses count only there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltexec.npi.programs import ARG_SLOTS, Invocation


@dataclass
class SequenceBatch:
    """B invocation sequences, padded to T steps (see the module docstring)."""

    observation: np.ndarray
    args: np.ndarray
    program: np.ndarray
    end: np.ndarray
    next_program: np.ndarray
    next_args: np.ndarray
    mask: np.ndarray
    call_mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(T, B)."""
        return self.program.shape

    @property
    def steps(self) -> int:
        """Real (unpadded) steps in the batch."""
        return int(self.mask.sum())


def batch_invocations(invocations: list[Invocation], observation_size: int) -> SequenceBatch:
    """One batch of the given invocations (each its own sequence), padded to the longest."""
    if not invocations:
        raise ValueError("a batch needs at least one invocation")
    T, B = max(len(inv.steps) for inv in invocations), len(invocations)
    observation = np.zeros((T, B, observation_size), np.int64)
    args = np.zeros((T, B, ARG_SLOTS), np.int64)
    program = np.zeros((T, B), np.int64)
    end = np.zeros((T, B), np.int64)
    next_program = np.zeros((T, B), np.int64)
    next_args = np.zeros((T, B, ARG_SLOTS), np.int64)
    mask = np.zeros((T, B), np.float64)
    call_mask = np.zeros((T, B), np.float64)
    for b, inv in enumerate(invocations):
        n = len(inv.steps)
        observation[:n, b] = [step.observation for step in inv.steps]
        args[:n, b] = inv.call.args
        program[:n, b] = inv.call.program
        mask[:n, b] = 1
        for t, step in enumerate(inv.steps):
            if step.call is None:
                end[t, b] = 1
            else:
                next_program[t, b], next_args[t, b], call_mask[t, b] = step.call.program, step.call.args, 1
    return SequenceBatch(observation, args, program, end, next_program, next_args, mask, call_mask)
