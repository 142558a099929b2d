"""How the backend runs a layer's recurrence: persistent or per-step (on the CUDA simulator, or a GPU).

The numbers of both ways against the reference: the conformance suite
(tests/backends), which has a maker for each. Here: the ``persistent``
option and its environment fallback, what ``launch_mode`` and
``persistent_fallback_reason`` say, that a shape whose grid does not fit
runs exactly the per-step path, and that ``persistent=True`` refuses such a
shape before any kernel runs. The simulator holds cooperative grids of one
block only, so a backend told the device has 4 SMs (H = 5: 3 blocks of 2
units) must fall back there.
"""

import re

import numpy as np
import pytest

from ltexec.backends.numba_cuda.backend import PERSISTENT_ENV, _simulator_active

MODE = "simulator" if _simulator_active() else "device"
T, B, D, H = 3, 2, 3, 5


def layer_pass(backend, seed=0) -> list[np.ndarray]:
    """Forward and backward of one layer on fresh random inputs: every output and gradient, on host."""
    rng = np.random.default_rng(seed)

    def uniform(*shape, scale=1.0):
        return backend.asarray(rng.uniform(-scale, scale, shape).astype(backend.dtype))

    *outputs, cache = backend.lstm_forward(uniform(T, B, D), uniform(B, H), uniform(B, H), uniform(D, 4 * H, scale=0.7),
                                           uniform(H, 4 * H, scale=0.7), uniform(4 * H, scale=0.5), training=True)
    grads = backend.lstm_backward(uniform(T, B, H), uniform(B, H), uniform(B, H), cache)
    return [backend.to_numpy(a) for a in outputs + list(grads)]


def test_launch_mode_follows_the_option_and_its_environment_fallback(make_backend, monkeypatch):
    monkeypatch.delenv(PERSISTENT_ENV, raising=False)
    off_reason = "persistent kernels turned off: persistent=False or LTEXEC_NUMBA_CUDA_PERSISTENT=0"
    auto = make_backend(np.float32)
    assert (auto.persistent, auto.persistent_fallback_reason) == (None, None)
    assert auto.launch_mode == "persistent where a layer's shape fits, else per-step launches (no layer run yet)"
    layer_pass(auto)
    assert (auto.launch_mode, auto.persistent_fallback_reason) == ("persistent", None)
    off = make_backend(np.float32, persistent=False)
    for _ in range(2):                                  # before and after a layer
        assert (off.launch_mode, off.persistent_fallback_reason) == (f"per-step launches ({off_reason})", off_reason)
        layer_pass(off)
    assert make_backend(np.float32, persistent=True).launch_mode == "persistent"
    monkeypatch.setenv(PERSISTENT_ENV, " Off ")
    assert make_backend(np.float32).persistent is False
    assert make_backend(np.float32, persistent=True).persistent is True      # the option wins
    monkeypatch.setenv(PERSISTENT_ENV, "1")
    assert make_backend(np.float32).persistent is True
    monkeypatch.setenv(PERSISTENT_ENV, "sometimes")
    with pytest.raises(ValueError, match=f"{PERSISTENT_ENV}.*got 'sometimes'"):
        make_backend(np.float32)


@pytest.mark.skipif(MODE != "simulator", reason="the simulator's one-block limit")
def test_a_grid_that_does_not_fit_runs_the_per_step_path_or_is_refused(make_backend, monkeypatch):
    problem = ("the forward kernel needs 3 co-resident blocks of 32 threads with 320 B of shared memory each, but the "
               "device holds 1 at once (the CUDA simulator runs cooperative grids of one block only)")
    auto = make_backend(np.float64)
    monkeypatch.setattr(auto, "_multiprocessors", lambda: 4)
    results = layer_pass(auto)
    reason = f"persistent kernels do not fit at B=2, H=5: {problem}"
    assert (auto.launch_mode, auto.persistent_fallback_reason) == (f"per-step launches ({reason})", reason)
    for a, b in zip(results, layer_pass(make_backend(np.float64, persistent=False))):
        assert a.tobytes() == b.tobytes()

    required = make_backend(np.float64, persistent=True)
    monkeypatch.setattr(required, "_multiprocessors", lambda: 4)
    with pytest.raises(ValueError, match=re.escape(
            f"persistent=True, but the persistent kernels cannot run a layer of B=2, H=5: {problem}")):
        layer_pass(required)
