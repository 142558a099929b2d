"""Trying a trained run: its answer to a program, how sure it is of each character, and whether it is right.

The model reads a program exactly as evaluation gives it one: the run's input
transform, and, for a run trained in stream mode, a preceding unscored
example (see :mod:`ltexec.evaluation`), because such a model has only ever
read a program right after another example's answer, never from a blank
state. The preceding example is the same for every program: one fixed test
example of the run's task at its target length and nesting, so an answer does
not depend on which other programs are asked alongside it.

Decoding is greedy, as in evaluation, and keeps the softmax probability of
every character chosen. The true output comes from
:func:`ltexec.interpret.task_output`, which never runs the text.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np

from ltexec import interpret, vocab
from ltexec.config import TrainConfig
from ltexec.sampler import sample
from ltexec.seeds import derive_seed

_READABLE = set(vocab.TEXT_SYMBOLS) | {"\n"}


@dataclass
class Prediction:
    """The model's answer to one program, and the truth when the program is one of the run's task."""

    program: str
    answer: str
    """The characters the model wrote before its terminator (or before the length limit)."""
    finished: bool
    """Whether the model ended its answer with the terminator within the length limit."""
    probabilities: list[tuple[str, float]]
    """Every character the model chose, the terminator included, with its probability."""
    truth: str | None
    """What the program prints, or None when it is not a program of the run's task."""
    no_truth: str | None
    """Why ``truth`` is None."""

    @property
    def correct(self) -> bool | None:
        """Whether the answer is exactly the truth, terminator included; None without a truth."""
        return None if self.truth is None else self.finished and self.answer == self.truth

    def to_dict(self) -> dict:
        return {"program": self.program, "answer": self.answer, "finished": self.finished,
                "probabilities": [list(pair) for pair in self.probabilities], "truth": self.truth,
                "correct": self.correct, "no_truth": self.no_truth}


def split_programs(text: str) -> list[str]:
    """The blank-line-separated blocks of ``text`` (lines of only spaces count as blank)."""
    blocks, lines = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            lines.append(line)
        elif lines:
            blocks.append("\n".join(lines))
            lines = []
    return blocks


def clean_program(text: str, number: int) -> str:
    """Program ``number`` (counted from 1) without trailing spaces, outer blank lines or common indentation.

    Raises ValueError if it is empty or has a character the model cannot read.
    """
    program = textwrap.dedent("\n".join(line.rstrip() for line in text.splitlines())).strip("\n")
    if not program:
        raise ValueError(f"program {number} is empty")
    bad = sorted(set(program) - _READABLE)
    if bad:
        shown = program if len(program) <= 60 else program[:57] + "..."
        what = "character" if len(bad) == 1 else "characters"
        raise ValueError(f"program {number} {shown!r} has {what} {', '.join(map(repr, bad))} outside the "
                         "model's vocabulary (digits, a-z, space, newline and ()+-*=<>:)")
    return program


def warmup_prefix(config: TrainConfig) -> np.ndarray:
    """The tokens read before every program: one fixed example for a stream-mode run, none otherwise."""
    if not config.warmup:
        return np.zeros(0, dtype=np.int32)
    seed = derive_seed(config.seed, "predict")
    example = sample(config.task, config.length, config.nesting, count=1, seed=seed, split="test")[0]
    return vocab.encode_example(example.input, example.target, config.transform)[0]


def decode_with_probabilities(model, prompt, max_answer_len: int) -> tuple[list[int], list[float]]:
    """Greedy decoding of one prompt from a zero state, with the probability of each chosen id.

    The same ids as :meth:`~ltexec.model.LSTMModel.greedy_decode`: the model
    reads the prompt, then its own argmax, until it writes the terminator or
    ``max_answer_len`` ids.
    """
    logits, state = model.forward(np.asarray(prompt)[:, None], None)
    ids, probabilities = [], []
    while len(ids) < max_answer_len:
        last = logits[-1, 0].astype(np.float64)
        p = np.exp(last - last.max())
        p /= p.sum()
        chosen = int(p.argmax())
        ids.append(chosen)
        probabilities.append(float(p[chosen]))
        if chosen == vocab.TERMINATOR_ID:
            break
        logits, state = model.forward(np.array([[chosen]]), state)
    return ids, probabilities


def predict(model, config: TrainConfig, programs: list[str]) -> list[Prediction]:
    """The answer of ``model`` (trained as ``config`` says) to each program (as :func:`clean_program` returns it)."""
    prefix = warmup_prefix(config)
    predictions = []
    for program in programs:
        try:
            truth, no_truth = interpret.task_output(config.task, program), None
        except ValueError as error:
            truth, no_truth = None, str(error)
        # Evaluation allows len(target) + 2 ids; an unknown target is bounded by the program,
        # since no program of the tasks prints more characters than it has.
        limit = max(len(program), len(truth or "")) + 2
        prompt = np.concatenate([prefix, vocab.prompt_tokens(program, config.transform)])
        ids, probabilities = decode_with_probabilities(model, prompt, limit)
        chars = vocab.decode(np.array(ids))
        finished = chars.endswith(vocab.TERMINATOR)
        predictions.append(Prediction(program, chars.removesuffix(vocab.TERMINATOR), finished,
                                      list(zip(chars, probabilities)), truth, no_truth))
    return predictions


def format_prediction(prediction: Prediction) -> str:
    """The program, then ``answer:`` with each character's probability, then ``truth:`` and right/wrong."""
    p = prediction
    answer = p.answer or "(none)"
    width = max(len(answer), len(p.truth or ""))
    chars = " ".join(f"{char}:{probability:.2f}" for char, probability in p.probabilities)
    ending = "" if p.finished else f"  (no terminator within {len(p.probabilities)} characters)"
    lines = [p.program, f"answer: {answer:<{width}}  {chars}{ending}"]
    if p.truth is None:
        lines.append(f"truth:  unknown ({p.no_truth})")
    else:
        lines.append(f"truth:  {p.truth:<{width}}  {'right' if p.correct else 'wrong'}")
    return "\n".join(lines)
