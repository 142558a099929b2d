"""Example generators for the paper's three tasks and the train/val/test split.

The model learns from an endless stream of random examples, so this module draws
them: short Python programs that print one integer (``programs``), ``print(a+b)``
(``addition``) and digit strings to repeat (``copy``).  Each generator computes
the printed output while it writes the text, never by running it; the tests run
the text with CPython and check that it prints exactly the target.

Programs are composed as in the authors' original code: ``nesting`` operations,
each chosen uniformly from six, where each operation takes the previous
operation's result as one of its operands (at a random operand position) and
fresh numbers from ``1..10**length`` for the rest.  A curriculum that draws
difficulty per number passes ``number_length``, called for every number,
multiplier and loop count (see :mod:`ltexec.curriculum`).

Examples are assigned to a split by a hash of their text (:func:`split_of`), and
:func:`sample_example` redraws until an example falls into the requested split,
so train, validation and test never share an example.  Everything draws from an
explicit ``random.Random``; :func:`sample` seeds its own, so the same arguments
always give the same examples.

The generators run once per training example, so they are written for speed:
plain string formatting, bound methods in locals and arguments validated once
per public call rather than once per draw.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass
from typing import Callable

from ltexec.validation import check_choice, check_int

TASKS = ("addition", "copy", "programs")
SPLITS = ("train", "val", "test")

MAX_LENGTH = 20
"""Largest ``length`` for ``programs`` and ``addition`` (digits of a number)."""

MAX_COPY_LENGTH = 100
"""Largest ``length`` for ``copy``; the paper's memorization task goes up to 65 digits."""

MAX_NESTING = 10
"""Largest ``nesting``: a program then needs at most 10 distinct variable letters."""

MAX_TRIES = 1000
"""How many draws :func:`sample_example` makes before it declares a split unreachable."""

OPERATIONS = ("pair", "multiplication", "equality", "variable", "loop", "if")
"""The six operations a program is composed of, in the order the generator numbers them."""

_PAIR, _MULTIPLICATION, _EQUALITY, _VARIABLE, _LOOP, _IF = range(6)
_ARITY = (2, 1, 1, 2, 2, 4)  # operands each operation takes (loop counts and factors are not operands)

_VARIABLE_LETTERS = "abcdefghij"  # the original code's ten (randperm(10) from "a"); x is the loop counter


@dataclass(frozen=True)
class Example:
    """One example: ``input`` is the text a person would run (real newlines), ``target`` what it prints.

    ``length`` is the length its numbers were drawn at (the largest one, when
    each number drew its own).
    """

    task: str
    input: str
    target: str
    length: int
    nesting: int
    split: str

    def to_dict(self) -> dict:
        return asdict(self)


def split_of(input_text: str, target: str) -> str:
    """The split an example belongs to: CRC-32 of its full text modulo 3 (0 train, 1 val, 2 test)."""
    return SPLITS[zlib.crc32(f"{input_text}\n{target}".encode()) % 3]


def generate_program(length: int, nesting: int, rng: random.Random) -> tuple[str, str]:
    """A random program of ``nesting`` composed operations, and what it prints."""
    length, nesting = _check_program_args(length, nesting)
    text, target, _ = _compose_program(length, nesting, _check_rng(rng))
    return text, target


def generate_addition(length: int, rng: random.Random) -> tuple[str, str]:
    """``print(a+b)`` with ``a`` and ``b`` uniform in ``1..10**length``, and the sum."""
    length = check_int("length", length, 1, MAX_LENGTH)
    return _addition(length, 1, _check_rng(rng))


def generate_copy(length: int, rng: random.Random) -> tuple[str, str]:
    """A string of ``length`` uniform random digits, twice: as input and as target."""
    length = check_int("length", length, 1, MAX_COPY_LENGTH)
    return _copy(length, 1, _check_rng(rng))


def generate(task: str, length: int, nesting: int, rng: random.Random,
             number_length: Callable[[], int] | None = None) -> tuple[str, str]:
    """An ``(input, target)`` pair of ``task``, whatever split it falls into.

    ``number_length``: None for every number at ``length`` digits, or a function
    called for every number, multiplier and loop count that returns its length
    (at most ``length``).
    """
    task, length, nesting = _check_task_args(task, length, nesting)
    lengths = None if number_length is None else _NumberLengths(number_length, length)
    return _GENERATORS[task](length, nesting, _check_rng(rng), lengths)


