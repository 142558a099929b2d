"""Example generators for the paper's three tasks and the train/val/test split.

(Being written: the generators below are filled in by the sampler work.)
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

TASKS = ("addition", "copy", "programs")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One example: ``input`` is the text a person would run (real newlines), ``target`` what it prints."""

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
