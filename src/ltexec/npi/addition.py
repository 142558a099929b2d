"""Multi-digit addition for the NPI: the scratch pad, its programs, and the grade-school algorithm as a trace.

The pad has four rows (input 1, input 2, carry, output) and one column per
digit of the longer operand, one more for the final carry, and one blank
column on the left where the pointers stop after the last column (so that
``LSHIFT`` never leaves the pad; the paper's pad is described without it, a
choice of ours). Operands are written right-aligned; every other cell holds
:data:`BLANK`. Each row has a pointer, all four starting at the rightmost
column; the observation is the four values under them.

Programs (the public implementations agree on these)::

    ADD     repeat { ADD1; LSHIFT } until input 1, input 2 and carry are all blank; end
    ADD1    ACT(WRITE, out, (a + b + c) mod 10); if a + b + c > 9: CARRY; end
    CARRY   ACT(PTR, carry, left); ACT(WRITE, carry, 1); ACT(PTR, carry, right); end
    LSHIFT  ACT(PTR, r, left) for the rows in1, in2, carry, out; end
    ACT     (kind, row, value): WRITE(row, value) or PTR(row, left|right)

about 10-12 core steps a digit. Operands are digit strings (Python's ``int``
refuses to convert more than 4,300 digits to text by default), and
:func:`add_digits` is the reference sum.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ltexec.npi.programs import Call, CoreStep, Invocation, Program, Step

BLANK = 10
"""The value of a cell with no digit."""
SYMBOLS = 11
"""Values a cell takes: the digits 0-9 and BLANK."""
IN1, IN2, CARRY_ROW, OUT = range(4)
ROWS = ("in1", "in2", "carry", "out")
WRITE, PTR = 0, 1
"""ACT's first argument."""
LEFT, RIGHT = 0, 1
"""PTR's third argument."""

PROGRAMS = (Program("ADD"), Program("ADD1"), Program("CARRY"), Program("LSHIFT"), Program("ACT", primitive=True))
ADD, ADD1, CARRY, LSHIFT, ACT = range(len(PROGRAMS))


class PadError(ValueError):
    """An action the pad refuses: a pointer moved off it, a value or row out of range. The message says which."""


def parse_operand(name: str, text) -> str:
    """``text`` as a canonical operand (digits only, no leading zeros but for 0); ValueError naming ``name``."""
    if not isinstance(text, str) or not text or not text.isascii() or not text.isdigit():
        raise ValueError(f"{name} must be a non-negative integer written in digits, got {text!r}")
    return text.lstrip("0") or "0"


def add_digits(a: str, b: str) -> str:
    """The sum of two operands (digit strings), by Python's integers a few thousand digits at a time."""
    a, b = parse_operand("a", a), parse_operand("b", b)
    chunk, width = 10 ** 1000, max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    carry, parts = 0, []
    for end in range(width, 0, -1000):
        start = max(0, end - 1000)
        total = int(a[start:end]) + int(b[start:end]) + carry
        carry, part = divmod(total, chunk)
        parts.append(str(part).zfill(end - start))
    return (str(carry) + "".join(reversed(parts))).lstrip("0") or "0"


class AdditionPad:
    """The scratch pad of one addition ``a + b`` (digit strings), its four pointers, and its two actions."""

    programs = PROGRAMS

    def __init__(self, a: str, b: str):
        self.a, self.b = parse_operand("a", a), parse_operand("b", b)
        self.columns = max(len(self.a), len(self.b)) + 2
        self.grid = np.full((len(ROWS), self.columns), BLANK, np.int8)
        for row, digits in ((IN1, self.a), (IN2, self.b)):
            self.grid[row, self.columns - len(digits):] = np.frombuffer(digits.encode(), np.uint8) - ord("0")
        self.pointers = [self.columns - 1] * len(ROWS)

    def observe(self) -> tuple[int, ...]:
        """The values under the four pointers (in1, in2, carry, out)."""
        return tuple(int(self.grid[row, column]) for row, column in enumerate(self.pointers))

    def act(self, args: tuple[int, ...]) -> None:
        """``ACT(kind, row, value)``: WRITE(row, value) or PTR(row, LEFT|RIGHT); PadError for anything else."""
        kind, row, value = args
        if not 0 <= row < len(ROWS):
            raise PadError(f"row must be in 0..{len(ROWS) - 1} ({', '.join(ROWS)}), got {row}")
        if kind == WRITE:
            if not 0 <= value <= 9:
                raise PadError(f"WRITE writes a digit 0..9, got {value}")
            self.grid[row, self.pointers[row]] = value
        elif kind == PTR:
            if value not in (LEFT, RIGHT):
                raise PadError(f"PTR moves left ({LEFT}) or right ({RIGHT}), got {value}")
            column = self.pointers[row] + (1 if value == RIGHT else -1)
            if not 0 <= column < self.columns:
                raise PadError(f"PTR would move the {ROWS[row]} pointer off the pad (to column {column} of "
                               f"0..{self.columns - 1})")
            self.pointers[row] = column
        else:
            raise PadError(f"ACT's kind must be WRITE ({WRITE}) or PTR ({PTR}), got {kind}")

    def output(self) -> str:
        """The output row read as a number: its digits, leading blanks skipped ("" if nothing was written)."""
        row = self.grid[OUT]
        written = np.flatnonzero(row != BLANK)
        if written.size == 0:
            return ""
        digits = row[written[0]:]
        if (digits == BLANK).any():                  # a gap: not a number
            return "".join("_" if d == BLANK else str(d) for d in digits)
        return (digits.astype(np.uint8) + ord("0")).tobytes().decode().lstrip("0") or "0"

    def render(self) -> list[str]:
        """The pad as four text lines (blank cells as spaces), each pointer's cell in brackets."""
        lines = []
        for row, name in enumerate(ROWS):
            cells = [" " if v == BLANK else str(v) for v in self.grid[row]]
            cells[self.pointers[row]] = f"[{cells[self.pointers[row]]}]"
            lines.append(f"{name:>5} " + "".join(c if c.startswith("[") else f" {c} " for c in cells))
        return lines


