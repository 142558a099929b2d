"""The NPI's addition environment and traces: the pad refuses what it cannot do, and every trace adds.

Replaying a generated trace on a fresh pad must write the true sum (Python's
integers; for operands beyond their text limit, the chunked reference, itself
checked against Python's integers) for operands of 1 to 3,000 digits,
long runs of 9s (carries that travel) included.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.npi.addition import (ACT, ADD, ADD1, BLANK, CARRY, CARRY_ROW, IN1, LEFT, LSHIFT, OUT, PROGRAMS, PTR,
                                 RIGHT, WRITE, AdditionPad, PadError, add_digits, addition_trace, parse_operand,
                                 replay)
from ltexec.npi.programs import Call


def digits(min_size=1, max_size=40):
    return st.text("0123456789", min_size=min_size, max_size=max_size)


def nines_and_more():
    """Operands with long runs of 9s (and their complements), where one carry crosses many columns."""
    run = st.integers(1, 400).map(lambda n: "9" * n)
    return st.tuples(digits(0, 5), run, digits(0, 5)).map("".join)


def replayed(a: str, b: str) -> str:
    pad = AdditionPad(a, b)
    replay(addition_trace(a, b), pad)
    return pad.output()


@settings(max_examples=300, deadline=None)
@given(a=digits(), b=digits())
def test_replaying_a_trace_writes_the_sum(a, b):
    assert replayed(a, b) == str(int(a) + int(b)) == add_digits(a, b)


@settings(max_examples=60, deadline=None)
@given(a=nines_and_more(), b=st.one_of(digits(1, 3), nines_and_more()))
def test_carries_through_long_runs_of_nines(a, b):
    assert replayed(a, b) == str(int(a) + int(b))


@settings(max_examples=8, deadline=None)
@given(a=digits(1000, 3000), b=digits(1, 3000))
def test_thousands_of_digits(a, b):
    assert replayed(a, b) == add_digits(a, b) == str(int(a) + int(b))


def test_the_reference_sum_is_right_across_its_chunks():
    for a, b in (("9" * 3000, "1"), ("9" * 2000, "9" * 2000), ("1" + "0" * 999, "9" * 1000), ("0", "0")):
        assert add_digits(a, b) == str(int(a) + int(b))
    big = "7" * 5000                                      # beyond what Python converts to text by default
    assert add_digits(big, big) == "1" + "5" * 4999 + "4"


def test_the_trace_is_the_grade_school_algorithm():
    trace = addition_trace("57", "68")                    # 7 + 8 = 15, 5 + 6 + 1 = 12: carries twice
    assert trace.call == Call(ADD)
    calls = [step.call for step in trace.steps]
    assert calls == [Call(ADD1), Call(LSHIFT), Call(ADD1), Call(LSHIFT), Call(ADD1), Call(LSHIFT), None]
    first_add1 = trace.callees[0]
    assert [step.call for step in first_add1.steps] == [Call(ACT, (WRITE, OUT, 5)), Call(CARRY), None]
    carry = first_add1.callees[0]
    assert [step.call for step in carry.steps] == [Call(ACT, (PTR, CARRY_ROW, LEFT)), Call(ACT, (WRITE, CARRY_ROW, 1)),
                                                    Call(ACT, (PTR, CARRY_ROW, RIGHT)), None]
    lshift = trace.callees[1]
    assert [step.call for step in lshift.steps] == [*(Call(ACT, (PTR, row, LEFT)) for row in range(4)), None]
    assert trace.steps[-1].observation == (BLANK, BLANK, BLANK, BLANK)     # all blank: ADD ends
    assert [c.call.program for c in trace.walk()][:3] == [ADD, ADD1, CARRY]
    assert trace.core_steps() == sum(len(i.steps) for i in trace.walk())


def test_a_pad_shows_what_is_under_its_pointers():
    pad = AdditionPad("305", "7")
    assert pad.columns == 5 and pad.observe() == (5, 7, BLANK, BLANK)
    pad.act((PTR, IN1, LEFT))
    assert pad.observe() == (0, 7, BLANK, BLANK)
    pad.act((WRITE, OUT, 2))
    assert pad.observe()[OUT] == 2 and pad.output() == "2"
    assert pad.render()[0] == "  in1        3 [0] 5 "          # the blank column, the carry column, 3 digits


@pytest.mark.parametrize("args, message", [
    ((WRITE, 4, 1), "row must be in 0..3 (in1, in2, carry, out), got 4"),
    ((WRITE, OUT, 10), "WRITE writes a digit 0..9, got 10"),
    ((PTR, OUT, 2), "PTR moves left (0) or right (1), got 2"),
    ((PTR, OUT, RIGHT), "PTR would move the out pointer off the pad (to column 3 of 0..2)"),
    ((7, OUT, 0), "ACT's kind must be WRITE (0) or PTR (1), got 7"),
])
def test_the_pad_refuses_what_it_cannot_do_naming_it(args, message):
    pad = AdditionPad("1", "2")
    with pytest.raises(PadError, match=re.escape(message)):
        pad.act(args)
    pad.act((PTR, OUT, LEFT))
    pad.act((PTR, OUT, LEFT))
    with pytest.raises(PadError, match=re.escape("off the pad (to column -1 of 0..2)")):
        pad.act((PTR, OUT, LEFT))


@pytest.mark.parametrize("text", ["", "-5", "1.5", "12a", " 12", "١٢", 12, None])
def test_operands_must_be_digits(text):
    with pytest.raises(ValueError, match=r"^a must be a non-negative integer written in digits, got "):
        parse_operand("a", text)


def test_operands_lose_their_leading_zeros():
    assert parse_operand("a", "007") == "7" and parse_operand("a", "000") == "0"
    assert replayed("007", "0003") == "10"


def test_a_replay_checks_every_observation():
    trace = addition_trace("12", "34")
    with pytest.raises(ValueError, match=r"ADD step 0 observes \(2, 5, 10, 10\), the trace says \(2, 4, 10, 10\)"):
        replay(trace, AdditionPad("12", "35"))


def test_calls_are_checked():
    with pytest.raises(ValueError, match=r"a call has 3 arguments in 0..9, got \(1, 2\)"):
        Call(ACT, (1, 2))
    assert PROGRAMS[ACT].primitive and not any(p.primitive for p in PROGRAMS[:ACT])


@settings(max_examples=100, deadline=None)
@given(a=digits(), b=digits())
def test_the_trace_holds_the_steps_the_algorithm_makes_in_order(a, b):
    from ltexec.npi.addition import grade_school_steps
    from ltexec.npi.programs import core_steps_in_order
    assert core_steps_in_order(addition_trace(a, b), PROGRAMS) == list(grade_school_steps(a, b))
