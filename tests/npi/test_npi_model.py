"""The NPI model and its executor: hand-derived gradients, every backend alike, a call stack that works.

* Gradients: every parameter's, against finite differences in float64
  (``pytest --gradcheck``), on traces whose invocations differ in length (the
  padding and the masks are part of what is checked).
* Backends: the ``cpu`` backend gives the reference's loss and gradients.
* Execution: a scripted model that makes the true trace's decisions must add
  (the executor's call stack, pad actions and stopping are right), and a
  model that never ends, acts off the pad or nests calls forever is stopped
  with the reason, never left looping.
"""

import numpy as np
import pytest
from finite_differences import assert_gradients_match

from ltexec.npi.addition import (ACT, ADD, ADD1, OUT, PROGRAMS, PTR, RIGHT, WRITE, add_digits, addition_trace,
                                 grade_school_steps)
from ltexec.npi.data import batch_invocations
from ltexec.npi.execute import MAX_DEPTH, execute, step_bound
from ltexec.npi.model import PRESETS, NPIConfig, NPIModel
from ltexec.npi.programs import ARG_SLOTS, Call, core_steps_in_order
from ltexec.testing import assert_relative_error_below

TINY = NPIConfig(hidden=3, layers=2, encoder=4, program_embedding=3, key=2)


def tiny_batch():
    invocations = [inv for pair in (("57", "68"), ("3", "9")) for inv in addition_trace(*pair).walk()]
    return batch_invocations(invocations, observation_size=4)


@pytest.mark.gradcheck
def test_every_parameter_gradient_matches_finite_differences():
    model = NPIModel(TINY, backend="numpy", dtype=np.float64, init_scale=0.8, seed=3)
    batch = tiny_batch()
    assert batch.shape[0] > 4 and batch.mask.min() == 0            # sequences of different lengths, padded
    result = model.loss_and_grads(batch)
    assert_gradients_match(lambda: model.loss_and_grads(batch).loss,
                           {name: (model.params[name], result.grads[name]) for name in model.params})


def emulated_cupy(dtype):
    """The CuPy backend with its CUDA kernels on the tests' C++ emulation (skip without g++)."""
    import cuda_emulation
    if cuda_emulation.gxx_missing_reason():
        pytest.skip(cuda_emulation.gxx_missing_reason())
    from ltexec.backends.cupy.backend import CupyBackend
    return CupyBackend(dtype, device=cuda_emulation.EmulatedDevice())


@pytest.mark.parametrize("backend", ["cpu", "cupy-emulated"])
def test_other_backends_give_the_reference_loss_and_gradients(backend):
    batch = tiny_batch()
    other = emulated_cupy(np.float64) if backend == "cupy-emulated" else backend
    results = [NPIModel(TINY, backend=name, dtype=np.float64, init_scale=0.8, seed=3).loss_and_grads(batch)
               for name in ("numpy", other)]
    assert results[1].loss == pytest.approx(results[0].loss, rel=1e-12)
    for name, grad in results[0].grads.items():
        assert_relative_error_below(name, results[1].grads[name], grad, 1e-10)
    assert results[0].counts == results[1].counts


def test_counts_and_shapes():
    model = NPIModel(PRESETS["small"], backend="numpy", seed=0)
    batch = tiny_batch()
    result = model.loss_and_grads(batch)
    assert result.counts["steps"] == batch.steps and result.counts["calls"] == int(batch.call_mask.sum())
    assert 0 <= result.counts["args_correct"] <= ARG_SLOTS * result.counts["calls"]
    assert {name: grad.shape for name, grad in result.grads.items()} == model.param_shapes()
    assert np.isfinite(result.loss) and result.loss > 0


def test_parameters_round_trip_and_bad_ones_are_named():
    model = NPIModel(TINY, backend="numpy", seed=1)
    other = NPIModel(TINY, backend="numpy", seed=2)
    other.load_params(model.state_dict())
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], array)
    arrays = model.state_dict()
    arrays["keys"] = arrays["keys"][:, :-1]
    with pytest.raises(ValueError, match=r"parameter keys has shape \(2, 4\), expected \(2, 5\)"):
        other.load_params(arrays)
    with pytest.raises(ValueError, match="hidden must be an integer >= 1, got 0"):
        NPIConfig(hidden=0)


