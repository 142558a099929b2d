"""Tests of the safe evaluator: it agrees with the sampler's targets (computed by CPython when the
sampler's own tests run them) and refuses everything outside the tasks' grammar, within its limits."""

import builtins
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec import interpret
from ltexec.interpret import MAX_DEPTH, MAX_DIGITS, MAX_STEPS, MAX_TEXT, run_program, task_output
from ltexec.sampler import MAX_LENGTH, MAX_NESTING, generate


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, MAX_LENGTH), nesting=st.integers(1, MAX_NESTING), seed=st.integers(0, 2**32))
def test_programs_print_the_samplers_target(length, nesting, seed):
    text, target = generate("programs", length, nesting, random.Random(seed))
    assert task_output("programs", text) == target


@pytest.mark.parametrize("length, nesting", [(1, 1), (2, 2), (4, 3), (6, 6), (20, MAX_NESTING)])
def test_many_programs_at_each_level_print_their_target(length, nesting):
    rng = random.Random(length * 100 + nesting)
    for _ in range(200):
        text, target = generate("programs", length, nesting, rng)
        assert run_program(text) == target, text


@pytest.mark.parametrize("task", ["addition", "copy"])
@pytest.mark.parametrize("length", [1, 3, 20])
def test_addition_and_copy_print_their_target(task, length):
    rng = random.Random(length)
    for _ in range(100):
        text, target = generate(task, length, 1, rng)
        assert task_output(task, text) == target


def test_python_meaning_of_loops_and_if_expressions():
    assert run_program("for x in range(3):a=x\nprint(a)") == "2"
    assert run_program("a=5\nfor x in range(0):a+=1\nprint(a-9)") == "-4"
    assert run_program("a=2\nfor x in range(3):\n    a*=3\n    b=a+x\nprint(b)") == "56"
    assert run_program("print((1 if 2>3 else (4 if 1<2 else 5)))") == "4"
    assert run_program("print(1 if 1<2 else q)") == "1"      # only the chosen branch is evaluated


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "must end with print"),
    ("print(__import__('os'))", "the call"),
    ("import os\nprint(1)", "the import"),
    ("print(a.b)", "the attribute access"),
    ("while True:\n  a=1\nprint(1)", "the while loop"),
    ("print(1/2)", "the operation"),
    ("print(2**3)", "the operation"),
    ("print(-1)", "the operation"),
    ("print(1<2)", "the comparison"),
    ("print(1 if 1<=2 else 3)", "the if-expression"),
    ("print(1 if 1<2<3 else 3)", "the if-expression"),
    ("print(0x10)", "the constant"),
    ("print(1_0)", "the constant"),
    ("print(True)", "the constant"),
    ("print('a')", "the constant"),
    ("print(1.5)", "the constant"),
    ("f(1)\nprint(1)", "the statement"),
    ("def f():\n  a=1\nprint(1)", "the FunctionDef"),
    ("for x in range(2):\n  for y in range(2):\n    a=1\nprint(1)", "the loop"),
    ("for x in [1, 2]:a=x\nprint(a)", "a loop must run over range(n)"),
    ("a,b=1,2\nprint(a)", "the Tuple"),
    ("a.b=1\nprint(1)", "only a name can be assigned"),
    ("range=3\nprint(range)", "range cannot be assigned"),
    ("print(q)", "name 'q' is used before it is assigned"),
    ("a=1\nprint(a)\nprint(a)", "must be the last statement"),
    ("a=1", "must end with print"),
    ("print(1, 2)", "must end with print"),
    ("print(1", "not valid Python"),
    ("", "empty"),
    ("  \n", "empty"),
])
def test_refuses_what_is_not_in_the_grammar(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_program(text)


@pytest.mark.parametrize("text, message", [
    (f"for x in range({MAX_STEPS + 1}):a=x\nprint(a)", "iterations"),
    ("for x in range(1000000000):a=x\nprint(a)", "range(1000000000) runs more than"),
    (f"for x in range({MAX_STEPS}):a=x\nfor x in range({MAX_STEPS}):a=x\nprint(a)", "statements"),
    ("a=2\nfor x in range(100):a*=a\nprint(a)", f"{MAX_DIGITS} digits"),
    (f"print({'9' * (MAX_DIGITS + 1)})", f"{MAX_DIGITS} digits"),
    ("print(" + "1+" * 1000 + "1)", f"deeper than the limit of {MAX_DEPTH}"),
    ("print(" + "(" * 300 + "1" + ")" * 300 + ")", "not valid Python"),
    ("a=1\n" * MAX_TEXT + "print(a)", f"limit of {MAX_TEXT}"),
])
def test_limits_refuse_hostile_programs(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_program(text)


def test_copy_input_is_a_digit_string():
    assert task_output("copy", "0042") == "0042"
    for text in ("", "12a", "print(1)", "١٢"):
        with pytest.raises(ValueError, match="string of digits"):
            task_output("copy", text)
    with pytest.raises(ValueError, match="task"):
        task_output("sorting", "12")


def test_never_runs_or_compiles_the_text(monkeypatch):
    """Only ast.parse's compile-to-syntax-tree is allowed; exec and eval are never reached."""
    real_compile = builtins.compile

    def syntax_tree_only(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & interpret.ast.PyCF_ONLY_AST, "compiled to a code object"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("exec or eval called")

    monkeypatch.setattr(builtins, "compile", syntax_tree_only)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "eval", forbidden)
    assert run_program("a=3\nfor x in range(4):a+=2\nprint((a if a>10 else 0))") == "11"
