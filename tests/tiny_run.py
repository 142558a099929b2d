"""A tiny training configuration for the tests that need a real run, and a reader for what it writes."""

import json

from ltexec.checkpoint import METRICS_NAME

TINY = dict(task="addition", length=2, hidden=16, layers=1, batch=4, window=12, backend="numpy",
            eval_every=5, eval_examples=8, seed=3)


def quiet(_line):
    pass


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / METRICS_NAME).read_text().splitlines()]
