"""Held-out evaluation: teacher-forced character accuracy and greedy exact match.

A model trained in stream mode reads every program right after the previous
example's answer, never from a blank state. To evaluate it on the inputs it was
trained on (``warmup=True``), every evaluated example is preceded by one
unscored example (the previous one in the list), exactly as in the training
stream. A model trained on independent examples starts each one from a zero
state, and so is evaluated without the warm-up example (``warmup=False``).
Each column starts from a zero state.

- Teacher-forced accuracy (the paper's metric): the fraction of answer
  characters, terminator included, whose argmax prediction is right when the
  model is fed the true previous characters.
- Exact match (the critics' metric): the model decodes the whole answer itself,
  feeding back its own characters; an example counts only if every character
  and the terminator are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ltexec import vocab
from ltexec.sampler import Example


@dataclass
class EvalResult:
    """Accuracies over a list of examples, and the decoded answers."""

    char_acc: float
    exact_acc: float
    examples: int
    predictions: list[str] = field(repr=False)


def evaluate(model, examples: Sequence[Example], transform: str = "none", warmup: bool = True,
             batch_size: int = 256) -> EvalResult:
    """Teacher-forced and free-running accuracy of ``model`` on ``examples``."""
    if not examples:
        raise ValueError("evaluate needs at least one example")
    correct = count = exact = 0
    predictions: list[str] = []
    no_prefix = np.zeros(0, dtype=np.int32)
    for start in range(0, len(examples), batch_size):
        chunk = range(start, min(start + batch_size, len(examples)))
        prefixes = [vocab.encode_example(examples[i - 1].input, examples[i - 1].target, transform)[0]
                    if warmup else no_prefix for i in chunk]
        c, n = _teacher_forced(model, [examples[i] for i in chunk], prefixes, transform)
        correct, count = correct + c, count + n
        decoded = _greedy(model, [examples[i] for i in chunk], prefixes, transform)
        predictions.extend(decoded)
        exact += sum(p == examples[i].target + vocab.TERMINATOR for p, i in zip(decoded, chunk))
    return EvalResult(char_acc=correct / count, exact_acc=exact / len(examples),
                      examples=len(examples), predictions=predictions)


def _teacher_forced(model, examples, prefixes, transform) -> tuple[int, int]:
    sequences, answer_rows = [], []
    for example, prefix in zip(examples, prefixes):
        tokens, answer_start = vocab.encode_example(example.input, example.target, transform)
        sequences.append(np.concatenate([prefix, tokens]))
        answer_rows.append(len(prefix) + answer_start - 1)   # row t predicts token t + 1
    steps = max(len(s) for s in sequences) - 1
    x = np.full((steps, len(sequences)), vocab.PAD_ID, dtype=np.int32)
    y = np.full_like(x, vocab.PAD_ID)
    mask = np.zeros(x.shape, dtype=np.float32)
    for b, (seq, first) in enumerate(zip(sequences, answer_rows)):
        x[: len(seq) - 1, b] = seq[:-1]
        y[: len(seq) - 1, b] = seq[1:]
        mask[first: len(seq) - 1, b] = 1.0
    logits, _ = model.forward(x, model.zero_state(len(sequences)))
    predicted = np.asarray(model.backend.to_numpy(logits)).argmax(axis=-1)
    hits = (predicted == y) & (mask > 0)
    return int(hits.sum()), int(mask.sum())


def _greedy(model, examples, prefixes, transform) -> list[str]:
    prompts = [np.concatenate([prefix, vocab.prompt_tokens(example.input, transform)])
               for example, prefix in zip(examples, prefixes)]
    lengths = np.array([len(p) for p in prompts])
    tokens = np.full((lengths.max(), len(prompts)), vocab.PAD_ID, dtype=np.int32)
    for b, prompt in enumerate(prompts):
        tokens[: len(prompt), b] = prompt
    longest_answer = max(len(e.target) for e in examples) + 1
    answers = model.greedy_decode(tokens, lengths, max_answer_len=longest_answer + 1,
                                  stop_id=vocab.TERMINATOR_ID)
    return [vocab.decode(answer) for answer in answers]
