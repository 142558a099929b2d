"""Backend selection and the generic operations every backend inherits from ``Backend``."""

import numpy as np
import pytest

import ltexec.backends as backends
from ltexec.backends import BACKENDS, Backend, BackendUnavailable, available_backends, get_backend
from ltexec.backends.numpy.backend import NumpyBackend, sigmoid


class MissingLibraryBackend(NumpyBackend):
    name = "missing"

    @classmethod
    def unavailable_reason(cls):
        return "FakeLib is not installed"


class BrokenProbeBackend(NumpyBackend):
    name = "broken"

    @classmethod
    def unavailable_reason(cls):
        raise RuntimeError("no CUDA driver")


@pytest.fixture
def fake_registry(monkeypatch):
    """A registry whose preferred backends cannot run here, ahead of numpy."""
    registry = (("missing", f"{__name__}:MissingLibraryBackend"),
                ("broken", f"{__name__}:BrokenProbeBackend"),
                ("absent", "ltexec.backends.no_such_module:Backend"),
                ("numpy", "ltexec.backends.numpy.backend:NumpyBackend"))
    monkeypatch.setattr(backends, "REGISTRY", registry)
    monkeypatch.setattr(backends, "BACKENDS", tuple(name for name, _ in registry))


# ------------------------------------------------------------------ registry

def test_numpy_is_registered_and_available():
    assert "numpy" in BACKENDS
    reasons = available_backends()
    assert list(reasons) == list(BACKENDS) and reasons["numpy"] is None


def test_auto_picks_the_first_available_backend():
    first = next(name for name, reason in available_backends().items() if reason is None)
    backend = get_backend()
    assert backend.name == first and backend.dtype == np.float32
    assert get_backend("numpy", np.float64).dtype == np.float64


def test_unavailable_backends_are_skipped_by_auto_and_explained(fake_registry):
    reasons = available_backends()
    assert reasons["missing"] == "FakeLib is not installed"
    assert reasons["broken"] == "RuntimeError: no CUDA driver"
    assert reasons["absent"].startswith("ModuleNotFoundError")
    assert reasons["numpy"] is None
    assert get_backend("auto").name == "numpy"
    with pytest.raises(BackendUnavailable, match="backend 'missing' is unavailable: FakeLib is not installed"):
        get_backend("missing")
    with pytest.raises(BackendUnavailable, match="no CUDA driver"):
        get_backend("broken")


def test_unknown_name_or_dtype_is_rejected():
    with pytest.raises(ValueError, match=f"unknown backend 'cuda'; choose one of: auto, {', '.join(BACKENDS)}$"):
        get_backend("cuda")
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        get_backend("numpy", np.int32)
    for dtype in ("not a dtype", None):
        with pytest.raises(ValueError, match="dtype must be float32 or float64"):
            get_backend("numpy", dtype)


def test_options_go_to_the_backend_and_unknown_ones_are_named():
    assert get_backend("numpy", np.float64, threads=2).threads == 2
    assert get_backend("auto", threads=1).threads == 1          # every backend takes threads
    assert get_backend("numpy").threads is None
    with pytest.raises(ValueError, match=r"backend 'numpy' takes no option 'persistent'; its options are: threads$"):
        get_backend("numpy", persistent=False)
    for bad in (0, -1, 1.5, True, "many"):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            get_backend("numpy", threads=bad)


def test_options_fall_back_to_the_environment(monkeypatch):
    from ltexec.backends.base import option_from_environment
    monkeypatch.setenv("LTEXEC_TEST_OPTION", " cublas ")
    assert option_from_environment(None, "LTEXEC_TEST_OPTION") == "cublas"
    assert option_from_environment(False, "LTEXEC_TEST_OPTION") is False      # a given option wins
    monkeypatch.setenv("LTEXEC_TEST_OPTION", "  ")
    assert option_from_environment(None, "LTEXEC_TEST_OPTION") is None
    monkeypatch.delenv("LTEXEC_TEST_OPTION")
    assert option_from_environment(None, "LTEXEC_TEST_OPTION") is None


def test_every_registered_backend_takes_threads():
    from ltexec.backends import REGISTRY, _backend_class, backend_options
    for name, _ in REGISTRY:
        try:
            cls = _backend_class(name)
        except ImportError:                     # an optional dependency the module itself needs
            continue
        assert "threads" in backend_options(cls), name


def test_the_base_class_leaves_only_the_lstm_layer_to_implement():
    backend = Backend(np.float64)
    with pytest.raises(NotImplementedError, match="lstm_forward"):
        backend.lstm_forward(None, None, None, None, None, None, training=True)
    with pytest.raises(NotImplementedError, match="lstm_backward"):
        backend.lstm_backward(None, None, None, None)
    overridden = [name for name in vars(NumpyBackend) if not name.startswith("__")]
    assert sorted(overridden) == ["lstm_backward", "lstm_forward", "name", "xp"]


# ------------------------------------------------------------------ arrays

