"""The NPI model: encoder, program memory, LSTM core and three heads, on the backend interface.

One core step, for the current program p (arguments a, observation o)::

    e   = tanh([onehot(o); onehot(a)] W_enc + b_enc)       the encoder f_enc, (E,)
    x   = [e; M_p]                                          M_p: p's embedding in the program memory, (Dp,)
    h   = LSTM core (``layers`` x ``hidden``), from a zero state at the invocation's first step
    [r; k; a1; a2; a3] = h W_out + b_out                    end logits (2), key (K), argument logits (3 x 10)
    scores_q = k . key_q  for every program q               the next program by key match (key_q: a column of KEYS)

The losses are cross-entropies summed over the batch's steps and divided by
its number of steps (or a given normalizer): the end flag at every step, the next program and
its three arguments at the steps that make a call. Every array operation is
a backend operation (``linear_*``, ``tanh_*``, ``concat_last``/``split_last``,
``embedding_*``, ``lstm_*``, ``softmax_xent``), so every backend runs the NPI
and every backward used here is one the conformance suite and the float64
gradient check cover.

Parameters (``self.params``): ``W_enc`` (O*11 + 3*10, E), ``b_enc`` (E,),
``programs`` (P, Dp), per layer ``Wx{k}``, ``Wh{k}``, ``b{k}``, ``W_out``
(H, 2 + K + 30), ``b_out``, ``keys`` (K, P), drawn uniform in
[-init_scale, init_scale] in that order from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ltexec.model import _resolve_backend
from ltexec.npi.data import SequenceBatch
from ltexec.npi.programs import ARG_SLOTS, ARG_VALUES
from ltexec.validation import check_float, check_int


@dataclass(frozen=True)
class NPIConfig:
    """The model's sizes. ``observation``, ``symbols`` and ``programs`` come from the environment."""

    observation: int = 4
    symbols: int = 11
    programs: int = 5
    hidden: int = 256
    layers: int = 2
    encoder: int = 128
    program_embedding: int = 64
    key: int = 32

    def __post_init__(self):
        for name, value in asdict(self).items():
            check_int(name, value, minimum=1)

    @property
    def input_width(self) -> int:
        """Width of the encoder's one-hot input: every observed value and every argument."""
        return self.observation * self.symbols + ARG_SLOTS * ARG_VALUES

    @property
    def head_sizes(self) -> tuple[int, ...]:
        """The parts of the output layer: end (2), key, one block per argument slot."""
        return (2, self.key) + (ARG_VALUES,) * ARG_SLOTS


PRESETS = {"paper": NPIConfig(), "small": NPIConfig(hidden=64, layers=1, encoder=32, program_embedding=16, key=16)}
"""``paper``: the core of the paper and its public implementations (2 x 256); ``small``: for quick runs and tests."""


@dataclass
class NPIStepResult:
    """One batch's loss (a float), gradients, and counts of right predictions (ints), host side."""

    loss: float
    grads: dict
    counts: dict
    """``steps``, ``calls``, ``end_correct``, ``program_correct``, ``args_correct`` (the three slots summed)."""


