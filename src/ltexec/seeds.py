"""One rule for every random stream a run draws: ``derive_seed(seed, purpose, *level)``.

A run has one user-facing seed, but draws several independent streams from
it: the initial parameters, the training examples, and a fixed evaluation
set per split and level. Each gets its own seed, derived from the run's seed,
a purpose name and any integers that tell its sets apart (a level's length
and nesting), through NumPy's :class:`~numpy.random.SeedSequence`, whose
hashing makes the derived seeds statistically independent of each other and
of nearby run seeds (seed 1's test set shares nothing with seed 2's). The
derivation is platform-independent: the purpose enters as its CRC-32.
"""

from __future__ import annotations

import zlib

import numpy as np

from ltexec.validation import check_int


def derive_seed(seed: int, purpose: str, *level: int) -> int:
    """A seed in [0, 2**63) for the stream ``purpose`` (and ``level``) of the run seeded with ``seed``."""
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty string, got {purpose!r}")
    key = (zlib.crc32(purpose.encode("utf-8")),) + tuple(check_int("level", k, minimum=0) for k in level)
    state = np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
