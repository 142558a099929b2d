"""The trained NPI running by itself: it picks programs and arguments, acts on the pad, keeps its call stack.

No teacher forcing: at every core step the model sees the pad under its
pointers, its current program and that program's arguments, and decides: end
the program (end probability above 1/2), or call the program whose key
matches best with the arguments it predicts. ``ACT`` acts on the pad and
control returns at once; any other program is pushed on the call stack with a
zero core state, and when it ends its caller resumes from the state it had.

Many additions run at once, their top frames batched into one core step, so
the kernels see real batches here too. Each run has a step bound
(:func:`step_bound`): a run that reaches it, makes an action the pad refuses,
or nests calls deeper than :data:`MAX_DEPTH` is recorded as a failure with
the reason, never an endless loop. A run's answer is the output row; for a
wrong one, the first core step where the run left the true trace is reported (the
true steps are made alongside, one at a time, so runs of thousands of digits
hold no trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ltexec.npi.addition import ACT, ADD, AdditionPad, PadError, add_digits, grade_school_steps
from ltexec.npi.programs import Call, CoreStep

STEPS_PER_COLUMN = 16
"""The step bound's allowance per pad column: the true trace takes 10-12 (:func:`step_bound`)."""
MAX_DEPTH = 8
"""Nested calls at most: the true trace nests three deep (ADD, ADD1, CARRY)."""


MAX_OPERAND_DIGITS = 10_000
"""The longest operand a run takes: its step bound (16 core steps a column) is then 160,000 steps."""


def step_bound(a: str, b: str) -> int:
    """The most core steps a run of ``a + b`` may take: :data:`STEPS_PER_COLUMN` per pad column, plus 16."""
    return STEPS_PER_COLUMN * (max(len(a), len(b)) + 2) + 16


@dataclass
class Run:
    """One addition run by the model: the answer, whether it is the sum, and what happened."""

    a: str
    b: str
    output: str = ""
    correct: bool = False
    steps: int = 0
    failure: str | None = None
    """Why the run stopped before ADD ended (the step bound, a refused action, too deep a stack), or None."""
    log: list[CoreStep] = field(default_factory=list)
    """Every core step it took, in order (kept only when asked for)."""
    first_divergence: int | None = None
    """The first core step (0-based) that differs from the true trace's; None while the run follows it."""


@dataclass
class _Frame:
    call: Call
    state: list                                   # per layer (h, c), each (H,) on the backend


def execute(model, problems: list[tuple[str, str]], keep_log: bool = False, on_step=None) -> list[Run]:
    """Run every addition ``(a, b)`` (digit strings) by the model, all at once; one :class:`Run` each.

    ``on_step(index, run, step, depth, pad)``, if given, is called after each
    core step of every run, with the depth of the program that took it (1 for
    ADD) and the pad after it (the command line prints traces with it).
    """
    bk, layers, H = model.backend, model.config.layers, model.config.hidden
    xp = bk.xp
    runs = [Run(a, b) for a, b in problems]
    pads = [AdditionPad(a, b) for a, b in problems]
    bounds = [step_bound(pad.a, pad.b) for pad in pads]
    truths = [grade_school_steps(pad.a, pad.b) for pad in pads]   # compared step by step, never held whole
    zero = [(xp.zeros(H, model.dtype), xp.zeros(H, model.dtype)) for _ in range(layers)]
    stacks = [[_Frame(Call(ADD), zero)] for _ in problems]
    active = list(range(len(problems)))
    while active:
        frames = [stacks[i][-1] for i in active]
        observation = np.array([pads[i].observe() for i in active], np.int64)[None]
        args = np.array([f.call.args for f in frames], np.int64)[None]
        program = np.array([[f.call.program for f in frames]], np.int64)
        state = [(xp.stack([f.state[k][0] for f in frames]), xp.stack([f.state[k][1] for f in frames]))
                 for k in range(layers)]
        (end, scores, arg_logits), new_state, _ = model.forward(observation, args, program, state, training=False)
        ends = bk.to_numpy(end[0]).argmax(axis=-1) == 1
        chosen = bk.to_numpy(scores[0]).argmax(axis=-1)
        chosen_args = np.stack([bk.to_numpy(logits[0]).argmax(axis=-1) for logits in arg_logits], axis=-1)
        still = []
        for j, i in enumerate(active):
            run, frame, pad = runs[i], frames[j], pads[i]
            frame.state = [(h[j], c[j]) for h, c in new_state]
            made = None if ends[j] else Call(int(chosen[j]), tuple(int(v) for v in chosen_args[j]))
            step = CoreStep(frame.call, tuple(int(v) for v in observation[0, j]), made)
            if run.first_divergence is None and step != next(truths[i], None):
                run.first_divergence = run.steps
            run.steps += 1
            if keep_log:
                run.log.append(step)
            depth = len(stacks[i])
            run.failure = _carry_out(made, stacks[i], pad, zero)
            if on_step is not None:
                on_step(i, run, step, depth, pad)
            if run.failure is None and stacks[i] and run.steps >= bounds[i]:
                run.failure = f"reached the step bound ({bounds[i]} core steps) before ADD ended"
            if run.failure is None and stacks[i]:
                still.append(i)
        active = still
    for run, pad, truth in zip(runs, pads, truths):
        run.output = pad.output()
        run.correct = run.failure is None and run.output == add_digits(run.a, run.b)
        if run.first_divergence is None and next(truth, None) is not None:
            run.first_divergence = run.steps                      # it stopped before the true trace ended
    return runs


def _carry_out(made: Call | None, stack: list, pad: AdditionPad, zero: list) -> str | None:
    """Do what a step decided: end its program (pop), act on the pad, or push a callee; why not, or None."""
    if made is None:
        stack.pop()
        return None
    if made.program == ACT:
        try:
            pad.act(made.args)
        except PadError as refused:
            return f"the pad refused ACT{made.args}: {refused}"
        return None
    if len(stack) >= MAX_DEPTH:
        return f"calls nested deeper than {MAX_DEPTH}"
    stack.append(_Frame(made, zero))
    return None