class NPIModel:
    """The NPI of the module docstring on one backend (a name for :func:`get_backend` or an instance)."""

    def __init__(self, config: NPIConfig = PRESETS["paper"], backend="auto", dtype=None, init_scale: float = 0.1,
                 seed: int = 0):
        self.config = config
        self.backend = _resolve_backend(backend, dtype, {})
        self.dtype = self.backend.dtype
        init_scale = check_float("init_scale", init_scale, minimum=0, inclusive_min=False)
        rng = np.random.default_rng(check_int("seed", seed, minimum=0))
        self.params = {name: self.backend.asarray(rng.uniform(-init_scale, init_scale, shape))
                       for name, shape in self.param_shapes().items()}
        self._no_bias = self.backend.asarray(np.zeros(config.programs))      # key match has no bias

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        shapes = {"W_enc": (c.input_width, c.encoder), "b_enc": (c.encoder,),
                  "programs": (c.programs, c.program_embedding)}
        inputs = c.encoder + c.program_embedding
        for k in range(c.layers):
            shapes.update({f"Wx{k}": (inputs if k == 0 else c.hidden, 4 * c.hidden),
                           f"Wh{k}": (c.hidden, 4 * c.hidden), f"b{k}": (4 * c.hidden,)})
        shapes.update({"W_out": (c.hidden, sum(c.head_sizes)), "b_out": (sum(c.head_sizes),),
                       "keys": (c.key, c.programs)})
        return shapes

    # ------------------------------------------------------------ one pass

    def encode(self, observation: np.ndarray, args: np.ndarray) -> np.ndarray:
        """The encoder's one-hot input (T,B,input_width) on the host, from values (T,B,O) and arguments (T,B,3)."""
        c = self.config
        T, B = observation.shape[:2]
        onehot = np.zeros((T, B, c.input_width), self.dtype)
        rows = np.arange(T)[:, None, None], np.arange(B)[None, :, None]
        onehot[(*rows, np.arange(c.observation) * c.symbols + observation)] = 1
        onehot[(*rows, c.observation * c.symbols + np.arange(ARG_SLOTS) * ARG_VALUES + args)] = 1
        return onehot

    def forward(self, observation, args, program, state, training: bool):
        """One window of core steps: the heads' logits (end, program scores, three argument blocks), the
        core's final state, and what the backward pass needs (None unless ``training``).

        ``observation`` (T,B,O), ``args`` (T,B,3), ``program`` (T,B) are host ints; ``state`` a list of
        (h, c) backend arrays per layer (zeros: :meth:`zero_state`).
        """
        bk, P, c = self.backend, self.params, self.config
        onehot = bk.asarray(self.encode(observation, args))
        encoded = bk.tanh_forward(bk.linear_forward(onehot, P["W_enc"], P["b_enc"]))
        xs = bk.concat_last([encoded, bk.embedding_forward(P["programs"], program)])
        new_state, caches = [], []
        for k, (h0, c0) in enumerate(state):
            xs, hT, cT, cache = bk.lstm_forward(xs, h0, c0, P[f"Wx{k}"], P[f"Wh{k}"], P[f"b{k}"], training)
            new_state.append((hT, cT))
            caches.append(cache)
        end, key, *arg_logits = bk.split_last(bk.linear_forward(xs, P["W_out"], P["b_out"]), c.head_sizes)
        scores = bk.linear_forward(key, P["keys"], self._no_bias)
        saved = (onehot, encoded, program, xs, key, caches) if training else None
        return (end, scores, arg_logits), new_state, saved

    def zero_state(self, batch: int) -> list:
        zeros, H = self.backend.xp.zeros, self.config.hidden
        return [(zeros((batch, H), self.dtype), zeros((batch, H), self.dtype)) for _ in range(self.config.layers)]

    # ------------------------------------------------------------ training

    def loss_and_grads(self, batch: SequenceBatch, normalizer: float | None = None) -> NPIStepResult:
        """Forward and backward over a batch of invocation sequences, each from a zero core state: the losses
        summed over its steps and divided by ``normalizer`` (default: its number of real steps)."""
        bk, P, c = self.backend, self.params, self.config
        T, B = batch.shape
        (end, scores, arg_logits), _, saved = self.forward(batch.observation, batch.args, batch.program,
                                                           self.zero_state(B), training=True)
        onehot, encoded, program, top, key, caches = saved
        mask, call_mask = bk.asarray(batch.mask), bk.asarray(batch.call_mask)
        losses, counts = [], {}
        loss, d_end, counts["end_correct"] = bk.softmax_xent(end, batch.end, mask)
        losses.append(loss)
        loss, d_scores, counts["program_correct"] = bk.softmax_xent(scores, batch.next_program, call_mask)
        losses.append(loss)
        d_args = []
        counts["args_correct"] = 0
        for slot, logits in enumerate(arg_logits):
            loss, d_logits, correct = bk.softmax_xent(logits, np.ascontiguousarray(batch.next_args[..., slot]),
                                                      call_mask)
            losses.append(loss)
            d_args.append(d_logits)
            counts["args_correct"] += int(correct)

        grads = {}
        d_key, grads["keys"], _ = bk.linear_backward(d_scores, key, P["keys"])
        d_top, grads["W_out"], grads["b_out"] = bk.linear_backward(bk.concat_last([d_end, d_key, *d_args]), top,
                                                                   P["W_out"])
        zero = self.zero_state(B)[0]
        for k in reversed(range(c.layers)):
            d_top, grads[f"Wx{k}"], grads[f"Wh{k}"], grads[f"b{k}"], _, _ = bk.lstm_backward(d_top, *zero, caches[k])
        d_encoded, d_programs = bk.split_last(d_top, (c.encoder, c.program_embedding))
        grads["programs"] = bk.embedding_backward(d_programs, program, c.programs)
        _, grads["W_enc"], grads["b_enc"] = bk.linear_backward(bk.tanh_backward(d_encoded, encoded), onehot,
                                                               P["W_enc"])
        grads = {name: grads[name] for name in P}
        normalizer = batch.steps if normalizer is None else check_float("normalizer", normalizer, minimum=0,
                                                                         inclusive_min=False)
        bk.scale_(grads, 1.0 / normalizer)
        counts.update({name: int(value) for name, value in counts.items()})
        counts.update(steps=batch.steps, calls=int(batch.call_mask.sum()))
        return NPIStepResult(loss=sum(float(loss) for loss in losses) / normalizer, grads=grads, counts=counts)

    def counts(self, batch: SequenceBatch) -> dict:
        """Teacher-forced right predictions on a batch, without a backward pass: like ``loss_and_grads``'s counts."""
        bk = self.backend
        (end, scores, arg_logits), _, _ = self.forward(batch.observation, batch.args, batch.program,
                                                       self.zero_state(batch.shape[1]), training=False)
        real, calls = batch.mask > 0, batch.call_mask > 0
        args_correct = sum(int(((bk.to_numpy(logits).argmax(-1) == batch.next_args[..., slot]) & calls).sum())
                           for slot, logits in enumerate(arg_logits))
        return {"end_correct": int(((bk.to_numpy(end).argmax(-1) == batch.end) & real).sum()),
                "program_correct": int(((bk.to_numpy(scores).argmax(-1) == batch.next_program) & calls).sum()),
                "args_correct": args_correct, "steps": batch.steps, "calls": int(calls.sum())}

    # ------------------------------------------------------------ parameters

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: self.backend.to_numpy(array).copy() for name, array in self.params.items()}

    def load_params(self, arrays: dict) -> None:
        shapes = self.param_shapes()
        if set(arrays) != set(shapes):
            raise ValueError(f"parameters must be exactly {sorted(shapes)}, got {sorted(arrays)}")
        for name, shape in shapes.items():
            if tuple(np.shape(arrays[name])) != shape:
                raise ValueError(f"parameter {name} has shape {tuple(np.shape(arrays[name]))}, expected {shape}")
        self.params = {name: self.backend.asarray(np.asarray(arrays[name], dtype=self.dtype)) for name in shapes}
