"""SGD with global-norm clipping: the clip rule, momentum, state export and argument checks."""

import numpy as np
import pytest

from ltexec.backends.numpy.backend import NumpyBackend
from ltexec.optim import SGD

BACKEND = NumpyBackend(np.float64)


def make_params_and_grads(scale):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    grads = {name: scale * rng.normal(size=p.shape) for name, p in params.items()}
    return params, grads


def norm_of(grads):
    return float(np.sqrt(sum((g * g).sum() for g in grads.values())))


def test_large_gradients_are_scaled_to_the_clip_norm():
    params, grads = make_params_and_grads(scale=10.0)
    before = {name: p.copy() for name, p in params.items()}
    raw = {name: g.copy() for name, g in grads.items()}
    norm = SGD(lr=0.1, clip=2.0).step(BACKEND, params, grads)
    assert norm == pytest.approx(norm_of(raw), rel=1e-14) and norm > 2.0
    assert norm_of(grads) == pytest.approx(2.0, rel=1e-14)          # clipped in place
    for name in params:
        np.testing.assert_allclose(params[name], before[name] - 0.1 * raw[name] * 2.0 / norm, rtol=1e-14)


def test_small_gradients_are_not_scaled():
    params, grads = make_params_and_grads(scale=0.01)
    before = {name: p.copy() for name, p in params.items()}
    raw = {name: g.copy() for name, g in grads.items()}
    norm = SGD(lr=0.5, clip=5.0).step(BACKEND, params, grads)
    assert norm < 5.0
    for name in params:
        np.testing.assert_array_equal(grads[name], raw[name])
        np.testing.assert_allclose(params[name], before[name] - 0.5 * raw[name], rtol=1e-15)


def test_momentum_follows_the_torch_convention():
    params, _ = make_params_and_grads(scale=1.0)
    p0 = params["w"].copy()
    optimizer = SGD(lr=0.1, momentum=0.9, clip=1e9)
    g1, g2 = np.full((3, 4), 1.0), np.full((3, 4), -2.0)
    for g in (g1, g2):
        optimizer.step(BACKEND, params, {"w": g.copy(), "b": np.zeros(4)})
    v1 = g1
    v2 = 0.9 * v1 + g2
    np.testing.assert_allclose(params["w"], p0 - 0.1 * v1 - 0.1 * v2, rtol=1e-15)
    np.testing.assert_allclose(optimizer.state_dict()["velocity"]["w"], v2, rtol=1e-15)


def test_state_dict_round_trip_continues_identically():
    params, _ = make_params_and_grads(scale=1.0)
    rng = np.random.default_rng(1)
    steps = [{name: rng.normal(size=p.shape) for name, p in params.items()} for _ in range(4)]
    original = SGD(lr=0.2, momentum=0.5, clip=1.5)
    for grads in steps[:2]:
        original.step(BACKEND, params, {k: v.copy() for k, v in grads.items()})
    saved = original.state_dict()
    assert saved["lr"] == 0.2 and saved["momentum"] == 0.5 and saved["clip"] == 1.5
    resumed = SGD()
    resumed.load_state_dict(saved)
    twin = {name: p.copy() for name, p in params.items()}
    for grads in steps[2:]:
        original.step(BACKEND, params, {k: v.copy() for k, v in grads.items()})
        resumed.step(BACKEND, twin, {k: v.copy() for k, v in grads.items()})
    for name in params:
        np.testing.assert_array_equal(twin[name], params[name])


def test_state_dict_without_momentum_has_no_velocity():
    params, grads = make_params_and_grads(scale=1.0)
    optimizer = SGD()
    optimizer.step(BACKEND, params, grads)
    assert optimizer.state_dict()["velocity"] is None


def test_loaded_velocity_must_match_the_parameters():
    params, grads = make_params_and_grads(scale=1.0)
    optimizer = SGD(momentum=0.9)
    optimizer.load_state_dict({"lr": 0.5, "momentum": 0.9, "clip": 5.0, "velocity": {"w": np.zeros((2, 2))}})
    with pytest.raises(ValueError, match="loaded velocity does not match parameter 'w'"):
        optimizer.step(BACKEND, params, grads)
    with pytest.raises(ValueError, match=r"optimizer state lacks \['velocity'\]"):
        optimizer.load_state_dict({"lr": 0.5, "momentum": 0.9, "clip": 5.0})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_non_finite_gradient_norm_leaves_parameters_and_velocity_unchanged(bad, momentum):
    """The step is skipped where the norm is computed; the norm it returns tells the caller."""
    params, grads = make_params_and_grads(scale=1.0)
    optimizer = SGD(momentum=momentum)
    optimizer.step(BACKEND, params, {name: g.copy() for name, g in grads.items()})   # a velocity to keep
    before = {name: p.copy() for name, p in params.items()}
    velocity = optimizer.state_dict()["velocity"]
    grads["b"][0] = bad
    norm = optimizer.step(BACKEND, params, grads)
    assert not np.isfinite(norm)
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])
        if momentum:
            np.testing.assert_array_equal(optimizer.state_dict()["velocity"][name], velocity[name])


def test_grads_must_name_the_same_arrays_as_params():
    params, grads = make_params_and_grads(scale=1.0)
    del grads["b"]
    with pytest.raises(ValueError, match="grads and params name different arrays"):
        SGD().step(BACKEND, params, grads)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"lr": -0.1}, "lr must be a finite number > 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ({"momentum": 1.0}, "momentum must be a finite number >= 0.0 and < 1"),
    ({"momentum": -0.1}, "momentum must be a finite number >= 0.0"),
    ({"clip": 0}, "clip must be a finite number > 0"),
])
def test_bad_hyper_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD(**kwargs)


def test_lr_is_an_attribute_the_trainer_can_decay():
    optimizer = SGD(lr=0.5)
    optimizer.lr *= 0.8
    assert optimizer.lr == pytest.approx(0.4)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        optimizer.lr = 0.0
