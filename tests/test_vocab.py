"""Vocabulary, encoding, input transforms and the token layout of one example."""

import re
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec import vocab
from ltexec.vocab import (DOUBLE_SEP, END_OF_INPUT, END_OF_INPUT_ID, LINE_SEP, PAD, PAD_ID, SYMBOLS,
                          TERMINATOR, TERMINATOR_ID, TEXT_SYMBOLS, TRANSFORMS, VOCAB_SIZE, answer_mask,
                          decode, encode, encode_example, example_text, prompt_tokens, transform_input)

PROGRAM = "j=8584\nfor x in range(8):j+=920\nb=(1500+j)\nprint((b+7567))"
PROGRAM_OUTPUT = "25011"

input_texts = st.text(alphabet="".join(TEXT_SYMBOLS) + "\n", max_size=60)
targets = st.text(alphabet="".join(TEXT_SYMBOLS), max_size=20)


def test_every_symbol_appears_once_and_pad_is_first():
    assert len(set(SYMBOLS)) == len(SYMBOLS) == VOCAB_SIZE
    assert all(len(symbol) == 1 for symbol in SYMBOLS)
    assert SYMBOLS[0] == PAD and PAD_ID == 0
    assert SYMBOLS[END_OF_INPUT_ID] == END_OF_INPUT == "@"
    assert SYMBOLS[TERMINATOR_ID] == TERMINATOR == "."
    assert (LINE_SEP, DOUBLE_SEP) == ("#", ";")


def test_vocabulary_covers_every_task_character():
    needed = set(string.digits) | set(string.ascii_lowercase) | set(" ()+-*=<>:") | set("#@.;_")
    assert needed == set(SYMBOLS)
    assert not set(TEXT_SYMBOLS) & {PAD, LINE_SEP, END_OF_INPUT, TERMINATOR, DOUBLE_SEP}


def test_program_text_executes_to_its_target():
    # The program used throughout these tests really prints its target.
    printed = []
    exec(PROGRAM, {"print": printed.append})
    assert str(printed[0]) == PROGRAM_OUTPUT


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="".join(SYMBOLS), max_size=200))
def test_encode_decode_round_trip(text):
    ids = encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert [SYMBOLS[i] for i in ids] == list(text)
    assert decode(ids) == text
    assert decode(ids.tolist()) == text


@pytest.mark.parametrize("text, char, position", [
    ("ab!c", "!", 2), ("print(1)\n", "\n", 8), ("Print", "P", 0), ("12é3", "é", 2), ("1,2", ",", 1),
])
def test_encode_names_first_unknown_character_and_position(text, char, position):
    expected = f"text has character {char!r} at position {position},"
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        encode(text)


def test_encode_rejects_non_strings():
    with pytest.raises(ValueError, match="text must be a string"):
        encode(b"12")


def test_decode_rejects_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="ids must be in"):
        decode([1, VOCAB_SIZE])
    with pytest.raises(ValueError, match="ids must be in"):
        decode(np.array([-1, 2]))
    with pytest.raises(ValueError, match="ids must be a 1-D sequence"):
        decode(np.zeros((2, 2), dtype=np.int32))
    assert decode([]) == ""


@pytest.mark.parametrize("transform, expected", [
    ("none", "12#3"), ("reverse", "3#21"), ("double", "12#3;12#3"), ("both", "3#21;3#21"),
])
def test_transform_input_exact_strings(transform, expected):
    assert transform_input("12#3", transform) == expected


def test_transform_rejects_unknown_names():
    with pytest.raises(ValueError, match="^transform must be one of none, reverse, double, both; got 'rev'$"):
        transform_input("123", "rev")
    with pytest.raises(ValueError, match="^transform must be one of"):
        encode_example("1", "1", "Reverse")
    with pytest.raises(ValueError, match="^transform must be one of"):
        prompt_tokens("1", None)


@pytest.mark.parametrize("transform, shown_input", [
    ("none", "j=8584#for x in range(8):j+=920#b=(1500+j)#print((b+7567))"),
    ("reverse", "))7657+b((tnirp#)j+0051(=b#029=+j:)8(egnar ni x rof#4858=j"),
    ("double", "j=8584#for x in range(8):j+=920#b=(1500+j)#print((b+7567));"
               "j=8584#for x in range(8):j+=920#b=(1500+j)#print((b+7567))"),
    ("both", "))7657+b((tnirp#)j+0051(=b#029=+j:)8(egnar ni x rof#4858=j;"
             "))7657+b((tnirp#)j+0051(=b#029=+j:)8(egnar ni x rof#4858=j"),
])
def test_encode_example_layout_for_each_transform(transform, shown_input):
    tokens, first_answer = encode_example(PROGRAM, PROGRAM_OUTPUT, transform)
    assert decode(tokens) == shown_input + "@" + PROGRAM_OUTPUT + "."
    assert first_answer == len(shown_input) + 1
    assert decode(tokens[first_answer:]) == PROGRAM_OUTPUT + "."  # the target is never transformed
    assert tokens[first_answer - 1] == END_OF_INPUT_ID
    assert example_text(PROGRAM, PROGRAM_OUTPUT, transform) == decode(tokens)
    np.testing.assert_array_equal(prompt_tokens(PROGRAM, transform), tokens[:first_answer])


@settings(max_examples=150, deadline=None)
@given(input_texts, targets, st.sampled_from(TRANSFORMS))
def test_encode_example_answer_index_and_mask(input_text, target, transform):
    tokens, first_answer = encode_example(input_text, target, transform)
    shown = transform_input(input_text.replace("\n", LINE_SEP), transform)
    assert decode(tokens) == f"{shown}@{target}."
    assert first_answer == len(shown) + 1
    np.testing.assert_array_equal(answer_mask(tokens), np.arange(tokens.size) >= first_answer)
    assert PAD_ID not in tokens


def test_answer_mask_over_a_stream_of_examples_and_a_cut_end():
    stream, expected = "12@3.45@67.8", "000110001110"
    assert answer_mask(encode(stream)).tolist() == [flag == "1" for flag in expected]
    assert answer_mask(encode("")).tolist() == []


@pytest.mark.parametrize("input_text, target, name, char", [
    ("print(1@2)", "3", "input_text", "@"),
    ("print(1.5)", "1", "input_text", "."),
    ("a=1;print(a)", "1", "input_text", ";"),
    ("x_1=1", "1", "input_text", "_"),
    ("# comment", "1", "input_text", "#"),
    ("print(1)", "1.5", "target", "."),
    ("print(1)", "1\n", "target", "\n"),
    ("print(1)", "A", "target", "A"),
])
def test_example_text_rejects_reserved_and_unknown_characters(input_text, target, name, char):
    for build in (encode_example, example_text):
        with pytest.raises(ValueError, match="^" + re.escape(f"{name} has character {char!r} at position")):
            build(input_text, target)


def test_example_functions_reject_non_strings():
    with pytest.raises(ValueError, match="^target must be a string, got int$"):
        encode_example("print(1)", 1)
    with pytest.raises(ValueError, match="^input_text must be a string, got NoneType$"):
        prompt_tokens(None)
    assert vocab.TRANSFORMS == ("none", "reverse", "double", "both")
