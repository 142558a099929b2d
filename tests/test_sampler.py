"""Tests of the example sampler.

The ground truth is CPython: every generated input, run as Python, must print
exactly its target.  The other tests pin the program grammar (checked on the
syntax tree), the operation and operand statistics, determinism, the disjoint
splits and the argument checks.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec import sampler
from ltexec.sampler import (MAX_COPY_LENGTH, MAX_LENGTH, MAX_NESTING, OPERATIONS, SPLITS, TASKS,
                            Example, generate, generate_addition, generate_copy, generate_program,
                            sample, sample_example, split_of)


def printed(source: str) -> str:
    """What CPython prints when it runs ``source`` in this process."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, "<example>", "exec"), {})
    return buffer.getvalue()


def compose(length: int, nesting: int, seed: int):
    """A program, its target and its operation names, from the sampler's internal composer."""
    text, target, kinds = sampler._compose_program(length, nesting, random.Random(seed))
    return text, target, [OPERATIONS[kind] for kind in kinds]


def chi_square(counts: Counter, categories) -> float:
    """Pearson's statistic of ``counts`` against equal frequencies over ``categories``."""
    total = sum(counts[category] for category in categories)
    expected = total / len(categories)
    return sum((counts[category] - expected) ** 2 / expected for category in categories)


# By degrees of freedom: Pearson's statistic stays below these with probability 1 - 1e-5
# when the draws are uniform.
CHI_SQUARE_LIMIT = {1: 19.5, 3: 25.9, 5: 30.8, 9: 39.3}


# --- ground truth: CPython prints the target -------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(task=st.sampled_from(TASKS), length=st.integers(1, 9), nesting=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1), split=st.sampled_from(SPLITS))
def test_every_example_prints_exactly_its_target(task, length, nesting, seed, split):
    if task != "programs":
        nesting = 1
    examples = sample(task, length, nesting, count=20, seed=seed, split=split)
    assert len(examples) == 20
    for example in examples:
        assert (example.task, example.length, example.nesting, example.split) == (task, length, nesting, split)
        if task == "copy":
            assert example.target == example.input
            assert len(example.input) == length and example.input.isdigit()
        else:
            assert printed(example.input) == example.target + "\n", example.input


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, MAX_LENGTH), nesting=st.integers(1, MAX_NESTING),
       seed=st.integers(0, 2**32 - 1))
def test_programs_up_to_the_largest_settings_print_their_target(length, nesting, seed):
    rng = random.Random(seed)
    for _ in range(3):
        text, target = generate_program(length, nesting, rng)
        assert printed(text) == target + "\n", text


def test_cpython_in_a_subprocess_prints_the_target():
    examples = (sample("programs", 4, 3, count=3, seed=11) + sample("programs", 2, 6, count=2, seed=12)
                + sample("addition", 9, count=1, seed=13))
    for example in examples:
        result = subprocess.run([sys.executable, "-c", example.input], capture_output=True, text=True,
                                timeout=60, check=True)
        assert result.stdout == example.target + "\n", example.input


# --- structure of the programs -----------------------------------------------------------------

