"""What a task's program prints, worked out without running it.

``ltexec predict`` shows the true output next to a model's answer. The text
comes from a user, so Python never runs it (no ``exec``, ``eval`` or
``compile``): it is parsed with :mod:`ast` and only the constructs that
:mod:`ltexec.sampler` writes are interpreted, with Python's meaning:

- statements ``name=expr``, ``for name in range(expr):`` whose body assigns
  (``name=expr``, ``name+=expr``, ``name-=expr``), and ``print(expr)`` once,
  as the last statement;
- expressions: decimal integer literals, names, ``+``, ``-``, ``*``,
  parentheses and ``(c if a<b else d)`` / ``(c if a>b else d)``.

Anything else raises ValueError naming the construct. Limits on the text's
size, the statements executed, the nesting of expressions and the digits of
every value keep hostile input from hanging or exhausting memory; the
sampler's programs stay far inside them. A ``copy`` input is a digit string,
which "prints" itself.
"""

from __future__ import annotations

import ast
import operator
import re
import warnings

from ltexec.sampler import TASKS
from ltexec.validation import check_choice

MAX_TEXT = 5000
"""Most characters of a program (the sampler's longest are a few hundred)."""

MAX_STEPS = 10_000
"""Most statements executed, loop iterations included (the sampler's programs run under a thousand)."""

MAX_DEPTH = 100
"""Deepest nesting of an expression."""

MAX_DIGITS = 100
"""Most digits of any value (the sampler's stay under 50)."""

_LIMIT = 10 ** MAX_DIGITS
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_COMPARISONS = {ast.Lt: operator.lt, ast.Gt: operator.gt}
_BUILTINS = ("print", "range")
_KINDS = {ast.Call: "the call", ast.Attribute: "the attribute access", ast.While: "the while loop",
          ast.Import: "the import", ast.ImportFrom: "the import", ast.BinOp: "the operation",
          ast.AugAssign: "the assignment", ast.Assign: "the assignment", ast.Compare: "the comparison",
          ast.Constant: "the constant", ast.For: "the loop", ast.Expr: "the statement",
          ast.IfExp: "the if-expression", ast.UnaryOp: "the operation"}


def task_output(task: str, text: str) -> str:
    """What the input ``text`` of ``task`` prints: a copy input itself, a program what :func:`run_program` says."""
    check_choice("task", task, TASKS)
    if task != "copy":
        return run_program(text)
    if not isinstance(text, str) or not re.fullmatch("[0-9]+", text):
        raise ValueError("a copy input is a string of digits")
    return text


def run_program(text: str) -> str:
    """What the program ``text`` prints (without the newline), or ValueError if it is not one of the tasks'."""
    if not isinstance(text, str):
        raise ValueError(f"a program is a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the program is empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"the program has {len(text)} characters, more than the limit of {MAX_TEXT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # e.g. "'int' object is not callable" on print(1(2))
            tree = ast.parse(text)
    except SyntaxError as error:
        raise ValueError(f"the program is not valid Python: {error.msg} (line {error.lineno})") from None
    except (RecursionError, MemoryError):
        raise ValueError("the program is nested too deeply to parse") from None
    return _Interpreter(text).program(tree.body)


class _Interpreter:
    """The names a program has assigned and the statements it has executed, while it runs."""

    def __init__(self, text: str):
        self.text = text
        self.names: dict[str, int] = {}
        self.steps = 0

    def program(self, body: list) -> str:
        if not body:
            raise ValueError("the program has no statements")
        *statements, last = body
        for node in statements:
            if _printed(node) is not None:
                raise ValueError("print(...) must be the last statement: a program of the tasks prints once")
            self.statement(node, in_loop=False)
        printed = _printed(last)
        if printed is None:
            raise ValueError("the program must end with print(expression)")
        self.step()
        return str(self.expr(printed, 0))

    def statement(self, node, in_loop: bool) -> None:
        self.step()
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            value = self.expr(node.value, 0)
            self.names[self.target(node.targets[0])] = value
        elif isinstance(node, ast.AugAssign) and type(node.op) in _OPERATORS:
            name = self.target(node.target)
            value = _OPERATORS[type(node.op)](self.lookup(name), self.expr(node.value, 0))
            self.names[name] = _bounded(value)
        elif isinstance(node, ast.For) and not in_loop and not node.orelse:
            count = self.range_count(node.iter)
            name = self.target(node.target)
            for i in range(count):
                self.names[name] = i
                for inner in node.body:
                    self.statement(inner, in_loop=True)
        else:
            raise self.refuse(node)

    def range_count(self, node) -> int:
        """The number of iterations of ``range(n)``; refused above :data:`MAX_STEPS`."""
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
                and len(node.args) == 1 and not node.keywords):
            raise ValueError(f"a loop must run over range(n), not {self.source(node)!r}")
        count = self.expr(node.args[0], 0)
        if count > MAX_STEPS:
            raise ValueError(f"range({count}) runs more than the limit of {MAX_STEPS} iterations")
        return max(count, 0)

    def expr(self, node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ValueError(f"an expression is nested deeper than the limit of {MAX_DEPTH}")
        if isinstance(node, ast.Constant) and type(node.value) is int and self.decimal(node):
            return _bounded(node.value)
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = self.expr(node.left, depth + 1), self.expr(node.right, depth + 1)
            return _bounded(_OPERATORS[type(node.op)](left, right))
        test = getattr(node, "test", None)
        if (isinstance(node, ast.IfExp) and isinstance(test, ast.Compare) and len(test.ops) == 1
                and type(test.ops[0]) in _COMPARISONS):
            holds = _COMPARISONS[type(test.ops[0])](self.expr(test.left, depth + 1),
                                                    self.expr(test.comparators[0], depth + 1))
            return self.expr(node.body if holds else node.orelse, depth + 1)
        raise self.refuse(node)

    def target(self, node) -> str:
        """The name an assignment or loop writes; nothing but a plain name, never a builtin's."""
        if not isinstance(node, ast.Name):
            raise ValueError(f"only a name can be assigned, not {self.source(node)!r}")
        if node.id in _BUILTINS:
            raise ValueError(f"{node.id} cannot be assigned")
        return node.id

    def lookup(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"name {name!r} is used before it is assigned")
        return self.names[name]

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ValueError(f"the program runs more than the limit of {MAX_STEPS} statements")

    def decimal(self, node) -> bool:
        """Whether the literal ``node`` is written in decimal digits (not ``0x10``, ``1_0``)."""
        return (ast.get_source_segment(self.text, node) or "").isdigit()

    def source(self, node) -> str:
        """The text of ``node``, cut at its first line and 40 characters (a slice: no recursion)."""
        text = ast.get_source_segment(self.text, node) or type(node).__name__
        first = text.splitlines()[0] if text else text
        return first if len(first) <= 40 and first == text else first[:40] + "..."

    def refuse(self, node) -> ValueError:
        kind = _KINDS.get(type(node), f"the {type(node).__name__}")
        return ValueError(f"{kind} {self.source(node)!r} is not part of the tasks' grammar")


def _printed(node):
    """The argument of a ``print(expr)`` statement, or None if ``node`` is not one."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return None
    call = node.value
    if isinstance(call.func, ast.Name) and call.func.id == "print" and len(call.args) == 1 and not call.keywords:
        return call.args[0]
    return None


def _bounded(value: int) -> int:
    if not -_LIMIT < value < _LIMIT:
        raise ValueError(f"a value has more than the limit of {MAX_DIGITS} digits")
    return value
