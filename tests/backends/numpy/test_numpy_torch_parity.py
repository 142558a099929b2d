"""The NumPy model against PyTorch: same logits, loss, gradients and SGD steps.

The reference is ``nn.Embedding`` + ``nn.LSTM`` (time-major) + ``nn.Linear``
loaded through :func:`ltexec.torch_convert.to_torch_state_dict`, with the
same loss: masked cross-entropy summed over the window, divided by the batch
size. Agreement is measured per tensor as ``max|ours - torch| / max|torch|``
and must be below 1e-10 in float64 and 1e-4 in float32.
"""

import numpy as np
import pytest

from ltexec.model import LSTMModel
from ltexec.optim import SGD
from ltexec.testing import relative_error as closeness
from ltexec.torch_convert import from_torch_state_dict, to_torch_state_dict

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch); parity tests need it")

V, H, T, B = 13, 8, 6, 4
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


class TorchModel(torch.nn.Module):
    """The same network built from PyTorch modules, named as torch_convert expects."""

    def __init__(self, layers, dtype):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, H, dtype=dtype)
        self.lstm = torch.nn.LSTM(H, H, num_layers=layers, batch_first=False, dtype=dtype)
        self.linear = torch.nn.Linear(H, V, dtype=dtype)

    def forward(self, x, state):
        hs, (hT, cT) = self.lstm(self.embedding(x), state)
        return self.linear(hs), (hT, cT)


def torch_from_ours(model):
    reference = TorchModel(model.layers, TORCH_DTYPE[model.dtype.type])
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(model.state_dict()).items()})
    return reference


def torch_loss(logits, y, mask):
    log_p = torch.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0]
    return -(log_p * mask).sum() / y.shape[1]


def make_inputs(rng, layers, dtype, window=T):
    x = rng.integers(0, V, (window, B))
    y = rng.integers(0, V, (window, B))
    mask = (rng.random((window, B)) < 0.7).astype(dtype)
    mask[0, 0] = 1
    state = [(rng.uniform(-1, 1, (B, H)).astype(dtype), rng.uniform(-1, 1, (B, H)).astype(dtype))
             for _ in range(layers)]
    return x, y, mask, state


def torch_state(state, requires_grad=False):
    h0 = torch.tensor(np.stack([h for h, _ in state]), requires_grad=requires_grad)
    c0 = torch.tensor(np.stack([c for _, c in state]), requires_grad=requires_grad)
    return h0, c0


def relative_error(ours, theirs):
    """:func:`ltexec.testing.relative_error`, torch's side given as a tensor."""
    return closeness(ours, theirs.detach().numpy() if hasattr(theirs, "detach") else theirs)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_loss_and_every_gradient_match_torch(dtype, layers):
    rng = np.random.default_rng(layers)
    model = LSTMModel(V, hidden=H, layers=layers, backend="numpy", dtype=dtype, init_scale=0.5, seed=layers)
    x, y, mask, state = make_inputs(rng, layers, dtype)
    ours = model.loss_and_grads(x, y, mask, state)
    logits, _ = model.forward(x, state)

    reference = torch_from_ours(model)
    h0, c0 = torch_state(state, requires_grad=True)
    torch_logits, (hT, cT) = reference(torch.from_numpy(x), (h0, c0))
    loss = torch_loss(torch_logits, torch.from_numpy(y), torch.from_numpy(mask))
    loss.backward()

    tolerance = TOLERANCE[dtype]
    errors = {"loss": abs(ours.loss - loss.item()) / abs(loss.item()),
              "logits": relative_error(logits, torch_logits)}
    ours_as_torch = to_torch_state_dict({name: g for name, g in ours.grads.items()})
    for k in range(layers):
        ours_as_torch[f"lstm.bias_hh_l{k}"] = ours.grads[f"b{k}"]     # both torch biases get b's gradient
        errors[f"hT{k}"] = relative_error(ours.state[k][0], hT[k])
        errors[f"cT{k}"] = relative_error(ours.state[k][1], cT[k])
        errors[f"dh0 of layer {k}"] = relative_error(ours.dstate[k][0], h0.grad[k])
        errors[f"dc0 of layer {k}"] = relative_error(ours.dstate[k][1], c0.grad[k])
    for name, p in reference.named_parameters():
        errors[name] = relative_error(ours_as_torch[name], p.grad)
    assert len(errors) == 2 + 4 * layers + len(list(reference.parameters()))
    worst = max(errors, key=errors.get)
    assert errors[worst] < tolerance, f"{worst}: {errors[worst]:.3g}; all: {errors}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversion_round_trip_is_exact_and_laid_out_as_documented(dtype):
    params = LSTMModel(V, hidden=H, layers=2, backend="numpy", dtype=dtype, seed=5).state_dict()
    sd = to_torch_state_dict(params)
    reference = TorchModel(2, TORCH_DTYPE[dtype])
    assert set(sd) == set(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert sd[name].shape == tuple(tensor.shape) and sd[name].dtype == dtype, name
    np.testing.assert_array_equal(sd["lstm.weight_ih_l1"], params["Wx1"].T)
    np.testing.assert_array_equal(sd["lstm.bias_hh_l0"], 0)
    back = from_torch_state_dict(sd)
    assert list(back) == list(params)
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])
        assert back[name].dtype == dtype and back[name].flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_initialised_weights_give_the_same_logits(dtype):
    torch.manual_seed(0)
    reference = TorchModel(2, TORCH_DTYPE[dtype])
    assert reference.lstm.bias_hh_l0.abs().max() > 0          # both biases in play
    model = LSTMModel(V, hidden=H, layers=2, backend="numpy", dtype=dtype)
    model.load_params(from_torch_state_dict(reference.state_dict()))
    rng = np.random.default_rng(3)
    x, _, _, state = make_inputs(rng, 2, dtype)
    logits, (h_n, c_n) = reference(torch.from_numpy(x), torch_state(state))
    ours, ours_state = model.forward(x, state)
    assert relative_error(ours, logits) < TOLERANCE[dtype]
    assert relative_error(ours_state[1][1], c_n[1]) < TOLERANCE[dtype]