def check_program_structure(text: str, target: str, length: int, nesting: int, operations: list[str]):
    """Assert that ``text`` follows the program grammar and matches ``operations``."""
    assert len(operations) == nesting
    assert text.splitlines()[-1].startswith("print(") and text.endswith(")")
    *statements, last = ast.parse(text).body
    call = last.value
    assert isinstance(last, ast.Expr) and isinstance(call, ast.Call) and call.func.id == "print"
    assert len(call.args) == 1 and not call.keywords

    assigned = []
    for statement in statements:
        if isinstance(statement, ast.Assign):
            (name,) = statement.targets
            assigned.append(name.id)
        else:
            assert isinstance(statement, ast.For), ast.dump(statement)
            assert isinstance(statement.target, ast.Name) and statement.target.id == "x"
            assert not statement.orelse
            (update,) = statement.body
            assert update.lineno == statement.lineno, "the loop body stays on the for line"
            assert isinstance(update, ast.AugAssign) and isinstance(update.op, (ast.Add, ast.Sub))
            assert update.target.id == assigned[-1], "a loop updates the variable assigned just before it"
            assert not any(isinstance(node, ast.For) for node in ast.walk(update))
            iterator = statement.iter
            assert isinstance(iterator, ast.Call) and iterator.func.id == "range" and len(iterator.args) == 1
            (repeats,) = iterator.args
            assert isinstance(repeats, ast.Constant) and 1 <= repeats.value <= 4 * length
    assert len(assigned) == len(set(assigned)), "a variable is assigned twice"
    assert all(len(name) == 1 and name.islower() and name != "x" for name in assigned)

    tree = ast.parse(text)
    loaded = [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)]
    assert set(loaded) - {"print", "range"} == set(assigned), "every variable is used, none is undefined"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            assert type(node.value) is int and 1 <= node.value <= 10**length
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            assert any(isinstance(side, ast.Constant) and 1 <= side.value <= 4 * length
                       for side in (node.left, node.right))

    kinds = Counter(type(node).__name__ for node in ast.walk(tree))
    ops = Counter(type(node.op).__name__ for node in ast.walk(tree) if isinstance(node, ast.BinOp))
    used = Counter(operations)
    assert kinds["IfExp"] == kinds["Compare"] == used["if"]
    assert kinds["For"] == used["loop"]
    assert kinds["Assign"] == used["variable"] + used["loop"]
    assert ops["Mult"] == used["multiplication"]
    assert ops["Add"] + ops["Sub"] == used["pair"] + used["variable"]
    # Each operation after the first takes the previous result as one operand, so the
    # numbers in the text are fresh operands, multiplication factors and loop counts.
    arity = {"pair": 2, "multiplication": 1, "equality": 1, "variable": 2, "loop": 2, "if": 4}
    fresh = sum(arity[operation] for operation in operations) - (nesting - 1)
    assert kinds["Constant"] == fresh + used["multiplication"] + used["loop"]
    assert len(text.splitlines()) == 1 + used["variable"] + 2 * used["loop"]
    assert printed(text) == target + "\n"


@pytest.mark.parametrize("length, nesting", [(1, 1), (1, 4), (2, 2), (4, 3), (6, 5), (9, MAX_NESTING)])
def test_programs_follow_the_grammar(length, nesting):
    for seed in range(150):
        text, target, operations = compose(length, nesting, seed)
        check_program_structure(text, target, length, nesting, operations)


def test_the_structure_check_rejects_a_broken_program():
    text, target, operations = compose(4, 3, seed=0)
    check_program_structure(text, target, 4, 3, operations)
    broken = [
        (text, target, 4, 3, operations[:-1] + ["pair"]),  # operations that do not match the text
        (text, target, 3, 3, operations),  # numbers beyond 10**length
        (text, str(int(target) + 1), 4, 3, operations),  # a wrong target
        ("a=5\nfor x in range(2):a+=3\na=1\nprint(a)", "1", 1, 3, ["loop", "variable", "equality"]),
        ("a=5\nfor a in range(2):a+=3\nprint(a)", "8", 1, 1, ["loop"]),  # counter other than x
    ]
    for case in broken:
        with pytest.raises(AssertionError):
            check_program_structure(*case)


def test_generate_program_is_the_composer_without_the_operations():
    for seed in range(20):
        text, target, _ = sampler._compose_program(3, 4, random.Random(seed))
        assert generate_program(3, 4, random.Random(seed)) == (text, target)
        assert generate("programs", 3, 4, random.Random(seed)) == (text, target)


def test_paper_style_program_prints_its_target():
    # Figure 1 of the paper, with the loop body on the for line as the generator writes it.
    assert printed("j=8584\nfor x in range(8):j+=920\nb=(1500+j)\nprint((b+7567))") == "25011\n"


# --- statistics ----------------------------------------------------------------------------------

def test_operations_are_chosen_uniformly():
    counts = Counter()
    for seed in range(2000):
        counts.update(compose(4, 3, seed)[2])
    assert sum(counts.values()) == 6000
    assert chi_square(counts, OPERATIONS) < CHI_SQUARE_LIMIT[5], counts


