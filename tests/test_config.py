"""TrainConfig's checks and defaults, and build_model: the one way a configuration becomes a model."""

import numpy as np
import pytest
from tiny_run import TINY

from ltexec import vocab
from ltexec.backends import get_backend
from ltexec.config import TrainConfig, build_model
from ltexec.model import LSTMModel
from ltexec.seeds import derive_seed


@pytest.mark.parametrize("field, value, message", [
    ("task", "multiply", "task must be one of"),
    ("length", 0, "length must be"),
    ("hidden", -1, "hidden must be"),
    ("lr", 0.0, "lr must be"),
    ("mode", "batch", "mode must be one of"),
    ("backend", "tpu", "backend must be one of"),
    ("minutes", float("nan"), "minutes must be"),
    ("spike_factor", 1.0, "spike_factor must be a finite number > 1.0"),
    ("spike_lr_factor", 0.0, "spike_lr_factor must be a finite number > 0.0 and <= 1.0"),
])
def test_bad_config_is_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, field: value}).validate()


def test_nesting_only_for_programs():
    assert TrainConfig(task="addition").nesting == 1
    assert TrainConfig(task="programs").nesting == 3
    with pytest.raises(ValueError, match="nesting applies only to task programs"):
        TrainConfig(task="copy", nesting=2).validate()



def test_warmup_follows_the_training_mode():
    assert TrainConfig(mode="stream").warmup and not TrainConfig(mode="examples").warmup


def test_build_model_draws_the_configured_model_from_the_run_seed():
    config = TrainConfig(**TINY)
    model = build_model(config)
    assert (model.vocab_size, model.hidden, model.layers, model.dtype) == (vocab.VOCAB_SIZE, 16, 1, np.float32)
    assert model.backend.name == "numpy"
    same = LSTMModel(vocab.VOCAB_SIZE, hidden=16, layers=1, backend="numpy", seed=derive_seed(3, "init"))
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, same.params[name], err_msg=name)
    other = build_model(TrainConfig(**{**TINY, "seed": 4}))
    assert not np.array_equal(model.params["Wy"], other.params["Wy"])
    biased = build_model(TrainConfig(**{**TINY, "forget_bias": 1.0}))
    np.testing.assert_array_equal(biased.params["b0"][16:32], model.params["b0"][16:32] + np.float32(1.0))


def test_build_model_passes_backend_options_or_shares_a_backend():
    config = TrainConfig(**{**TINY, "dtype": "float64"})
    model = build_model(config, threads=1)
    assert (model.backend.threads, model.dtype) == (1, np.float64)
    assert build_model(config, backend=model.backend).backend is model.backend
    with pytest.raises(ValueError, match="disagrees with the backend's float32"):
        build_model(config, backend=get_backend("numpy", np.float32))
    with pytest.raises(ValueError, match="takes no option 'lanes'"):
        build_model(config, lanes=2)


def test_the_paper_defaults_draw_per_number_and_evaluate_every_100_steps():
    config = TrainConfig()
    assert (config.draw, config.eval_every, config.strategy) == ("number", 100, "combined")
    with pytest.raises(ValueError, match="draw must be one of"):
        TrainConfig(**{**TINY, "draw": "program"}).validate()