def sample_example(task: str, length: int, nesting: int, split: str, rng: random.Random,
                   number_length: Callable[[], int] | None = None) -> Example:
    """A random example of ``task`` from ``split``: draws until one falls into that split.

    ``number_length`` is :func:`generate`'s; the example's ``length`` is then
    the largest length it returned for that example.
    """
    task, length, nesting = _check_task_args(task, length, nesting)
    split = check_choice("split", split, SPLITS)
    rng = _check_rng(rng)
    if number_length is None:
        return _draw_in_split(task, length, nesting, split, rng)
    for _ in range(MAX_TRIES):
        lengths = _NumberLengths(number_length, length)
        text, target = _GENERATORS[task](length, nesting, rng, lengths)
        if split_of(text, target) == split:
            return Example(task, text, target, lengths.largest, nesting, split)
    raise _unreachable(task, length, nesting, split)


def sample(task: str, length: int, nesting: int = 1, count: int = 1, seed: int = 0,
           split: str = "train") -> list[Example]:
    """``count`` examples of ``task`` from ``split``; the same arguments give the same list."""
    task, length, nesting = _check_task_args(task, length, nesting)
    count = check_int("count", count, 0)
    seed = check_int("seed", seed, 0)
    split = check_choice("split", split, SPLITS)
    rng = random.Random(seed)
    return [_draw_in_split(task, length, nesting, split, rng) for _ in range(count)]


def _draw_in_split(task: str, length: int, nesting: int, split: str, rng: random.Random) -> Example:
    """Draw examples of ``task`` (arguments already checked) until one lands in ``split``."""
    generator = _GENERATORS[task]
    for _ in range(MAX_TRIES):
        text, target = generator(length, nesting, rng)
        if split_of(text, target) == split:
            return Example(task, text, target, length, nesting, split)
    raise _unreachable(task, length, nesting, split)


def _unreachable(task: str, length: int, nesting: int, split: str) -> ValueError:
    return ValueError(
        f"split {split!r} is out of reach for task {task} at length {length}, nesting {nesting}: "
        f"none of {MAX_TRIES} draws fell into it (too few distinct examples); use a larger length")


def _compose_program(length: int, nesting: int, rng: random.Random,
                     number_length: Callable[[], int] | None = None) -> tuple[str, str, list[int]]:
    """A program, its printed output, and the operations it was composed of (indices into OPERATIONS).

    The stack of the original code never holds more than one entry, so it is kept
    as ``expression`` and ``value``: the previous operation's result, with
    ``expression`` None before the first operation.  Small uniform choices use
    ``int(random() * n)``, whose deviation from uniform (below n / 2**53) is far
    beneath anything measurable and which is several times cheaper than
    ``randrange``; numbers from ``1..10**length`` use ``randrange``, exact at
    every length.  With ``number_length``, every number, multiplier and loop
    count first draws its own length.
    """
    randrange = rng.randrange
    fraction = rng.random
    numbers, small = 10 ** length, 4 * length
    per_number = number_length is not None   # checked inline: a call per number would cost ~10%
    lines: list[str] = []
    operations: list[int] = []
    letters_used = ""
    expression = None
    value = 0
    for _ in range(nesting):
        kind = int(fraction() * 6)
        operations.append(kind)

        # Operands a, b, c, d (as many as the operation takes): the stack entry at a
        # random position, fresh numbers at the others.
        arity = _ARITY[kind]
        slot = int(fraction() * arity) if expression is not None else -1
        a_value = value if slot == 0 else (randrange(10 ** number_length() if per_number else numbers) + 1)
        a = expression if slot == 0 else str(a_value)
        if arity > 1:
            b_value = value if slot == 1 else (randrange(10 ** number_length() if per_number else numbers) + 1)
            b = expression if slot == 1 else str(b_value)
        if arity > 2:
            c_value = value if slot == 2 else (randrange(10 ** number_length() if per_number else numbers) + 1)
            c = expression if slot == 2 else str(c_value)
            d_value = value if slot == 3 else (randrange(10 ** number_length() if per_number else numbers) + 1)
            d = expression if slot == 3 else str(d_value)

        if kind == _VARIABLE or kind == _LOOP:
            name = _VARIABLE_LETTERS[int(fraction() * 10)]
            while name in letters_used:
                name = _VARIABLE_LETTERS[int(fraction() * 10)]
            letters_used += name
            lines.append(f"{name}={a}")

        if kind == _PAIR:
            if fraction() < 0.5:
                expression, value = f"({a}+{b})", a_value + b_value
            else:
                expression, value = f"({a}-{b})", a_value - b_value
        elif kind == _MULTIPLICATION:
            factor = int(fraction() * (4 * number_length() if per_number else small)) + 1
            expression = f"({a}*{factor})" if fraction() < 0.5 else f"({factor}*{a})"
            value = a_value * factor
        elif kind == _EQUALITY:
            expression, value = a, a_value
        elif kind == _VARIABLE:
            if fraction() < 0.5:
                expression, value = f"({name}+{b})", a_value + b_value
            else:
                expression, value = f"({name}-{b})", a_value - b_value
        elif kind == _LOOP:
            repeats = int(fraction() * (4 * number_length() if per_number else small)) + 1
            if fraction() < 0.5:
                lines.append(f"for x in range({repeats}):{name}+={b}")
                value = a_value + repeats * b_value
            else:
                lines.append(f"for x in range({repeats}):{name}-={b}")
                value = a_value - repeats * b_value
            expression = name
        elif fraction() < 0.5:  # if-expression
            expression = f"({c} if {a}<{b} else {d})"
            value = c_value if a_value < b_value else d_value
        else:
            expression = f"({c} if {a}>{b} else {d})"
            value = c_value if a_value > b_value else d_value

    lines.append(f"print({expression})")
    return "\n".join(lines), str(value), operations


