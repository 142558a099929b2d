"""Examples into the (time, batch) token arrays the LSTM trains and is evaluated on.

Training is next-character prediction with teacher forcing: at row ``t`` the model reads
``x[t]`` and is trained to predict ``y[t]``, the token after it. Only labels that are
answer characters or the terminator count (``mask``), so the model is never scored
on guessing the program itself.

Two layouts:

* ``StreamBatcher`` (training, as in the paper's original code): each batch column is an
  endless stream of examples packed back to back, cut into windows of ``window`` rows.
  Consecutive windows continue every stream exactly where the last stopped, so the model
  can carry its hidden state from one window to the next.
* ``pack_examples`` / ``pack_prompts`` (evaluation): one example per column, starting
  from a zero state, padded with PAD to the longest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from collections.abc import Sequence

import numpy as np

from ltexec.sampler import Example
from ltexec.validation import check_choice, check_int
from ltexec.vocab import (PAD_ID, TRANSFORMS, VOCAB_SIZE, answer_mask, encode, encode_example,
                          example_text, prompt_tokens)


@dataclass
class Window:
    """One training window: ``x``, ``y`` (T, B) int32 tokens and ``mask`` (T, B) float32."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


@dataclass
class Batch:
    """Independent examples, one per column, padded with PAD; padding is masked out.

    ``answer_start[b]`` is the row at which ``x[:, b]`` is ``@``, where the first
    answer character is predicted.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    answer_start: np.ndarray
    targets: list[str]


class StreamBatcher:
    """Endless back-to-back example streams, one per batch column, served as (window, batch) arrays.

    Window ``k`` holds tokens ``k*window .. (k+1)*window - 1`` of every column's stream in
    ``x`` and the tokens one further on in ``y``. Whenever a column holds fewer than
    ``window + 1`` unread tokens, it draws examples from ``source`` until it has enough;
    columns draw in order 0..batch-1, so a seeded ``source`` gives reproducible windows.
    ``state_dict`` saves the unread tokens; the state of ``source`` itself is the caller's
    to save.
    """

    def __init__(self, source: Callable[[], Example], batch: int, window: int, transform: str = "none"):
        if not callable(source):
            raise ValueError(f"source must be a callable returning Examples, got {type(source).__name__}")
        self.source = source
        self.batch = check_int("batch", batch, minimum=1)
        self.window = check_int("window", window, minimum=1)
        self.transform = check_choice("transform", transform, TRANSFORMS)
        self.examples_used = 0
        # Unread tokens of column c are _tokens[c, _start:_end[c]], with their answer flags.
        self._tokens = np.full((self.batch, 2 * self.window + 256), PAD_ID, dtype=np.int32)
        self._answer = np.zeros(self._tokens.shape, dtype=bool)
        self._start = 0
        self._end = np.zeros(self.batch, dtype=np.int64)

    def next_window(self) -> Window:
        """The next ``window`` rows of every column's stream."""
        first, rows = self._start, self.window
        short = np.flatnonzero(self._end - first < rows + 1)
        if short.size:
            self._refill(short)
            first = self._start
        # Copies (C order), never views: the buffers are overwritten by later windows.
        x = self._tokens[:, first:first + rows].T.copy()
        y = self._tokens[:, first + 1:first + rows + 1].T.copy()
        mask = self._answer[:, first + 1:first + rows + 1].T.astype(np.float32, order="C")
        self._start = first + rows
        return Window(x, y, mask)

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Every column's unread tokens and answer flags (padded to the longest), as arrays and ints."""
        lengths = self._end - self._start
        width = int(lengths.max())
        tokens = self._tokens[:, self._start:self._start + width].copy()
        answer = self._answer[:, self._start:self._start + width].copy()
        unread = np.arange(width) < lengths[:, None]
        tokens[~unread] = PAD_ID
        answer[~unread] = False
        return {
            "pending_tokens": tokens,
            "pending_answer": answer,
            "pending_lengths": lengths.copy(),
            "examples_used": self.examples_used,
            "batch": self.batch,
            "transform": TRANSFORMS.index(self.transform),
        }

    def load_state_dict(self, state) -> None:
        """Resume from ``state_dict()`` output (also after a round trip through ``np.savez``/``np.load``)."""
        missing = [key for key in ("pending_tokens", "pending_answer", "pending_lengths",
                                   "examples_used", "batch", "transform") if key not in state]
        if missing:
            raise ValueError(f"state is missing {', '.join(missing)}")
        if int(state["batch"]) != self.batch:
            raise ValueError(f"state is for batch {int(state['batch'])}, this batcher has batch {self.batch}")
        code = int(state["transform"])
        transform = TRANSFORMS[code] if 0 <= code < len(TRANSFORMS) else f"code {code}"
        if transform != self.transform:
            raise ValueError(f"state is for transform {transform!r}, this batcher has {self.transform!r}")
        tokens = np.asarray(state["pending_tokens"])
        answer = np.asarray(state["pending_answer"], dtype=bool)
        lengths = np.asarray(state["pending_lengths"]).astype(np.int64)
        if (tokens.ndim != 2 or tokens.shape[0] != self.batch or answer.shape != tokens.shape
                or lengths.shape != (self.batch,)):
            raise ValueError(f"state arrays have inconsistent shapes: pending_tokens {tokens.shape}, "
                             f"pending_answer {answer.shape}, pending_lengths {lengths.shape}")
        if lengths.min() < 0 or lengths.max() > tokens.shape[1]:
            raise ValueError(f"state pending_lengths must be in 0..{tokens.shape[1]}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
            raise ValueError(f"state pending_tokens must be token ids in 0..{VOCAB_SIZE - 1}")
        width = max(tokens.shape[1], 2 * self.window + 256)
        self._tokens = np.full((self.batch, width), PAD_ID, dtype=np.int32)
        self._answer = np.zeros((self.batch, width), dtype=bool)
        self._tokens[:, :tokens.shape[1]] = tokens
        self._answer[:, :tokens.shape[1]] = answer
        self._start = 0
        self._end = lengths
        self.examples_used = int(state["examples_used"])

    def _refill(self, columns: np.ndarray) -> None:
        """Append whole examples to each of ``columns`` until it holds ``window + 1`` unread tokens."""
        self._drop_read()
        texts, run_lengths = [], []
        for column in columns.tolist():
            unread, run = int(self._end[column]), 0
            while unread + run < self.window + 1:
                text = example_text(*_input_and_target(self.source()), self.transform)
                texts.append(text)
                run += len(text)
            run_lengths.append(run)
        self.examples_used += len(texts)
        tokens = encode("".join(texts))
        answer = answer_mask(tokens)
        run_lengths = np.asarray(run_lengths, dtype=np.int64)
        new_end = self._end[columns] + run_lengths
        self._reserve(int(new_end.max()))
        # Token i of the joined text lands in its column's row, after that column's unread tokens:
        # flat index = row start + column end + (i - offset of the column's run in the joined text).
        run_offsets = np.cumsum(run_lengths) - run_lengths
        run_origin = columns * self._tokens.shape[1] + self._end[columns] - run_offsets
        flat = np.repeat(run_origin, run_lengths) + np.arange(tokens.size)
        self._tokens.ravel()[flat] = tokens
        self._answer.ravel()[flat] = answer
        self._end[columns] = new_end

    def _drop_read(self) -> None:
        """Shift every column left so that its first unread token is at index 0."""
        if self._start == 0:
            return
        keep = int(self._end.max()) - self._start
        self._tokens[:, :keep] = self._tokens[:, self._start:self._start + keep]
        self._answer[:, :keep] = self._answer[:, self._start:self._start + keep]
        self._end -= self._start
        self._start = 0

    def _reserve(self, width: int) -> None:
        """Grow the column buffers to hold at least ``width`` tokens."""
        if width <= self._tokens.shape[1]:
            return
        width = max(width, 2 * self._tokens.shape[1])
        tokens = np.full((self.batch, width), PAD_ID, dtype=np.int32)
        answer = np.zeros((self.batch, width), dtype=bool)
        tokens[:, :self._tokens.shape[1]] = self._tokens
        answer[:, :self._answer.shape[1]] = self._answer
        self._tokens, self._answer = tokens, answer


def pack_examples(examples: Sequence[Example], transform: str = "none") -> Batch:
    """One example per column from a zero state, padded with PAD to the longest sequence."""
    examples = _non_empty("examples", examples)
    check_choice("transform", transform, TRANSFORMS)
    encoded = [encode_example(*_input_and_target(example), transform) for example in examples]
    rows = max(tokens.size for tokens, _ in encoded) - 1
    x = np.full((rows, len(encoded)), PAD_ID, dtype=np.int32)
    y = np.full((rows, len(encoded)), PAD_ID, dtype=np.int32)
    mask = np.zeros((rows, len(encoded)), dtype=np.float32)
    for column, (tokens, first_answer) in enumerate(encoded):
        steps = tokens.size - 1
        x[:steps, column] = tokens[:-1]
        y[:steps, column] = tokens[1:]
        mask[first_answer - 1:steps, column] = 1.0
    answer_start = np.array([first_answer - 1 for _, first_answer in encoded], dtype=np.int64)
    return Batch(x, y, mask, answer_start, [example.target for example in examples])


def pack_prompts(examples: Sequence[Example], transform: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Greedy-decoding prompts: tokens (T_max, B) int32 padded with PAD, and each prompt's length (B,)."""
    examples = _non_empty("examples", examples)
    check_choice("transform", transform, TRANSFORMS)
    prompts = [prompt_tokens(_input_and_target(example)[0], transform) for example in examples]
    lengths = np.array([prompt.size for prompt in prompts], dtype=np.int64)
    tokens = np.full((int(lengths.max()), len(prompts)), PAD_ID, dtype=np.int32)
    for column, prompt in enumerate(prompts):
        tokens[:prompt.size, column] = prompt
    return tokens, lengths


def _input_and_target(example) -> tuple[str, str]:
    try:
        return example.input, example.target
    except AttributeError:
        raise ValueError(f"expected an Example with input and target, got {type(example).__name__}") from None


def _non_empty(name: str, items: Sequence) -> list:
    items = list(items)
    if not items:
        raise ValueError(f"{name} must contain at least one example")
    return items