def test_from_torch_state_dict_names_what_is_missing():
    sd = to_torch_state_dict(LSTMModel(V, hidden=H, layers=2, backend="numpy").state_dict())
    del sd["lstm.bias_hh_l1"]
    with pytest.raises(ValueError, match=r"state dict lacks \['lstm.bias_hh_l1'\]"):
        from_torch_state_dict(sd)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_three_clipped_sgd_steps_match_torch(dtype, momentum):
    """Three steps on fresh windows, with a clip threshold every step exceeds.

    PyTorch's ``bias_hh`` stays frozen at zero so that its trained parameters
    are exactly ours (``bias_ih`` playing ``b``); otherwise both biases would
    move and count twice in the norm. ``clip_grad_norm_`` scales by
    ``clip / (norm + 1e-6)`` where we scale by ``clip / norm``, so each update
    differs by a relative 1e-6 / norm < 1e-6 / clip. The updates (final minus
    initial parameters) are compared relative to each tensor's largest update
    at that bound in float64 (1e-4 in float32); the first norm, before any
    update, at the usual tolerance.
    """
    lr, clip, layers = 0.5, 0.5, 2
    rng = np.random.default_rng(7)
    model = LSTMModel(V, hidden=H, layers=layers, backend="numpy", dtype=dtype, init_scale=0.5, seed=1)
    reference = torch_from_ours(model)
    for k in range(layers):
        getattr(reference.lstm, f"bias_hh_l{k}").requires_grad_(False)
    trained = [p for p in reference.parameters() if p.requires_grad]
    torch_sgd = torch.optim.SGD(trained, lr=lr, momentum=momentum)
    ours_sgd = SGD(lr=lr, momentum=momentum, clip=clip)
    update_tolerance = max(TOLERANCE[dtype], 1e-6 / clip)
    initial = model.state_dict()

    for step in range(3):
        x, y, mask, _ = make_inputs(rng, layers, dtype)
        result = model.loss_and_grads(x, y, mask, None)
        ours_norm = ours_sgd.step(model.backend, model.params, result.grads)

        torch_sgd.zero_grad()
        logits, _ = reference(torch.from_numpy(x), None)
        torch_loss(logits, torch.from_numpy(y), torch.from_numpy(mask)).backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(trained, clip).item()
        torch_sgd.step()

        assert ours_norm > clip and torch_norm > clip            # the clip really acts
        norm_tolerance = TOLERANCE[dtype] if step == 0 else update_tolerance
        assert abs(ours_norm - torch_norm) / torch_norm < norm_tolerance

    expected = from_torch_state_dict(reference.state_dict())
    for name, p in model.state_dict().items():
        update, torch_update = p - initial[name], expected[name] - initial[name]
        assert np.abs(torch_update).max() > 1e-3, f"{name} hardly moved"
        assert relative_error(update, torch_update) < update_tolerance, name
