"""What an NPI knows of an environment: its programs, their calls, and execution traces.

A *program* has a name and is either composite (it runs on the core, step by
step, calling other programs) or the primitive ``ACT`` (the environment does
what its arguments say and control returns at once). A *call* is a program
and its :data:`ARG_SLOTS` arguments, each an integer in ``0..ARG_VALUES-1``
(what each slot means is the environment's business).

An execution *trace* is hierarchical, one :class:`Invocation` per program
run: the arguments it was called with and its steps. At each step the core
sees the environment's observation and either calls a program (the next
call, with its arguments) or ends the invocation. A called composite program
is an invocation of its own (the callee), started from a fresh core state;
its caller resumes from the state it had (the paper's call stack), so every
invocation's steps form one independent sequence for training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

ARG_SLOTS = 3
"""Arguments of every call (unused slots are 0)."""
ARG_VALUES = 10
"""Values an argument slot takes: 0..9."""


@dataclass(frozen=True)
class Program:
    """A program of an environment: its name, and whether it is the primitive that acts on the environment."""

    name: str
    primitive: bool = False


@dataclass(frozen=True)
class Call:
    """A program (its index in the environment's program list) with its arguments."""

    program: int
    args: tuple[int, ...] = (0,) * ARG_SLOTS

    def __post_init__(self):
        if len(self.args) != ARG_SLOTS or any(not 0 <= a < ARG_VALUES for a in self.args):
            raise ValueError(f"a call has {ARG_SLOTS} arguments in 0..{ARG_VALUES - 1}, got {self.args}")


@dataclass(frozen=True)
class Step:
    """One core step of an invocation: what it observed, and the call it made (None: it ended here)."""

    observation: tuple[int, ...]
    call: Call | None


@dataclass
class Invocation:
    """One program run: the call that started it, its steps, and the invocations of the composite programs it
    called, in the order it called them."""

    call: Call
    steps: list[Step] = field(default_factory=list)
    callees: list[Invocation] = field(default_factory=list)

    def walk(self) -> Iterator[Invocation]:
        """This invocation and every one below it, depth first in call order."""
        yield self
        for callee in self.callees:
            yield from callee.walk()

    def core_steps(self) -> int:
        """Core steps of the whole trace (every invocation's steps)."""
        return sum(len(invocation.steps) for invocation in self.walk())


@dataclass(frozen=True)
class CoreStep:
    """One core step in the order execution runs them: the invocation's call, what it observed, what it did."""

    call: Call
    observation: tuple[int, ...]
    made: Call | None


def core_steps_in_order(trace: Invocation, programs: tuple[Program, ...]) -> list[CoreStep]:
    """Every core step of ``trace`` in execution order: a caller's step, then its callee's steps (if it called a
    composite program of ``programs``), then the caller's next step. What an NPI running by itself is compared
    against."""
    steps, callees = [], iter(trace.callees)
    for step in trace.steps:
        steps.append(CoreStep(trace.call, step.observation, step.call))
        if step.call is not None and not programs[step.call.program].primitive:
            steps.extend(core_steps_in_order(next(callees), programs))
    return steps
