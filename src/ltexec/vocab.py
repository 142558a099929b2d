"""Character vocabulary, input transforms and the token layout of one example.

The model reads a program one character at a time and predicts what it prints, so
the text of every task must map onto one small, fixed alphabet. One example becomes
the token sequence

    transform(input, newlines written as LINE_SEP) + END_OF_INPUT + target + TERMINATOR

and only the target characters and the terminator are scored: the model must also
predict where its answer ends. The special symbols never occur in task text (this is
checked), which is what lets ``answer_mask`` find the scored positions of any stream
of whole examples from the tokens alone.

The input transforms are the paper's two tricks, applied to the model's input only:
reversing the input, and presenting it twice (``123;123``).
"""

from __future__ import annotations

import re

import numpy as np

from ltexec.validation import check_choice

PAD = "_"
LINE_SEP = "#"
END_OF_INPUT = "@"
TERMINATOR = "."
DOUBLE_SEP = ";"

#: Characters that task text (program inputs and printed targets) may contain.
TEXT_SYMBOLS = tuple("0123456789abcdefghijklmnopqrstuvwxyz ()+-*=<>:")
#: Structural symbols: never part of task text.
SPECIAL_SYMBOLS = (LINE_SEP, END_OF_INPUT, TERMINATOR, DOUBLE_SEP)
#: The whole vocabulary in id order; PAD has id 0.
SYMBOLS = (PAD,) + TEXT_SYMBOLS + SPECIAL_SYMBOLS
VOCAB_SIZE = len(SYMBOLS)
PAD_ID = SYMBOLS.index(PAD)
LINE_SEP_ID = SYMBOLS.index(LINE_SEP)
END_OF_INPUT_ID = SYMBOLS.index(END_OF_INPUT)
TERMINATOR_ID = SYMBOLS.index(TERMINATOR)
DOUBLE_SEP_ID = SYMBOLS.index(DOUBLE_SEP)

TRANSFORMS = ("none", "reverse", "double", "both")

_ID_OF_CHAR = {symbol: index for index, symbol in enumerate(SYMBOLS)}
_ID_OF_BYTE = np.full(256, -1, dtype=np.int32)
for _symbol, _index in _ID_OF_CHAR.items():
    _ID_OF_BYTE[ord(_symbol)] = _index
_BYTE_OF_ID = np.frombuffer("".join(SYMBOLS).encode("ascii"), dtype=np.uint8)

_TEXT_CLASS = "".join(re.escape(symbol) for symbol in TEXT_SYMBOLS)
_NOT_INPUT_TEXT = re.compile(f"[^{_TEXT_CLASS}\n]")
_NOT_TARGET_TEXT = re.compile(f"[^{_TEXT_CLASS}]")


def encode(text: str) -> np.ndarray:
    """Token ids (int32) of ``text``; every character must be in ``SYMBOLS``."""
    _check_str("text", text)
    return _encode(text, "text")


def decode(ids) -> str:
    """The text of a 1-D sequence of token ids."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return ""
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D sequence of integers, got shape {ids.shape} of {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= VOCAB_SIZE:
        bad = low if low < 0 else high
        raise ValueError(f"ids must be in 0..{VOCAB_SIZE - 1}, got {bad}")
    return _BYTE_OF_ID[ids].tobytes().decode("ascii")


def transform_input(text: str, transform: str) -> str:
    """The model's view of an input: as is, reversed, doubled (``a;a``) or reversed then doubled."""
    _check_str("text", text)
    check_choice("transform", transform, TRANSFORMS)
    return _transform(text, transform)


def example_text(input_text: str, target: str, transform: str = "none") -> str:
    """One example as the text of its token sequence: ``transform(input) + "@" + target + "."``."""
    check_choice("transform", transform, TRANSFORMS)
    _check_task_text("input_text", input_text, _NOT_INPUT_TEXT)
    _check_task_text("target", target, _NOT_TARGET_TEXT)
    return _transform(input_text.replace("\n", LINE_SEP), transform) + END_OF_INPUT + target + TERMINATOR


def encode_example(input_text: str, target: str, transform: str = "none") -> tuple[np.ndarray, int]:
    """The example's tokens and the index of its first answer token (the one after ``@``)."""
    text = example_text(input_text, target, transform)
    return _encode(text, "example"), len(text) - len(target) - 1


def prompt_tokens(input_text: str, transform: str = "none") -> np.ndarray:
    """The tokens a greedy decoder is given: the transformed input up to and including ``@``."""
    return _encode(_prompt_text(input_text, transform), "input_text")


def answer_mask(tokens) -> np.ndarray:
    """Boolean mask of answer positions (target characters and terminators) in a stream of examples.

    The stream must start at the beginning of an example; it may end anywhere. A position
    is an answer position when the last structural marker before it is ``@`` rather than ``.``.
    """
    tokens = np.asarray(tokens)
    mask = np.zeros(tokens.shape, dtype=bool)
    if tokens.size == 0:
        return mask
    is_marker = (tokens == END_OF_INPUT_ID) | (tokens == TERMINATOR_ID)
    last_marker = np.maximum.accumulate(np.where(is_marker, np.arange(tokens.size), -1))
    inside_after = (last_marker >= 0) & (tokens[np.maximum(last_marker, 0)] == END_OF_INPUT_ID)
    mask[1:] = inside_after[:-1]
    return mask


def _prompt_text(input_text: str, transform: str) -> str:
    check_choice("transform", transform, TRANSFORMS)
    _check_task_text("input_text", input_text, _NOT_INPUT_TEXT)
    return _transform(input_text.replace("\n", LINE_SEP), transform) + END_OF_INPUT


def _transform(text: str, transform: str) -> str:
    if transform in ("reverse", "both"):
        text = text[::-1]
    if transform in ("double", "both"):
        text = text + DOUBLE_SEP + text
    return text


def _encode(text: str, name: str) -> np.ndarray:
    if text.isascii():
        ids = _ID_OF_BYTE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        if ids.size == 0 or ids.min() >= 0:
            return ids
    position = next(index for index, char in enumerate(text) if char not in _ID_OF_CHAR)
    raise ValueError(f"{name} has character {text[position]!r} at position {position}, "
                     "which is not in the vocabulary")


def _check_task_text(name: str, text: str, not_allowed: re.Pattern) -> None:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}")
    found = not_allowed.search(text)
    if found is None:
        return
    char, position = found.group(), found.start()
    why = "a reserved symbol" if char in _ID_OF_CHAR else "not in the vocabulary"
    raise ValueError(f"{name} has character {char!r} at position {position}, which is {why}")


def _check_str(name: str, value) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