def _program(length: int, nesting: int, rng: random.Random,
             number_length: Callable[[], int] | None = None) -> tuple[str, str]:
    """:func:`_compose_program` without the list of operations."""
    text, target, _ = _compose_program(length, nesting, rng, number_length)
    return text, target


def _addition(length: int, nesting: int, rng: random.Random,
              number_length: Callable[[], int] | None = None) -> tuple[str, str]:
    if number_length is None:
        a = rng.randrange(10 ** length) + 1
        b = rng.randrange(10 ** length) + 1
    else:
        a = rng.randrange(10 ** number_length()) + 1
        b = rng.randrange(10 ** number_length()) + 1
    return f"print({a}+{b})", str(a + b)


def _copy(length: int, nesting: int, rng: random.Random,
          number_length: Callable[[], int] | None = None) -> tuple[str, str]:
    if number_length is not None:
        length = number_length()
    digits = str(rng.randrange(10 ** length)).zfill(length)
    return digits, digits


class _NumberLengths:
    """A caller's ``number_length``, checked on every call, remembering the largest length it gave."""

    def __init__(self, number_length: Callable[[], int], length: int):
        if not callable(number_length):
            raise TypeError(f"number_length must be a function returning a length, "
                            f"got {type(number_length).__name__}")
        self._draw, self._length, self.largest = number_length, length, 0

    def __call__(self) -> int:
        value = self._draw()
        if type(value) is not int or not 1 <= value <= self._length:
            raise ValueError(f"number_length returned {value!r}; it must be an integer in 1..{self._length}")
        self.largest = max(self.largest, value)
        return value


# Unchecked generators by task, all called as (length, nesting, rng, number_length).
_GENERATORS = {"addition": _addition, "copy": _copy, "programs": _program}


def _check_task_args(task, length, nesting) -> tuple[str, int, int]:
    """Validate ``task``, ``length`` and ``nesting`` together: their limits depend on the task."""
    task = check_choice("task", task, TASKS)
    if task == "programs":
        length, nesting = _check_program_args(length, nesting)
        return task, length, nesting
    length = check_int("length", length, 1, MAX_COPY_LENGTH if task == "copy" else MAX_LENGTH)
    nesting = check_int("nesting", nesting, 1)
    if nesting != 1:
        raise ValueError(f"nesting applies only to task programs and must be 1 for task {task}, "
                         f"got {nesting}")
    return task, length, nesting


def _check_program_args(length, nesting) -> tuple[int, int]:
    return check_int("length", length, 1, MAX_LENGTH), check_int("nesting", nesting, 1, MAX_NESTING)


def _check_rng(rng) -> random.Random:
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random instance, got {type(rng).__name__}")
    return rng
