"""How far a trained NPI adds: exact match by number of digits, per-step accuracies, where runs go wrong.

For a number of digits d, the held-out problems have one operand of exactly d
digits and the other at most as long (their own seeded stream: no training
step draws them). The model runs each by itself (:func:`~ltexec.npi.execute.execute`);
exact match is the share whose output row is the sum. The per-step accuracies
(end flag, next program, arguments) are teacher-forced on the same problems'
true traces, so they say which decision fails, and for each wrong run the
first core step where it left the true trace is kept.
"""

from __future__ import annotations

import statistics
from collections import Counter

from ltexec.npi.addition import PROGRAMS, addition_trace
from ltexec.npi.data import batch_invocations
from ltexec.npi.execute import execute
from ltexec.npi.programs import ARG_SLOTS
from ltexec.npi.train import NPITrainConfig, OperandStream, long_and_short
from ltexec.seeds import derive_seed
from ltexec.validation import check_int


def evaluation_digits(max_digits: int) -> list[int]:
    """Every training length, then 2N, 5N, 100 and 1,000 digits (3,000 is asked for apart: it takes minutes)."""
    beyond = [2 * max_digits, 5 * max_digits, 100, 1000]
    return list(range(1, max_digits + 1)) + sorted({d for d in beyond if d > max_digits})


def problems_of(config: NPITrainConfig, digits: int, count: int) -> list[tuple[str, str]]:
    """``count`` held-out problems of ``digits`` digits (see the module docstring), the same for every call."""
    stream = OperandStream(digits, derive_seed(config.seed, "npi evaluation", digits))
    return [stream.problem(digits) for _ in range(check_int("count", count, minimum=1))]


def teacher_forced(model, problems) -> dict:
    """Per-step accuracies of ``model`` on the true traces of ``problems``: end, program, arguments (all slots)."""
    totals = Counter()
    for start in range(0, len(problems), 16):
        invocations = [inv for a, b in problems[start:start + 16] for inv in addition_trace(a, b).walk()]
        for group in long_and_short(invocations):
            if group:
                totals.update(model.counts(batch_invocations(group, len(PROGRAMS) - 1)))
    calls = max(totals["calls"], 1)
    return {"end_acc": totals["end_correct"] / max(totals["steps"], 1),
            "program_acc": totals["program_correct"] / calls,
            "args_acc": totals["args_correct"] / (ARG_SLOTS * calls)}


def exact_by_digits(model, config: NPITrainConfig, digits: list[int], count: int, per_step: bool = True,
                    log=None) -> dict[str, dict]:
    """For each number of digits: exact match, per-step accuracies, why runs failed, where they left the trace."""
    results = {}
    for d in digits:
        problems = problems_of(config, d, count)
        runs = execute(model, problems)
        wrong = [run for run in runs if not run.correct]
        result = {"exact": sum(run.correct for run in runs) / len(runs), "count": len(runs),
                  "failures": dict(Counter(run.failure or "wrong sum" for run in wrong)),
                  "first_divergence_median": statistics.median(run.first_divergence for run in wrong)
                  if wrong else None,
                  "core_steps_median": statistics.median(run.steps for run in runs)}
        if per_step:
            result.update(teacher_forced(model, problems[:min(count, 20)]))
        results[str(d)] = result
        if log is not None:
            log(f"  {d:>5} digits: exact {100 * result['exact']:5.1f}% of {len(runs)}"
                + (f", first off the trace at step {result['first_divergence_median']:g} (median)" if wrong else ""))
    return results