# ------------------------------------------------------------------ execution

class Scripted:
    """Stands in for NPIModel.forward: each problem's core steps make the decisions of ``script[b]`` in order."""

    def __init__(self, model, scripts):
        self.model, self.scripts, self.position = model, scripts, [0] * len(scripts)

    def forward(self, observation, args, program, state, training):
        # the executor batches the active problems in order; the scripts of finished ones are used up
        active = [b for b, script in enumerate(self.scripts) if self.position[b] < len(script)][:program.shape[1]]
        B, P = program.shape[1], len(PROGRAMS)
        end, scores = np.zeros((1, B, 2)), np.zeros((1, B, P))
        arg_logits = [np.zeros((1, B, 10)) for _ in range(ARG_SLOTS)]
        for j, b in enumerate(active):
            made = self.scripts[b][self.position[b]]
            self.position[b] += 1
            if made is None:
                end[0, j, 1] = 1
            else:
                end[0, j, 0], scores[0, j, made.program] = 1, 1
                for slot, value in enumerate(made.args):
                    arg_logits[slot][0, j, value] = 1
        return (end, scores, arg_logits), state, None

    def __getattr__(self, name):
        return getattr(self.model, name)


def scripted(problems, decisions):
    return Scripted(NPIModel(PRESETS["small"], backend="numpy", seed=0), decisions)


def test_a_model_making_the_true_decisions_adds_with_its_call_stack():
    problems = [("57", "68"), ("999", "1"), ("0", "0"), ("123456789", "987654321")]
    truths = [core_steps_in_order(addition_trace(a, b), PROGRAMS) for a, b in problems]
    runs = execute(scripted(problems, [[step.made for step in truth] for truth in truths]), problems, keep_log=True)
    for run, truth, (a, b) in zip(runs, truths, problems):
        assert run.correct and run.failure is None and run.output == add_digits(a, b)
        assert run.log == truth == list(grade_school_steps(a, b)) and run.steps == len(truth)
        assert run.first_divergence is None


def test_a_wrong_decision_is_located_at_the_first_step_off_the_true_trace():
    truth = core_steps_in_order(addition_trace("57", "68"), PROGRAMS)
    decisions = [step.made for step in truth]
    decisions[0] = Call(ADD1)                                     # the same first call ...
    wrong = next(t for t, step in enumerate(truth) if step.made == Call(ACT, (WRITE, OUT, 5)))
    decisions[wrong] = Call(ACT, (WRITE, OUT, 4))                 # ... then a wrong digit
    [run] = execute(scripted([("57", "68")], [decisions]), [("57", "68")], keep_log=True)
    assert not run.correct and run.output.endswith("4") and run.first_divergence == wrong


@pytest.mark.parametrize("decision, reason", [
    (Call(ACT, (WRITE, OUT, 1)), "reached the step bound"),                  # never ends
    (Call(ACT, (PTR, OUT, RIGHT)), "the pad refused ACT(1, 3, 1): PTR would move the out pointer off the pad"),
    (Call(ADD), f"calls nested deeper than {MAX_DEPTH}"),                    # recursion without end
])
def test_a_run_that_cannot_finish_is_stopped_with_the_reason(decision, reason):
    bound = step_bound("12", "34")
    [run] = execute(scripted([("12", "34")], [[decision] * (bound + 5)]), [("12", "34")])
    assert not run.correct and run.failure.startswith(reason) and run.steps <= bound


def test_an_untrained_model_runs_to_an_end_and_many_problems_run_at_once():
    model = NPIModel(PRESETS["small"], backend="numpy", seed=4)
    problems = [("1", "2"), ("99", "1"), ("5" * 30, "7" * 12)]
    runs = execute(model, problems, keep_log=True)
    assert len(runs) == 3
    for run, (a, b) in zip(runs, problems):
        assert run.steps <= step_bound(a, b) and (run.correct or run.first_divergence is not None)