def test_asarray_converts_floats_to_the_backend_dtype_and_keeps_ids():
    backend = NumpyBackend(np.float32)
    assert backend.asarray(np.ones((2, 3))).dtype == np.float32
    assert backend.asarray(np.arange(4, dtype=np.int64)).dtype == np.int64
    assert backend.asarray(np.ones(3), dtype=np.float64).dtype == np.float64
    transposed = backend.asarray(np.ones((3, 2), np.float32).T)
    assert transposed.flags.c_contiguous
    assert isinstance(backend.to_numpy(transposed), np.ndarray)
    assert "CPU" in backend.device_name()


# ------------------------------------------------------------------ generic operations

@pytest.fixture
def backend():
    return NumpyBackend(np.float64)


def test_embedding_forward_and_backward(backend):
    rng = np.random.default_rng(0)
    E = rng.normal(size=(5, 3))
    x = rng.integers(0, 5, (4, 2))
    np.testing.assert_array_equal(backend.embedding_forward(E, x), E[x])
    dxs = rng.normal(size=(4, 2, 3))
    expected = np.zeros((5, 3))
    np.add.at(expected, x.ravel(), dxs.reshape(-1, 3))
    np.testing.assert_allclose(backend.embedding_backward(dxs, x, 5), expected, rtol=1e-13, atol=1e-15)


def test_linear_forward_and_backward(backend):
    rng = np.random.default_rng(1)
    hs, W, b = rng.normal(size=(3, 2, 4)), rng.normal(size=(4, 6)), rng.normal(size=6)
    np.testing.assert_allclose(backend.linear_forward(hs, W, b), np.einsum("tbh,hv->tbv", hs, W) + b, rtol=1e-13)
    dlogits = rng.normal(size=(3, 2, 6))
    dhs, dW, db = backend.linear_backward(dlogits, hs, W)
    np.testing.assert_allclose(dhs, np.einsum("tbv,hv->tbh", dlogits, W), rtol=1e-13)
    np.testing.assert_allclose(dW, np.einsum("tbh,tbv->hv", hs, dlogits), rtol=1e-13)
    np.testing.assert_allclose(db, dlogits.sum(axis=(0, 1)), rtol=1e-13)


def test_softmax_xent_values_gradient_and_count(backend):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 5))
    y = rng.integers(0, 5, (3, 4))
    y[0, 0] = logits[0, 0].argmax()                       # at least one correct, counted
    y[0, 1] = logits[0, 1].argmax()                       # correct but masked out: not counted
    mask = np.ones((3, 4))
    mask[0, 1] = mask[2, 3] = 0
    loss, dlogits, correct = backend.softmax_xent(logits, y, mask)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    picked = np.take_along_axis(p, y[..., None], -1)[..., 0]
    assert loss == pytest.approx(-(np.log(picked) * mask).sum(), rel=1e-13)
    expected = (p - np.eye(5)[y]) * mask[..., None]
    np.testing.assert_allclose(dlogits, expected, rtol=1e-12, atol=1e-15)
    assert correct == int(((logits.argmax(-1) == y) & (mask == 1)).sum()) and correct >= 1


def test_softmax_xent_is_stable_for_huge_logits_and_breaks_ties_to_the_first():
    backend = NumpyBackend(np.float32)
    logits = np.array([[[3e4, -3e4, 3e4]]], np.float32)   # exp would overflow without the shift
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, dlogits, correct = backend.softmax_xent(logits, np.array([[0]]), np.ones((1, 1), np.float32))
    assert loss == pytest.approx(np.log(2), rel=1e-6)
    np.testing.assert_allclose(dlogits[0, 0], [-0.5, 0.0, 0.5], atol=1e-7)
    assert correct == 1


def test_sigmoid_is_stable_and_accurate():
    x = np.array([-1e4, -700.0, -30.0, -1.0, 0.0, 1.0, 30.0, 700.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
        s32 = sigmoid(x.astype(np.float32))
    assert s32.dtype == np.float32
    mid = slice(2, 7)
    np.testing.assert_allclose(s[mid], 1 / (1 + np.exp(-x[mid])), rtol=1e-15)
    np.testing.assert_allclose(s, 1 - sigmoid(-x), atol=1e-16)
    assert s[0] == 0 and s[-1] == 1 and s[2] == pytest.approx(np.exp(-30), rel=1e-14)


def test_norm_scale_and_update(backend):
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert backend.global_norm(grads) == pytest.approx(5.0, rel=1e-15)
    backend.scale_(grads, 0.5)
    np.testing.assert_array_equal(grads["a"], [1.5, 0.0])
    params = {"a": np.array([1.0, 1.0]), "b": np.array([[1.0]])}
    velocity = {"a": np.array([1.0, -1.0]), "b": np.array([[0.0]])}
    norm = backend.clipped_sgd_update_(params, grads, velocity, lr=0.1, momentum=0.5, clip=100.0)   # no clip
    assert norm == pytest.approx(2.5, rel=1e-15)
    np.testing.assert_allclose(velocity["a"], [2.0, -0.5])
    np.testing.assert_allclose(params["a"], [0.8, 1.05])
    np.testing.assert_allclose(params["b"], [[0.8]])
    backend.clipped_sgd_update_(params, grads, None, lr=1.0, momentum=0.0, clip=1.25)   # half the step
    np.testing.assert_allclose(params["a"], [0.05, 1.05])
    np.testing.assert_allclose(params["b"], [[-0.2]])
