"""The reporter: the lines a run prints for known events, and the live line on a terminal only."""

import io

import pytest

from ltexec.config import TrainConfig
from ltexec.evaluation import EvalResult
from ltexec.progress import Reporter, TrainingFigures
from ltexec.sampler import Example

RECORD = {"step": 1500, "elapsed_s": 90.0, "chars_per_s": 12345.6, "loss": 0.51234, "lr": 0.5, "level": [2, 1],
          "train_char_acc": 0.9, "val_char_acc": 0.955, "val_exact_acc": 0.5, "test_char_acc": 0.8,
          "test_exact_acc": 0.25, "event": "none"}


def reporter() -> tuple[Reporter, list[str]]:
    lines = []
    return Reporter(lines.append), lines


def test_evaluation_line_shows_the_record_and_its_event():
    report, lines = reporter()
    report.evaluation(RECORD, (3, 1), (2, 1), 0.5)
    report.evaluation({**RECORD, "event": "advance"}, (3, 1), (3, 1), 0.5)
    report.evaluation({**RECORD, "event": "decay"}, (3, 1), (3, 1), 0.4)
    assert lines[0] == ("step    1500 |    1.5 min |    12,346 chars/s | level (2, 1) of (3, 1) | lr 0.5 | loss 0.5123"
                        " | train  90.0% | val  95.5% char  50.0% exact | test  80.0% char  25.0% exact")
    assert lines[1] == lines[0] + " -> level (3, 1)"
    assert lines[2] == lines[0] + " -> lr 0.4"
    spike = {"cause": "loss 6.23 > 3 x 2.05", "restored_step": 1000, "lr": 0.25}
    report.evaluation({**RECORD, "event": "spike", "spike": spike}, (3, 1), (2, 1), 0.25)
    assert lines[3] == lines[0] + " -> spike: loss 6.23 > 3 x 2.05, restored step 1000, lr 0.25"


def test_predictions_mark_each_answer_and_move_on_at_each_evaluation():
    examples = [Example("addition", f"print({k}+1)", str(k + 1), 1, 1, "test") for k in range(3)]
    result = EvalResult(0.5, 0.5, 3, ["1.", "3.", "9."])
    report, lines = reporter()
    report.predictions(examples, result, evaluation=1)
    assert lines == ["  input:  print(2+1)\n  target: 3.\n  model:  9. (wrong)",
                     "  input:  print(0+1)\n  target: 1.\n  model:  1. (ok)"]
    lines.clear()
    report.predictions(examples, result, evaluation=2)
    assert [line.splitlines()[0] for line in lines] == ["  input:  print(1+1)", "  input:  print(2+1)"]


def test_start_resume_interrupt_and_stop_lines():
    class Backend:
        name = "numpy"

        def device_name(self):
            return "CPU"

    report, lines = reporter()
    report.started(TrainConfig(task="addition", length=3), 0.25, Backend())
    report.resumed("runs/a/checkpoint.npz", 700)
    report.interrupting()
    report.stopped(700, "interrupted")
    assert lines[0] == ("ltexec train: addition length 3 nesting 1, combined curriculum, 2x400 LSTM, batch 100, "
                        "window 50, lr 0.25, backend numpy (CPU)")
    assert lines[1] == "resumed from runs/a/checkpoint.npz at step 700"
    assert lines[2].startswith("interrupt: finishing this step")
    assert lines[3] == "stopped after step 700: interrupted"


def test_live_line_is_drawn_at_most_once_a_second_and_cleared_by_an_evaluation():
    terminal = io.StringIO()
    report = Reporter(lambda line: None, live=terminal)
    figures = TrainingFigures(loss=3.0, correct=3, count=4, steps=2, chars=1000, seconds=0.5)
    report.live(130, figures, 100)
    report.live(131, figures, 100)                     # within the second: not redrawn
    assert terminal.getvalue() == ("\rstep     130 |     2,000 chars/s | loss 1.5000 | train  75.0%"
                                   " | next evaluation at step 200 ")
    report.evaluation(RECORD, (3, 1), (2, 1), 0.5)
    assert terminal.getvalue().endswith("\r\033[K")
    assert Reporter(lambda line: None).live_stream is None     # pytest's captured stderr is not a terminal


def test_training_figures_are_safe_before_any_step():
    empty = TrainingFigures()
    assert (empty.mean_loss, empty.char_acc, empty.chars_per_s) == (0.0, 0.0, 0.0)
    assert TrainingFigures(loss=1.0, steps=4).mean_loss == pytest.approx(0.25)
