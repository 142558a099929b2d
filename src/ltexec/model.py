"""The paper's character-level model: embedding, stacked LSTM layers, linear + softmax.

The model reads a program one character per step and predicts the next
character; the loss counts only target characters (a 0/1 mask). Training runs
on fixed windows of T steps whose final hidden state is carried into the next
window without gradient flowing back across the boundary (truncated BPTT as in
the original code). The loss is the masked cross-entropy summed over the
window and divided by the batch size, the normalisation the paper clips at 5.

All arithmetic goes through a :class:`~ltexec.backends.base.Backend`, so the
same model runs on every backend. Token ids, masks and prompts are host
(NumPy) arrays; parameters, gradients and the carried state are backend arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltexec.backends import Backend, get_backend
from ltexec.backends.base import check_dtype
from ltexec.validation import check_float, check_int


@dataclass
class StepResult:
    """What one training window gives: loss, gradients, state and accuracy counts."""

    loss: Any
    """Masked cross-entropy summed over the window, divided by the batch size (a backend scalar)."""
    grads: dict
    """Gradient of ``loss`` for every parameter, keyed like ``LSTMModel.params``."""
    state: list
    """The final (h, c) of every layer, to carry into the next window."""
    dstate: list
    """Gradient of ``loss`` with respect to the carried-in (h, c) of every layer."""
    correct: Any
    """Masked positions whose argmax prediction equals the target (a backend scalar: ``int()`` reads it)."""
    count: int
    """Masked positions (target characters) in the window."""


class LSTMModel:
    """Embedding -> ``layers`` LSTM layers of ``hidden`` units -> linear -> softmax.

    Parameters (``self.params``, backend arrays): ``embed`` (V,H); per layer k
    ``Wx{k}`` (D_in,4H), ``Wh{k}`` (H,4H), ``b{k}`` (4H,) with gate blocks
    i, f, g, o; ``Wy`` (H,V), ``by`` (V,). All are drawn uniform in
    [-init_scale, init_scale] on the host, in that order, from
    ``np.random.default_rng(seed)``, so every backend and dtype starts from
    the same numbers. ``backend`` is a name for :func:`get_backend` or a
    Backend instance; ``dtype`` (float32 unless the instance says otherwise)
    must agree with an instance's dtype. ``backend_options`` (e.g.
    ``{"threads": 2}``) go to :func:`get_backend` with a name.

    ``forget_bias`` is added to every layer's forget-gate bias after the
    draw (0, the paper's uniform init, by default; 1 is the common choice
    that lets a fresh LSTM carry its cell state instead of halving it each
    step). The draws themselves do not depend on it.
    """

    def __init__(self, vocab_size: int, hidden: int = 400, layers: int = 2, backend="auto",
                 dtype=None, init_scale: float = 0.08, seed: int = 0, backend_options: Mapping | None = None,
                 forget_bias: float = 0.0):
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.layers = check_int("layers", layers, minimum=1)
        init_scale = check_float("init_scale", init_scale, minimum=0, inclusive_min=False)
        rng = np.random.default_rng(check_int("seed", seed, minimum=0))
        self.backend = _resolve_backend(backend, dtype, backend_options or {})
        self.dtype = self.backend.dtype
        forget_bias = check_float("forget_bias", forget_bias)
        drawn = {name: rng.uniform(-init_scale, init_scale, shape) for name, shape in self.param_shapes().items()}
        for k in range(self.layers):
            drawn[f"b{k}"][self.hidden:2 * self.hidden] += forget_bias    # gate blocks i, f, g, o
        self.params = {name: self.backend.asarray(array) for name, array in drawn.items()}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, in the fixed order parameters are drawn and listed."""
        V, H = self.vocab_size, self.hidden
        shapes = {"embed": (V, H)}
        for k in range(self.layers):
            shapes.update({f"Wx{k}": (H, 4 * H), f"Wh{k}": (H, 4 * H), f"b{k}": (4 * H,)})
        shapes.update({"Wy": (H, V), "by": (V,)})
        return shapes

    def zero_state(self, batch: int) -> list:
        """The all-zero (h, c) of every layer for ``batch`` columns."""
        batch = check_int("batch", batch, minimum=1)
        zeros = self.backend.xp.zeros
        return [(zeros((batch, self.hidden), self.dtype), zeros((batch, self.hidden), self.dtype))
                for _ in range(self.layers)]

    # ------------------------------------------------------------ training

    def loss_and_grads(self, x, y, mask, state) -> StepResult:
        """Forward and backward over one window of T steps.

        x, y (T,B) int ids (the characters read and the characters to
        predict), mask (T,B) of 0/1 (1 where y is a target character),
        ``state`` the carried-in state (a list like :meth:`zero_state`'s, or
        None for zeros). The ids and the mask are checked on the host and
        handed to the backend as they are (it uploads them); nothing is read
        back from a device: loss and correct are backend scalars.
        """
        x = self._check_ids("x", x)
        y = self._check_ids("y", y, x.shape)
        mask = self._check_mask(mask, x.shape)
        batch = x.shape[1]
        state = self._check_state(state, batch)
        bk, P = self.backend, self.params

        logits, top, new_state, caches = self._run(x, state, training=True)
        loss_sum, dlogits, correct = bk.softmax_xent(logits, y, bk.asarray(mask))
        dlogits *= 1.0 / batch

        grads = {}
        dh, grads["Wy"], grads["by"] = bk.linear_backward(dlogits, top, P["Wy"])
        dstate = [None] * self.layers
        no_grad = self.zero_state(batch)     # truncated BPTT: nothing arrives from the next window
        for k in reversed(range(1, self.layers)):
            dh, grads[f"Wx{k}"], grads[f"Wh{k}"], grads[f"b{k}"], dh0, dc0 = bk.lstm_backward(
                dh, *no_grad[k], caches[k])
            dstate[k] = (dh0, dc0)
        grads["embed"], grads["Wx0"], grads["Wh0"], grads["b0"], dh0, dc0 = bk.embedding_lstm_backward(
            dh, *no_grad[0], caches[0], x, self.vocab_size)
        dstate[0] = (dh0, dc0)

        return StepResult(loss=loss_sum / batch, grads={name: grads[name] for name in P},
                          state=new_state, dstate=dstate, correct=correct, count=int(mask.sum()))

    # ---------------------------------------------------------- evaluation

    def forward(self, x, state):
        """Logits (T,B,V) as a NumPy array and the final state, without keeping a cache."""
        x = self._check_ids("x", x)
        state = self._check_state(state, x.shape[1])
        logits, _, new_state, _ = self._run(x, state, training=False)
        return self.backend.to_numpy(logits), new_state

    def greedy_decode(self, prompts, lengths, max_answer_len: int, stop_id: int) -> list[np.ndarray]:
        """Free-running decoding of every column, each from a zero state.

        Column b reads ``prompts[:lengths[b], b]`` (positions after that are
        padding and ignored), then is fed its own argmax prediction until it
        predicts ``stop_id`` or has produced ``max_answer_len`` ids. Returns
        each column's predicted ids, ending with ``stop_id`` if it was produced.
        Columns never influence each other.
        """
        prompts, lengths = self._check_prompts(prompts, lengths)
        max_answer_len = check_int("max_answer_len", max_answer_len, minimum=1)
        stop_id = check_int("stop_id", stop_id, minimum=0, maximum=self.vocab_size - 1)
        bk = self.backend
        batch = prompts.shape[1]

        # Every column is still reading its prompt during the first min(lengths) steps:
        # read all but the last of them as one window.
        first = int(lengths.min()) - 1
        state = self.zero_state(batch)
        if first > 0:
            _, _, state, _ = self._run(prompts[:first], state, training=False)

        answers = [[] for _ in range(batch)]
        produced = np.zeros(batch, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        tokens = prompts[first]
        step = first
        while not done.all():
            logits, _, state, _ = self._run(tokens[None], state, training=False)
            predicted = bk.to_numpy(logits[0].argmax(axis=-1)).astype(np.int64)   # (B,)
            answering = (step >= lengths - 1) & ~done
            for b in np.flatnonzero(answering):
                answers[b].append(predicted[b])
            produced += answering
            done |= answering & ((predicted == stop_id) | (produced == max_answer_len))
            step += 1
            reading = step < lengths
            tokens = np.where(reading, prompts[np.minimum(step, len(prompts) - 1)], predicted)
        return [np.array(a, dtype=np.int64) for a in answers]

    def _run(self, x, state, training: bool):
        """Forward through every layer on the backend: ``(logits, top hs, new state, caches)``; x: checked host ids."""
        bk, P = self.backend, self.params
        new_state, caches = [], []
        for k, (h0, c0) in enumerate(state):
            weights = P[f"Wx{k}"], P[f"Wh{k}"], P[f"b{k}"]
            if k == 0:                          # the first layer reads the embedding of x
                hs, hT, cT, cache = bk.embedding_lstm_forward(P["embed"], x, h0, c0, *weights, training)
            else:
                hs, hT, cT, cache = bk.lstm_forward(hs, h0, c0, *weights, training)
            new_state.append((hT, cT))
            caches.append(cache)
        return bk.linear_forward(hs, P["Wy"], P["by"]), hs, new_state, caches

    # ------------------------------------------------------------ parameters

    def state_dict(self) -> dict[str, np.ndarray]:
        """A NumPy copy of every parameter."""
        return {name: np.array(self.backend.to_numpy(p)) for name, p in self.params.items()}

    def load_params(self, params: Mapping) -> None:
        """Copy parameters (NumPy arrays keyed like ``params``) into the model; all are checked first."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of parameter names to arrays, got {type(params).__name__}")
        expected = self.param_shapes()
        missing = [name for name in expected if name not in params]
        extra = [name for name in params if name not in expected]
        if missing or extra:
            raise ValueError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        arrays = {}
        for name, shape in expected.items():
            array = np.asarray(params[name])
            if array.shape != shape:
                raise ValueError(f"parameter {name!r} has shape {array.shape}, expected {shape}")
            if array.dtype.kind != "f":
                raise ValueError(f"parameter {name!r} must be a floating-point array, got dtype {array.dtype}")
            if not np.isfinite(array).all():
                raise ValueError(f"parameter {name!r} holds non-finite values")
            arrays[name] = array
        for name, array in arrays.items():
            self.params[name][...] = self.backend.asarray(array)

    # ------------------------------------------------------------ validation

    def _check_ids(self, name: str, ids, shape=None) -> np.ndarray:
        """``ids`` as an int64 (T,B) host array of ids in [0, V), else a clear error naming it."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of token ids, got dtype {ids.dtype}")
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"{name} must have shape (T, B) with T, B >= 1, got {ids.shape}")
        if shape is not None and ids.shape != shape:
            raise ValueError(f"{name} has shape {ids.shape}, expected {shape} (the shape of x)")
        outside = (ids < 0) | (ids >= self.vocab_size)
        if outside.any():
            raise ValueError(f"{name} holds ids outside [0, {self.vocab_size}), e.g. {ids[outside][0]}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def _check_mask(self, mask, shape) -> np.ndarray:
        """``mask`` as a 0/1 host array of the model's dtype with the shape of x."""
        mask = np.asarray(mask)
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"mask must be a numeric or boolean array, got dtype {mask.dtype}")
        if mask.shape != shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {shape} (the shape of x)")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must hold only 0 and 1")
        return mask.astype(self.dtype)

    def _check_state(self, state, batch: int) -> list:
        """The carried-in state as backend arrays, or zeros for None; shapes are checked."""
        if state is None:
            return self.zero_state(batch)
        if not isinstance(state, (list, tuple)) or len(state) != self.layers:
            raise ValueError(f"state must be a list of {self.layers} (h, c) pairs, one per layer")
        checked = []
        for k, pair in enumerate(state):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"state[{k}] must be an (h, c) pair")
            arrays = []
            for part, array in zip("hc", pair):
                if not hasattr(array, "shape"):
                    array = np.asarray(array)
                if tuple(array.shape) != (batch, self.hidden):
                    raise ValueError(f"state[{k}] {part} has shape {tuple(array.shape)}, "
                                     f"expected {(batch, self.hidden)} (batch, hidden)")
                if np.dtype(array.dtype).kind != "f":
                    raise TypeError(f"state[{k}] {part} must be floating-point, got dtype {array.dtype}")
                arrays.append(self.backend.asarray(array))
            checked.append(tuple(arrays))
        return checked

    def _check_prompts(self, prompts, lengths):
        """Prompts as int64 (T,B) with padding replaced by 0, and lengths in 1..T."""
        prompts = np.asarray(prompts)
        if prompts.dtype.kind not in "iu":
            raise TypeError(f"prompts must be an integer array of token ids, got dtype {prompts.dtype}")
        if prompts.ndim != 2 or 0 in prompts.shape:
            raise ValueError(f"prompts must have shape (T, B) with T, B >= 1, got {prompts.shape}")
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu" or lengths.shape != prompts.shape[1:]:
            raise ValueError(f"lengths must be an integer array of shape {prompts.shape[1:]} (one per column)")
        if lengths.min() < 1 or lengths.max() > len(prompts):
            raise ValueError(f"lengths must lie in 1..{len(prompts)} (the prompt window), "
                             f"got {lengths.min()}..{lengths.max()}")
        inside = np.arange(len(prompts))[:, None] < lengths
        prompts = np.where(inside, prompts, 0)
        return self._check_ids("prompts", prompts), lengths.astype(np.int64)


def _resolve_backend(backend, dtype, options: Mapping) -> Backend:
    """A Backend from a name (with its options) or an instance, checking that ``dtype`` agrees."""
    if isinstance(backend, Backend):
        if dtype is not None and check_dtype(dtype) != backend.dtype:
            raise ValueError(f"dtype {np.dtype(dtype).name} disagrees with the backend's {backend.dtype.name}")
        if options:
            raise ValueError("backend_options go with a backend name, not with a Backend instance")
        return backend
    if isinstance(backend, str):
        return get_backend(backend, np.float32 if dtype is None else dtype, **options)
    raise TypeError(f"backend must be a backend name or a Backend instance, got {type(backend).__name__}")