# ----------------------------------------------------------------- the trace

def grade_school_steps(a: str, b: str) -> Iterator[CoreStep]:
    """Every core step of ``ADD`` on the pad of ``a + b`` by the grade-school algorithm, in execution order,
    made one at a time (a trace of thousands of digits is never held whole)."""
    yield from _steps(AdditionPad(a, b), Call(ADD))


def _steps(pad: AdditionPad, call: Call) -> Iterator[CoreStep]:
    """The steps of one invocation of ``call``'s program and of everything it calls."""
    program = call.program
    if program == ADD:
        while True:
            a, b, c, _ = pad.observe()
            if a == b == c == BLANK:
                break
            yield from _make(pad, call, Call(ADD1))
            yield from _make(pad, call, Call(LSHIFT))
    elif program == ADD1:
        a, b, c, _ = pad.observe()
        total = sum(v for v in (a, b, c) if v != BLANK)
        yield from _make(pad, call, Call(ACT, (WRITE, OUT, total % 10)))
        if total > 9:
            yield from _make(pad, call, Call(CARRY))
    elif program == CARRY:
        for args in ((PTR, CARRY_ROW, LEFT), (WRITE, CARRY_ROW, 1), (PTR, CARRY_ROW, RIGHT)):
            yield from _make(pad, call, Call(ACT, args))
    elif program == LSHIFT:
        for row in range(len(ROWS)):
            yield from _make(pad, call, Call(ACT, (PTR, row, LEFT)))
    else:
        raise ValueError(f"no composite program {program}")
    yield CoreStep(call, pad.observe(), None)


def _make(pad: AdditionPad, caller: Call, made: Call) -> Iterator[CoreStep]:
    """The caller's step that makes ``made``, then what it does: ACT on the pad, or the callee's steps."""
    yield CoreStep(caller, pad.observe(), made)
    if PROGRAMS[made.program].primitive:
        pad.act(made.args)
    else:
        yield from _steps(pad, made)


def addition_trace(a: str, b: str) -> Invocation:
    """The hierarchical execution trace of ``ADD`` on the pad of ``a + b``: :func:`grade_school_steps` with every
    invocation's steps gathered under it."""
    root = Invocation(Call(ADD))
    stack = [root]
    for step in grade_school_steps(a, b):
        caller = stack[-1]
        caller.steps.append(Step(step.observation, step.made))
        if step.made is None:
            stack.pop()
        elif not PROGRAMS[step.made.program].primitive:
            callee = Invocation(step.made)
            caller.callees.append(callee)
            stack.append(callee)
    return root


def replay(trace: Invocation, pad: AdditionPad) -> None:
    """Carry out ``trace``'s calls on ``pad`` in order, checking that every step observes what the trace says."""
    callees = iter(trace.callees)
    for number, step in enumerate(trace.steps):
        seen = pad.observe()
        if seen != step.observation:
            raise ValueError(f"{PROGRAMS[trace.call.program].name} step {number} observes {seen}, the trace says "
                             f"{step.observation}")
        if step.call is None:
            return
        if PROGRAMS[step.call.program].primitive:
            pad.act(step.call.args)
        else:
            replay(next(callees), pad)