def test_both_variants_of_each_operator_occur_evenly():
    binary, comparisons, updates = Counter(), Counter(), Counter()
    for seed in range(1500):
        tree = ast.parse(compose(3, 3, seed)[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Mult):
                binary[type(node.op).__name__] += 1
            elif isinstance(node, ast.Compare):
                comparisons[type(node.ops[0]).__name__] += 1
            elif isinstance(node, ast.AugAssign):
                updates[type(node.op).__name__] += 1
    assert chi_square(binary, ("Add", "Sub")) < CHI_SQUARE_LIMIT[1], binary
    assert chi_square(comparisons, ("Lt", "Gt")) < CHI_SQUARE_LIMIT[1], comparisons
    assert chi_square(updates, ("Add", "Sub")) < CHI_SQUARE_LIMIT[1], updates
    assert min(len(binary), len(comparisons), len(updates)) == 2


def previous_result_position(text: str, second: str) -> str:
    """Where the first operation's result ``(n+m)`` or ``(n-m)`` sits in the second operation."""
    expression = ast.parse(text).body[-1].value.args[0]
    if second in ("pair", "multiplication"):
        sides = {"left": expression.left, "right": expression.right}
    else:
        sides = {"a": expression.test.left, "b": expression.test.comparators[0],
                 "c": expression.body, "d": expression.orelse}
    (position,) = [name for name, node in sides.items() if isinstance(node, ast.BinOp)]
    return position


def test_the_previous_result_takes_a_random_operand_position():
    positions = {"pair": Counter(), "multiplication": Counter(), "if": Counter()}
    for seed in range(30000):
        text, _, operations = compose(2, 2, seed)
        first, second = operations
        if first == "pair" and second in positions:
            positions[second][previous_result_position(text, second)] += 1
    assert chi_square(positions["pair"], ("left", "right")) < CHI_SQUARE_LIMIT[1], positions
    assert chi_square(positions["multiplication"], ("left", "right")) < CHI_SQUARE_LIMIT[1], positions
    assert chi_square(positions["if"], "abcd") < CHI_SQUARE_LIMIT[3], positions
    assert min(sum(counter.values()) for counter in positions.values()) > 500


def test_negative_results_occur():
    targets = [example.target for example in sample("programs", 4, 3, count=2000, seed=3)]
    negative = sum(target.startswith("-") for target in targets)
    assert 0.1 < negative / len(targets) < 0.5
    assert all(target.lstrip("-").isdigit() for target in targets)


def test_numbers_cover_one_to_ten_to_the_length_inclusive():
    constants, repeats, factors = Counter(), set(), set()
    for seed in range(3000):
        tree = ast.parse(compose(1, 2, seed)[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.For):
                repeats.add(node.iter.args[0].value)
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                factors.update(side.value for side in (node.left, node.right) if isinstance(side, ast.Constant))
            elif isinstance(node, ast.Constant):
                constants[node.value] += 1
    assert set(constants) | factors == set(range(1, 11))
    assert repeats == {1, 2, 3, 4}

    operands = Counter()
    for example in sample("addition", 1, count=3000, seed=4, split="val"):
        operands.update(int(number) for number in example.input[len("print("):-1].split("+"))
    assert set(operands) == set(range(1, 11))


def test_addition_operands_are_uniform():
    operands = Counter()
    rng = random.Random(5)
    for _ in range(3000):
        text, target = generate_addition(1, rng)
        a, b = (int(number) for number in text[len("print("):-1].split("+"))
        assert target == str(a + b)
        operands.update((a, b))
    assert chi_square(operands, range(1, 11)) < CHI_SQUARE_LIMIT[9], operands


def test_copy_digits_are_uniform_and_may_lead_with_zero():
    digits = Counter()
    rng = random.Random(6)
    strings = [generate_copy(5, rng) for _ in range(2000)]
    for text, target in strings:
        assert text == target and len(text) == 5 and text.isdigit()
        digits.update(text)
    assert chi_square(digits, "0123456789") < CHI_SQUARE_LIMIT[9], digits
    assert any(text.startswith("0") for text, _ in strings)
    assert len(generate_copy(MAX_COPY_LENGTH, rng)[0]) == MAX_COPY_LENGTH


# --- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task, length, nesting", [("programs", 4, 3), ("addition", 5, 1), ("copy", 7, 1)])
def test_same_seed_same_examples_other_seed_other_examples(task, length, nesting):
    first = sample(task, length, nesting, count=50, seed=9, split="val")
    random.seed(1)  # the global generator must not matter
    again = sample(task, length, nesting, count=50, seed=9, split="val")
    random.seed(2)
    other = sample(task, length, nesting, count=50, seed=10, split="val")
    assert first == again
    assert first != other
    assert sample(task, length, nesting, count=20, seed=9, split="val") == first[:20]


def test_sample_draws_like_sample_example_from_a_seeded_generator():
    rng = random.Random(21)
    one_by_one = [sample_example("programs", 3, 2, "test", rng) for _ in range(10)]
    assert sample("programs", 3, 2, count=10, seed=21, split="test") == one_by_one


def test_output_is_pinned_for_seed_zero():
    # Changing the draws changes every data set drawn with a seed: do it on purpose only.
    assert [example.to_dict() for example in sample("programs", 4, 3, count=2, seed=0)] == [
        {"task": "programs", "input": "d=2045\nprint((5195-((d-8970)*9)))",
         "target": "67520", "length": 4, "nesting": 3, "split": "train"},
        {"task": "programs", "input": "print((8595 if 8858<6411 else (1472 if 1132>(3103*14) else 2134)))",
         "target": "2134", "length": 4, "nesting": 3, "split": "train"},
    ]
    assert [(e.input, e.target) for e in sample("addition", 1, count=2, seed=0)] == [
        ("print(1+5)", "6"), ("print(9+8)", "17")]
    assert [(e.input, e.target) for e in sample("copy", 5, count=2, seed=0)] == [
        ("99346", "99346"), ("39755", "39755")]


def test_output_does_not_depend_on_the_string_hash_seed():
    script = ("import json; from ltexec.sampler import sample\n"
              "for task, nesting in (('programs', 4), ('addition', 1), ('copy', 1)):\n"
              "    print(json.dumps([e.to_dict() for e in sample(task, 3, nesting, count=20, seed=7)]))")
    outputs = []
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        outputs.append(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      env=environment, timeout=60, check=True).stdout)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 3


# --- splits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, length, nesting", [("programs", 2, 2), ("addition", 2, 1), ("copy", 3, 1)])
@pytest.mark.parametrize("split", SPLITS)
def test_sample_returns_only_the_requested_split(task, length, nesting, split):
    examples = sample(task, length, nesting, count=100, seed=8, split=split)
    assert all(example.split == split == split_of(example.input, example.target) for example in examples)
    rng = random.Random(8)
    assert split_of(*generate(task, length, nesting, rng)) in SPLITS
    example = sample_example(task, length, nesting, split, rng)
    assert isinstance(example, Example) and example.split == split == split_of(example.input, example.target)


@pytest.mark.parametrize("task, length, nesting, space", [
    ("addition", 1, 1, 100), ("copy", 2, 1, 100), ("copy", 1, 1, 10), ("programs", 1, 1, None)])
def test_splits_are_disjoint_where_collisions_are_likely(task, length, nesting, space):
    drawn = {split: {(e.input, e.target) for e in sample(task, length, nesting, count=600, seed=1, split=split)}
             for split in SPLITS}
    assert all(len(pairs) < 600 for pairs in drawn.values()), "draws repeat at this length"
    train, val, test = drawn.values()
    assert not train & val and not train & test and not val & test
    if space is not None:
        assert len(train | val | test) == space, "together the splits cover every example"


def test_an_unreachable_split_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(sampler, "split_of", lambda input_text, target: "train")
    assert sample_example("copy", 1, 1, "train", random.Random(0)).split == "train"
    with pytest.raises(ValueError, match=r"split 'val' is out of reach for task copy at length 1"):
        sample_example("copy", 1, 1, "val", random.Random(0))
    with pytest.raises(ValueError, match="out of reach"):
        sample("copy", 1, count=1, split="test")


# --- argument checks -----------------------------------------------------------------------------

RNG = random.Random(0)

BAD_CALLS = [
    ("task", lambda: sample("multiply", 3), "addition, copy, programs"),
    ("task", lambda: generate("Programs", 3, 1, RNG), "addition, copy, programs"),
    ("task", lambda: sample_example(None, 3, 1, "train", RNG), "addition, copy, programs"),
    ("split", lambda: sample("copy", 3, split="dev"), "train, val, test"),
    ("split", lambda: sample_example("copy", 3, 1, "validation", RNG), "train, val, test"),
    ("length", lambda: sample("addition", 0), "1..20"),
    ("length", lambda: sample("programs", -3, 2), "1..20"),
    ("length", lambda: sample("programs", MAX_LENGTH + 1, 2), "1..20"),
    ("length", lambda: sample("copy", MAX_COPY_LENGTH + 1), "1..100"),
    ("length", lambda: sample("addition", 2.5), "integer"),
    ("length", lambda: sample("addition", "four"), "integer"),
    ("length", lambda: sample("addition", True), "integer"),
    ("length", lambda: generate_program(0, 1, RNG), "1..20"),
    ("length", lambda: generate_addition(21, RNG), "1..20"),
    ("length", lambda: generate_copy(0, RNG), "1..100"),
    ("length", lambda: generate("copy", None, 1, RNG), "integer"),
    ("nesting", lambda: sample("programs", 3, 0), "1..10"),
    ("nesting", lambda: sample("programs", 3, MAX_NESTING + 1), "1..10"),
    ("nesting", lambda: generate_program(3, 1.0, RNG), "integer"),
    ("nesting", lambda: sample("addition", 3, 2), "applies only to task programs"),
    ("nesting", lambda: generate("copy", 3, 3, RNG), "applies only to task programs"),
    ("nesting", lambda: sample_example("addition", 3, 0, "train", RNG), ">= 1"),
    ("count", lambda: sample("copy", 3, count=-1), ">= 0"),
    ("count", lambda: sample("copy", 3, count=2.0), "integer"),
    ("seed", lambda: sample("copy", 3, seed=-1), ">= 0"),
    ("seed", lambda: sample("copy", 3, seed=0.5), "integer"),
]


@pytest.mark.parametrize("argument, call, allowed", BAD_CALLS,
                         ids=[f"{argument}-{index}" for index, (argument, _, _) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_a_one_line_error_naming_the_argument(argument, call, allowed):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert message.startswith(argument) and allowed in message and "\n" not in message


@pytest.mark.parametrize("call", [lambda: generate_program(3, 2, 42), lambda: generate("copy", 3, 1, None),
                                  lambda: sample_example("addition", 3, 1, "train", random)])
def test_rng_must_be_a_random_generator(call):
    with pytest.raises(TypeError, match="rng must be a random.Random"):
        call()


def test_integer_strings_and_edge_values_are_accepted():
    assert sample("copy", 3, count=0) == []
    assert sample("copy", "3", count="2", seed="5") == sample("copy", 3, count=2, seed=5)
    assert len(sample("programs", MAX_LENGTH, MAX_NESTING, count=2)) == 2


# --- variable names and per-number lengths -------------------------------------

def test_variables_are_the_original_codes_ten_letters_uniformly():
    names = Counter()
    for seed in range(3000):
        text, _ = generate("programs", 2, 3, random.Random(seed))
        names.update(line.split("=", 1)[0] for line in text.splitlines() if "=" in line and "for" not in line)
    assert set(names) == set("abcdefghij")
    total = sum(names.values())
    assert all(abs(count - total / 10) < 5 * (total * 0.1 * 0.9) ** 0.5 for count in names.values())


def test_the_largest_nesting_never_runs_out_of_letters():
    rng = random.Random(5)
    for _ in range(300):
        text, target, operations = sampler._compose_program(1, MAX_NESTING, rng)
        letters = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line and "for" not in line]
        assert len(letters) == len(set(letters)) == operations.count(3) + operations.count(4)


def test_number_length_sets_each_numbers_length_and_the_example_records_the_largest():
    lengths = iter([1, 6] * 1000)
    rng = random.Random(8)
    for _ in range(50):
        example = sample_example("addition", 6, 1, "train", rng, number_length=lambda: next(lengths))
        a, b = example.input[len("print("):-1].split("+")
        assert int(a) <= 10 and int(b) <= 10 ** 6 and example.length == 6
    copies = [sample_example("copy", 9, 1, "train", rng, number_length=lambda: 3) for _ in range(20)]
    assert {len(e.input) for e in copies} == {3} and {e.length for e in copies} == {3}


def test_programs_draw_a_length_for_every_number_multiplier_and_loop_count():
    calls = []

    def one():
        calls.append(1)
        return 1
    rng = random.Random(9)
    for _ in range(300):
        calls.clear()
        text, target, operations = sampler._compose_program(5, 3, rng, one)
        arity = {0: 2, 1: 1, 2: 1, 3: 2, 4: 2, 5: 4}
        fresh = sum(arity[op] for op in operations) - (len(operations) - 1)
        assert len(calls) == fresh + operations.count(1) + operations.count(4)
        assert all(int(number) <= 10 for number in re.findall(r"\d+", text))


@pytest.mark.parametrize("bad, error, message", [
    (lambda: 0, ValueError, "number_length returned 0; it must be an integer in 1..3"),
    (lambda: 4, ValueError, "number_length returned 4"),
    (lambda: 2.0, ValueError, "number_length returned 2.0"),
    (3, TypeError, "number_length must be a function"),
])
def test_a_bad_number_length_is_named(bad, error, message):
    with pytest.raises(error, match=re.escape(message)):
        sample_example("programs", 3, 2, "train", random.Random(0), number_length=bad)
    with pytest.raises(error, match=re.escape(message)):
        generate("addition", 3, 1, random.Random(0), number_length=bad)
