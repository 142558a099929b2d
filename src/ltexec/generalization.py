"""Generalization beyond the training target: a trained run measured on longer and deeper inputs.

The paper evaluates every model only at the length and nesting it was trained
for; its section 8 asks how far the learned procedure carries beyond them.
:func:`evaluate_beyond` loads a run's checkpoint and measures the same two
accuracies (teacher-forced characters, greedy exact match) on fresh test
examples at ``length + k`` and, for programs, ``nesting + k``.
"""

from __future__ import annotations

from ltexec.checkpoint import arrays_under, read_checkpoint, recorded_backend_options
from ltexec.config import TrainConfig, build_model
from ltexec.evaluation import evaluate
from ltexec.model import LSTMModel
from ltexec.sampler import sample
from ltexec.seeds import derive_seed
from ltexec.validation import check_int


def beyond_levels(task: str, length: int, nesting: int, offsets) -> list[dict]:
    """The levels past a target: ``length + k`` for every task, and ``nesting + k`` for programs."""
    levels = []
    for k in offsets:
        check_int("beyond offsets", k, 1)
        levels.append({"offset": f"length+{k}", "length": length + k, "nesting": nesting})
    if task == "programs":
        levels += [{"offset": f"nesting+{k}", "length": length, "nesting": nesting + k} for k in offsets]
    return levels


def load_trained_model(run_dir, backend=None) -> tuple[LSTMModel, TrainConfig]:
    """The model and configuration of the checkpoint in ``run_dir``.

    ``backend``: a name or Backend instance to load it on (default: the run's
    backend); by name, with the backend choices the run recorded where they apply.
    """
    arrays, meta, config = read_checkpoint(run_dir)
    name = config.backend if backend is None else backend
    options = recorded_backend_options(meta, name) if isinstance(name, str) else {}
    model = build_model(config, backend, **options)
    model.load_params(arrays_under(arrays, "param"))
    return model, config


def evaluate_beyond(run_dir, offsets=(1, 2), examples: int | None = None, backend=None) -> list[dict]:
    """Accuracy of the run in ``run_dir`` at each level of :func:`beyond_levels`, one dict per level.

    ``examples`` test examples per level (default: the run's ``eval_examples``),
    drawn from a seed derived from the run's, so a re-evaluation gives the same figures.
    """
    model, config = load_trained_model(run_dir, backend)
    count = config.eval_examples if examples is None else check_int("examples", examples, 1)
    results = []
    for level in beyond_levels(config.task, config.length, config.nesting, offsets):
        seed = derive_seed(config.seed, "beyond", level["length"], level["nesting"])
        test = sample(config.task, level["length"], level["nesting"], count=count, seed=seed, split="test")
        result = evaluate(model, test, config.transform, warmup=config.warmup)
        results.append({**level, "teacher_forced_acc": result.char_acc, "exact_match_acc": result.exact_acc})
    return results
