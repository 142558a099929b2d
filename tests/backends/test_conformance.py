"""Every backend against the NumPy reference: every operation, a whole model, bad input.

Each test runs for every maker of conftest.py (one per backend and kind of
machine; a maker that cannot run here is skipped with its reason), in
float32 and float64. Inputs are fresh random numbers at odd shapes drawn by
hypothesis (down to T=1, B=1, V=1, sizes that are no multiple of any tile),
rounded to the dtype, moved to the backend, and given in float64 to
``NumpyBackend(np.float64)``. Every buffer a backend makes starts as NaN, so
an element it forgets to write shows. One comparison, :func:`check`, with the
maker's tolerance: ``max|x - ref| / max|ref|`` per array.

Besides the numbers: the backward pass never touches what the forward pass
was given or returned, a spent cache is refused, results a caller holds
survive later calls, and bad arguments raise TypeError/ValueError naming the
argument (for ids: the offending id) before any kernel runs.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from ltexec.testing import assert_relative_error_below
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltexec.backends import base, common
from ltexec.backends.common import BufferPool
from ltexec.backends.numpy.backend import NumpyBackend
from ltexec.model import LSTMModel
from ltexec.optim import SGD

REFERENCE = NumpyBackend(np.float64)
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module", autouse=True)
def poisoned_pools():
    """Every pool buffer is handed out full of NaN, so an element a backend forgets to write shows."""
    take = BufferPool.take

    def poisoned(self, shape, dtype):
        array = take(self, shape, dtype)
        array.fill(np.nan)
        return array

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BufferPool, "take", poisoned)
        yield



def each_example(**dimensions):
    """Decorator: a test of every maker and dtype that runs ``body(maker, dtype, bk, draw, **drawn)``.

    Each of the maker's drawn examples (hypothesis) gets a fresh backend
    ``bk`` and a :class:`Draw` on it with a drawn seed. An int n in
    ``dimensions`` draws a size in 1..n (at most 5 for a small maker); any
    other value is a strategy.
    """
    def decorate(body):
        @DTYPES
        def test(maker, dtype):
            strategies = {name: st.integers(1, min(value, 5) if maker.small else value)
                          if isinstance(value, int) else value for name, value in dimensions.items()}

            @settings(max_examples=maker.examples, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(seed=SEEDS, **strategies)
            def run(seed, **drawn):
                bk = maker.backend(dtype)
                body(maker, dtype, bk, Draw(bk, dtype, seed), **drawn)

            run()

        test.__name__, test.__qualname__, test.__doc__ = body.__name__, body.__qualname__, body.__doc__
        return test
    return decorate


def check(maker, name, actual, expected, dtype, floor: float = 0.0):
    """actual (a backend array or a number) within the maker's tolerance of expected (float64 NumPy)."""
    assert_relative_error_below(name, host(actual), expected, maker.tolerance(dtype), floor)


def host(array) -> np.ndarray:
    """A float64 NumPy copy of a backend array or a number."""
    if hasattr(array, "get"):      # CuPy
        array = array.get()
    return np.array(array, dtype=np.float64)


class Draw:
    """Random host arrays of one dtype, each also as a backend array and in float64 for the reference."""

    def __init__(self, backend, dtype, seed):
        self.backend, self.dtype, self.rng = backend, np.dtype(dtype), np.random.default_rng(seed)

    def uniform(self, shape, scale=1.0):
        """(backend array, float64 reference array) of the same numbers in [-scale, scale]."""
        values = self.rng.uniform(-scale, scale, shape).astype(self.dtype)
        return self.backend.asarray(values.copy()), values.astype(np.float64)

    def ids(self, V, shape):
        """(backend ids, host ids) in [0, V)."""
        ids = self.rng.integers(0, V, shape)
        return self.backend.asarray(ids.copy()), ids

    def layer(self, T, B, D, H):
        """(backend, reference) lists of xs, h0, c0, Wx, Wh, b with the gates in their useful range."""
        pairs = [self.uniform((T, B, D)), self.uniform((B, H)), self.uniform((B, H)),
                 self.uniform((D, 4 * H), 0.7), self.uniform((H, 4 * H), 0.7), self.uniform((4 * H,), 0.5)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def output_grads(self, T, B, H):
        """(backend, reference) lists of what the loss sends into a layer: dhs (T,B,H), dhT, dcT (B,H)."""
        pairs = [self.uniform((T, B, H)), self.uniform((B, H)), self.uniform((B, H))]
        return [p[0] for p in pairs], [p[1] for p in pairs]


LAYER_OUTPUTS = ("hs", "hT", "cT")
LAYER_GRADS = ("dxs", "dWx", "dWh", "db", "dh0", "dc0")
EMBEDDING_LAYER_GRADS = ("dE",) + LAYER_GRADS[1:]


def check_all(maker, names, actual, expected, dtype, floors=None):
    for name, a, e in zip(names, actual, expected):
        check(maker, name, a, e, dtype, (floors or {}).get(name, 0.0))


def product_floors(dxs_ref, dh0_ref) -> dict:
    """dxs and dh0 are both da times a weight matrix of one scale (4H terms a value): each is measured
    against the larger of the two, so that cancellation in a small sum (H=1) is not taken for an error."""
    scale = max(float(np.abs(dxs_ref).max()), float(np.abs(dh0_ref).max()))
    return {"dxs": scale, "dh0": scale}


def check_dtypes(backend, arrays, names):
    for name, a in zip(names, arrays):
        assert a.dtype == backend.dtype, f"{name} has dtype {a.dtype}"


# --------------------------------------------------------------- LSTM layer

@each_example(T=6, B=13, D=13, H=13)
def test_lstm_layer_matches_reference(maker, dtype, bk, draw, T, B, D, H):
    """Forward (training) and backward; neither touches what forward was given or returned."""
    inputs, inputs_ref = draw.layer(T, B, D, H)
    grads_in, grads_in_ref = draw.output_grads(T, B, H)
    *outputs, cache = bk.lstm_forward(*inputs, training=True)
    *outputs_ref, cache_ref = REFERENCE.lstm_forward(*inputs_ref, training=True)
    check_all(maker, LAYER_OUTPUTS, outputs, outputs_ref, dtype)
    kept = [host(a) for a in inputs + outputs + grads_in[1:]]

    grads = bk.lstm_backward(*grads_in, cache)
    grads_ref = REFERENCE.lstm_backward(*grads_in_ref, cache_ref)
    check_all(maker, LAYER_GRADS, grads, grads_ref, dtype, product_floors(grads_ref[0], grads_ref[4]))
    check_dtypes(bk, grads, LAYER_GRADS)
    for a, before in zip(inputs + outputs + grads_in[1:], kept):   # dhs alone may be overwritten
        np.testing.assert_array_equal(host(a), before)
    if maker.consumes_cache:
        with pytest.raises(ValueError, match="already used"):
            bk.lstm_backward(*grads_in, cache)


@each_example(T=6, B=13, D=13, H=13)
def test_lstm_forward_without_training_matches_reference(maker, dtype, bk, draw, T, B, D, H):
    inputs, inputs_ref = draw.layer(T, B, D, H)
    *outputs, cache = bk.lstm_forward(*inputs, training=False)
    assert cache is None
    check_all(maker, LAYER_OUTPUTS, outputs, REFERENCE.lstm_forward(*inputs_ref, training=False)[:3], dtype)


@each_example(T=6, B=13, H=13, V=6, other_ids=st.booleans())
def test_first_layer_on_the_embedding_matches_reference(maker, dtype, bk, draw, T, B, H, V, other_ids):
    """embedding_lstm_forward/backward equal the embedding and the layer run one after the other.

    E changes in place between the passes (as an optimizer step would): the
    backward pass still sees the rows the forward pass looked up. The ids
    given to the backward pass are those of the forward pass, or others
    (then dE sums the layer's input gradients by those).
    """
    E, E_ref = draw.uniform((V, H))
    x, x_host = draw.ids(V, (T, B))
    ids, ids_host = draw.ids(V, (T, B)) if other_ids else (x, x_host)
    (_, *state_and_weights), (_, *state_and_weights_ref) = draw.layer(T, B, H, H)
    grads_in, grads_in_ref = draw.output_grads(T, B, H)
    *outputs, cache = bk.embedding_lstm_forward(E, x, *state_and_weights, training=True)
    xs_ref = REFERENCE.embedding_forward(E_ref, x_host)
    *outputs_ref, cache_ref = REFERENCE.lstm_forward(xs_ref, *state_and_weights_ref, training=True)
    check_all(maker, LAYER_OUTPUTS, outputs, outputs_ref, dtype)
    E += 1.0

    grads = bk.embedding_lstm_backward(*grads_in, cache, ids, V)
    dxs_ref, *grads_ref = REFERENCE.lstm_backward(*grads_in_ref, cache_ref)
    grads_ref = [REFERENCE.embedding_backward(dxs_ref, ids_host, V)] + grads_ref
    # dE sums the rows of dxs by id (all T*B of them when V is 1): measured against the size of
    # those rows, so that cancellation in a small sum is not taken for an error.
    check(maker, "dE", grads[0], grads_ref[0], dtype, floor=float(np.abs(dxs_ref).max()))
    check_all(maker, EMBEDDING_LAYER_GRADS[1:], grads[1:], grads_ref[1:], dtype, product_floors(dxs_ref, grads_ref[4]))
    check_dtypes(bk, grads, EMBEDDING_LAYER_GRADS)


# --------------------------------------------------------- embedding, output

@each_example(T=6, B=13, D=13, V=13)
def test_embedding_matches_reference(maker, dtype, bk, draw, T, B, D, V):
    (E, E_ref), (x, x_host), (dxs, dxs_ref) = draw.uniform((V, D)), draw.ids(V, (T, B)), draw.uniform((T, B, D))
    check(maker, "xs", bk.embedding_forward(E, x), REFERENCE.embedding_forward(E_ref, x_host), dtype)
    check(maker, "dE", bk.embedding_backward(dxs, x, V), REFERENCE.embedding_backward(dxs_ref, x_host, V), dtype,
          floor=float(np.abs(dxs_ref).max()))    # a sum of rows by id: measured against their size


@each_example(T=6, B=13, H=13, V=13)
def test_linear_matches_reference(maker, dtype, bk, draw, T, B, H, V):
    (hs, hs_ref), (W, W_ref), (b, b_ref) = draw.uniform((T, B, H)), draw.uniform((H, V)), draw.uniform((V,))
    dlogits, dlogits_ref = draw.uniform((T, B, V))
    # Each output is a sum of products (over H, V or T*B terms) that may cancel: measured against the same
    # sums of the terms' magnitudes (the reference on absolute values), not only against the result.
    magnitudes = REFERENCE.linear_forward(np.abs(hs_ref), np.abs(W_ref), np.abs(b_ref))
    check(maker, "logits", bk.linear_forward(hs, W, b), REFERENCE.linear_forward(hs_ref, W_ref, b_ref), dtype,
          floor=float(magnitudes.max()))
    grads = bk.linear_backward(dlogits, hs, W)
    floors = dict(zip(("dhs", "dW", "db"), (float(m.max()) for m in REFERENCE.linear_backward(
        np.abs(dlogits_ref), np.abs(hs_ref), np.abs(W_ref)))))
    check_all(maker, ("dhs", "dW", "db"), grads, REFERENCE.linear_backward(dlogits_ref, hs_ref, W_ref), dtype,
              floors)
    check_dtypes(bk, grads, ("dhs", "dW", "db"))


@each_example(T=6, B=13, N=13)
def test_tanh_matches_reference(maker, dtype, bk, draw, T, B, N):
    (x, x_ref), (dy, dy_ref) = draw.uniform((T, B, N), 3.0), draw.uniform((T, B, N))
    y, y_ref = bk.tanh_forward(x), REFERENCE.tanh_forward(x_ref)
    check(maker, "y", y, np.tanh(x_ref), dtype)
    dx = bk.tanh_backward(dy, y)
    check(maker, "dx", dx, REFERENCE.tanh_backward(dy_ref, y_ref), dtype, floor=float(np.abs(dy_ref).max()))
    check_dtypes(bk, (y, dx), ("y", "dx"))
    np.testing.assert_array_equal(host(x), x_ref)                   # the input is left as it was


@each_example(T=6, B=13, sizes=st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_concat_and_split_along_the_last_axis_are_exact_inverses(maker, dtype, bk, draw, T, B, sizes):
    pieces = [draw.uniform((T, B, n)) for n in sizes]
    out = bk.concat_last([piece for piece, _ in pieces])
    np.testing.assert_array_equal(host(out), np.concatenate([ref for _, ref in pieces], axis=-1))
    parts = bk.split_last(out, sizes)
    assert [tuple(part.shape) for part in parts] == [(T, B, n) for n in sizes]
    for part, (_, ref) in zip(parts, pieces):
        np.testing.assert_array_equal(host(part), ref)
    check_dtypes(bk, [out, *parts], ["out", *(f"parts[{k}]" for k in range(len(parts)))])
    parts[0][...] = 0                                               # fresh arrays, not views of out
    np.testing.assert_array_equal(host(out), np.concatenate([ref for _, ref in pieces], axis=-1))


@each_example(R=7, C=7)
def test_add_gathers_gradients_in_place(maker, dtype, bk, draw, R, C):
    (a, a_ref), (b, b_ref), (v, v_ref) = draw.uniform((R, C)), draw.uniform((C,)), draw.uniform((R, C))
    grads, more = {"a": a, "b": b}, {"a": v, "b": bk.asarray(np.ones(C, dtype))}
    bk.add_(grads, more)
    assert grads["a"] is a and grads["b"] is b                     # in place
    check(maker, "a", a, a_ref + v_ref, dtype)
    check(maker, "b", b, b_ref + 1, dtype)
    np.testing.assert_array_equal(host(v), v_ref)                   # what was added is left as it was
    with pytest.raises(ValueError, match=r"more must name the same arrays as grads: \['a'\] vs \['a', 'b'\]"):
        bk.add_(grads, {"a": v})
    with pytest.raises(ValueError, match=r"more\['b'\] has shape"):
        bk.add_(grads, {"a": v, "b": v})


def test_activation_and_concatenation_reject_bad_input(maker):
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=0)
    x, other = draw.uniform((2, 3, 4))[0], draw.uniform((2, 4, 4))[0]
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 4\), expected \(2, 3, 4\)"):
        bk.tanh_backward(other, x)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        bk.tanh_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"parts\[1\] has shape \(2, 4, 4\), expected \(2, 3, any\)"):
        bk.concat_last([x, other])
    with pytest.raises(ValueError, match="parts must be a non-empty list of arrays"):
        bk.concat_last([])
    with pytest.raises(ValueError, match=r"sizes \[1, 2\] sum to 3, x's last axis has 4"):
        bk.split_last(x, [1, 2])
    with pytest.raises(ValueError, match=r"sizes must be a non-empty list of positive integers, got \[4, 0\]"):
        bk.split_last(x, [4, 0])


@each_example(T=6, B=13, V=13, ties=st.booleans())
def test_softmax_xent_matches_reference(maker, dtype, bk, draw, T, B, V, ties):
    """Loss, gradient and the count of correct argmaxes; with ties the first maximum counts.

    The loss is a sum of per-position terms, so its error is measured
    against at least 1 (one confident position may give a tiny loss whose
    last bits are all that differ).
    """
    rng = draw.rng
    # With ties, logits are small integers, so rows have several maxima: the first one counts.
    logits = (rng.integers(-2, 3, (T, B, V)) if ties else rng.normal(0, 3, (T, B, V))).astype(dtype)
    y = rng.integers(0, V, (T, B))
    mask = (rng.random((T, B)) < 0.5).astype(dtype)
    loss, dlogits, correct = bk.softmax_xent(bk.asarray(logits), bk.asarray(y), bk.asarray(mask))
    loss_ref, dlogits_ref, correct_ref = REFERENCE.softmax_xent(logits.astype(np.float64), y,
                                                                mask.astype(np.float64))
    assert np.ndim(loss) == np.ndim(correct) == 0          # backend scalars, read here
    assert np.dtype(loss.dtype).kind == "f" and np.dtype(correct.dtype).kind == "i"
    loss, correct = float(loss), int(correct)
    assert correct == correct_ref
    check(maker, "loss", loss, loss_ref, dtype, floor=1.0)
    check(maker, "dlogits", dlogits, dlogits_ref, dtype)


# ----------------------------------------------------------------- optimizer

@each_example(n=st.lists(st.integers(1, 13), min_size=1, max_size=4), momentum=st.sampled_from([0.0, 0.9]),
              factor=st.floats(0.01, 2.0), clip=st.sampled_from([0.05, 1.0, 100.0]))
def test_optimizer_ops_match_reference(maker, dtype, bk, draw, n, momentum, factor, clip):
    """The norm, scaling, and the clipped update (clipping or not, with and without momentum)."""
    shapes = [(size,) if k % 2 else (size, n[0]) for k, size in enumerate(n)]
    arrays = [{f"p{k}": draw.uniform(s) for k, s in enumerate(shapes)} for _ in range(3)]
    params, grads, velocity = ({name: pair[0] for name, pair in d.items()} for d in arrays)
    params_ref, grads_ref, velocity_ref = ({name: pair[1] for name, pair in d.items()} for d in arrays)

    check(maker, "norm", bk.global_norm(grads), REFERENCE.global_norm(grads_ref), dtype)
    bk.scale_(grads, factor)
    REFERENCE.scale_(grads_ref, factor)
    for name in params:
        check(maker, f"grads[{name}]", grads[name], grads_ref[name], dtype)
    norm = bk.clipped_sgd_update_(params, grads, velocity if momentum else None, 0.3, momentum, clip)
    norm_ref = REFERENCE.clipped_sgd_update_(params_ref, grads_ref, velocity_ref if momentum else None, 0.3,
                                             momentum, clip)
    assert np.ndim(norm) == 0
    check(maker, "norm of the update", float(norm), float(norm_ref), dtype)
    for name in params:
        check(maker, f"clipped grads[{name}]", grads[name], grads_ref[name], dtype)
        check(maker, f"params[{name}]", params[name], params_ref[name], dtype)
        check(maker, f"velocity[{name}]", velocity[name], velocity_ref[name], dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_non_finite_norm_skips_the_update(maker, bad, momentum):
    """Parameters, velocity and gradients keep every bit; the returned norm says why."""
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=1)
    params, grads, velocity = ({"w": draw.uniform((3, 4))[0], "b": draw.uniform((4,))[0]} for _ in range(3))
    grads["b"][1:2] = bad
    arrays = {**{f"p{k}": a for k, a in params.items()}, **{f"g{k}": a for k, a in grads.items()},
              **{f"v{k}": a for k, a in velocity.items()}}
    kept = {name: bk.to_numpy(a).copy() for name, a in arrays.items()}
    norm = bk.clipped_sgd_update_(params, grads, velocity if momentum else None, 0.5, momentum, 1.0)
    assert not np.isfinite(float(norm))
    for name, a in arrays.items():
        np.testing.assert_array_equal(bk.to_numpy(a), kept[name], err_msg=name)


# ---------------------------------------------------------------- whole model

def model_pair(maker, dtype, V, hidden, layers, seed):
    """The model on the maker's backend and the float64 reference model with the same (rounded) parameters."""
    model = LSTMModel(V, hidden, layers, backend=maker.backend(dtype), init_scale=0.5, seed=seed)
    reference = LSTMModel(V, hidden, layers, backend=NumpyBackend(np.float64), init_scale=0.5, seed=seed)
    reference.load_params(model.state_dict())
    return model, reference


@DTYPES
def test_training_steps_match_reference(maker, dtype):
    """Two loss_and_grads + clipped SGD steps through LSTMModel (state carried) give the reference's numbers."""
    V = 11
    for layers, hidden, batch, window in maker.model_cases:
        models = dict(zip(("backend", "reference"), model_pair(maker, dtype, V, hidden, layers, seed=3)))
        optimizers = {name: SGD(lr=0.5, momentum=0.9, clip=1.0) for name in models}
        states = {name: None for name in models}
        rng = np.random.default_rng(layers * 100 + hidden)
        for step in range(2):
            x, y = rng.integers(0, V, (window, batch)), rng.integers(0, V, (window, batch))
            mask = (rng.random((window, batch)) < 0.5).astype(dtype)
            mask[0, 0] = 1.0
            results, norms = {}, {}
            for name, model in models.items():
                results[name] = model.loss_and_grads(x, y, mask, states[name])
                norms[name] = optimizers[name].step(model.backend, model.params, results[name].grads)
                states[name] = results[name].state
            got, want = results["backend"], results["reference"]
            where = f"{layers}x{hidden}, batch {batch}, window {window}, step {step}"
            assert got.correct == want.correct and got.count == want.count, where
            check(maker, f"{where}: loss", got.loss, want.loss, dtype, floor=1.0)
            check(maker, f"{where}: norm", norms["backend"], norms["reference"], dtype)
            for name in want.grads:
                check(maker, f"{where}: grads[{name}]", got.grads[name], want.grads[name], dtype)
                check(maker, f"{where}: params[{name}]", models["backend"].params[name],
                      models["reference"].params[name], dtype)
            for k in range(layers):
                for part in range(2):
                    check(maker, f"{where}: state[{k}][{part}]", got.state[k][part], want.state[k][part], dtype)
                    check(maker, f"{where}: dstate[{k}][{part}]", got.dstate[k][part], want.dstate[k][part], dtype)


@DTYPES
def test_inference_and_greedy_decoding_match_reference(maker, dtype):
    V, H = 6, 4
    model, reference = model_pair(maker, dtype, V, H, layers=2, seed=4)
    rng = np.random.default_rng(1)
    x = rng.integers(0, V, (3, 2))
    (logits, state), (logits_ref, state_ref) = model.forward(x, None), reference.forward(x, None)
    check(maker, "logits", logits, logits_ref, dtype)
    check(maker, "h", state[1][0], state_ref[1][0], dtype)
    prompts, lengths = rng.integers(0, V, (3, 2)), np.array([3, 2])
    answers = model.greedy_decode(prompts, lengths, max_answer_len=2, stop_id=0)
    expected = reference.greedy_decode(prompts, lengths, max_answer_len=2, stop_id=0)
    for a, e in zip(answers, expected):
        np.testing.assert_array_equal(a, e)


def test_held_results_survive_later_steps(maker):
    """Buffer reuse never overwrites arrays a caller still holds (gradients, state, logits)."""
    V, T, B, H, layers = (7, 2, 1, 2, 1) if maker.small else (7, 4, 3, 5, 2)
    model = LSTMModel(V, hidden=H, layers=layers, backend=maker.backend(np.float64), seed=1)
    rng = np.random.default_rng(0)
    x, y, mask = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B)), np.ones((T, B))
    first = model.loss_and_grads(x, y, mask, None)
    kept = {name: host(g) for name, g in first.grads.items()}
    kept_state = [(host(h), host(c)) for h, c in first.state]
    logits, _ = model.forward(x, None)
    kept_logits = logits.copy()
    for _ in range(1 if maker.small else 2):
        model.loss_and_grads(x, y, mask, first.state)
        model.forward(x, None)
    for name, g in first.grads.items():
        np.testing.assert_array_equal(host(g), kept[name])
    for (h, c), (h_kept, c_kept) in zip(first.state, kept_state):
        np.testing.assert_array_equal(host(h), h_kept)
        np.testing.assert_array_equal(host(c), c_kept)
    np.testing.assert_array_equal(logits, kept_logits)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("given", ["backend", "host"])
@pytest.mark.parametrize("bad", [5, 9, -1])
def test_ids_outside_the_vocabulary_are_a_value_error_naming_the_id(maker, bad, given):
    """Wherever ids enter a backend: the embedding, the first layer (both ways) and the loss's targets.

    Ids may come as backend arrays or as host arrays (checked on the host, then uploaded).
    """
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=0)
    T, B, V, H = 2, 3, 5, 4
    x_host = np.array([[0, 1, 2], [3, 4, 0]])
    x_host[1, 2] = bad
    x = bk.asarray(x_host) if given == "backend" else x_host
    message = rf"x holds ids outside \[0, {V}\): {bad}$"
    E = draw.uniform((V, H))[0]
    (_, *state_and_weights), _ = draw.layer(T, B, H, H)
    grads_in = draw.output_grads(T, B, H)[0]
    with pytest.raises(ValueError, match=message):
        bk.embedding_forward(E, x)
    with pytest.raises(ValueError, match=message):
        bk.embedding_backward(draw.uniform((T, B, H))[0], x, V)
    with pytest.raises(ValueError, match=message):
        bk.embedding_lstm_forward(E, x, *state_and_weights, training=True)
    cache = bk.embedding_lstm_forward(E, draw.ids(V, (T, B))[0], *state_and_weights, training=True)[3]
    with pytest.raises(ValueError, match=message):
        bk.embedding_lstm_backward(*grads_in, cache, x, V)
    logits, mask = draw.uniform((T, B, V))[0], bk.asarray(np.ones((T, B), np.float32))
    with pytest.raises(ValueError, match=rf"y holds ids outside \[0, {V}\): {bad}$"):
        bk.softmax_xent(logits, x, mask)


def test_ids_must_be_int64_arrays_of_the_right_shape(maker):
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=0)
    E = draw.uniform((5, 3))[0]
    with pytest.raises(TypeError, match="x must have dtype int64"):
        bk.embedding_forward(E, bk.asarray(np.array([[0, 1]], dtype=np.int32)))
    with pytest.raises(TypeError, match="x must be a"):
        bk.embedding_forward(E, [[0, 1]])
    with pytest.raises(ValueError, match=r"x has shape \(1, 3\), expected \(1, 2\)"):
        bk.embedding_backward(draw.uniform((1, 2, 3))[0], bk.asarray(np.array([[0, 1, 2]])), 5)
    logits, mask = draw.uniform((1, 2, 5))[0], bk.asarray(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 1\)"):
        bk.softmax_xent(logits, bk.asarray(np.array([[0, 1]])), mask[:, :1].copy())


LSTM_FORWARD_BAD_INPUT = [
    (0, lambda a: a.astype(np.float64), TypeError, "xs must have dtype float32"),
    (0, lambda a: a.tolist(), TypeError, "xs must be a"),
    (0, lambda a: a[:, :, :2].copy(), ValueError, r"Wx has shape \(4, 20\), expected \(2, 20\)"),   # narrower xs
    (0, lambda a: a.transpose(1, 0, 2), ValueError, "xs must be C-contiguous"),
    (0, lambda a: a[:0], ValueError, "xs must not be empty"),
    (1, lambda a: a[:1], ValueError, r"h0 has shape \(1, 5\), expected \(2, 5\)"),
    (2, lambda a: a.T.copy(), ValueError, "c0 has shape"),
    (3, lambda a: a[:, ::2], ValueError, "Wx has shape"),
    (4, lambda a: a[:, :-1].copy(), ValueError, r"Wh has shape \(5, 19\), expected \(5, 20\)"),
    (5, lambda a: a[None], ValueError, r"b has shape \(1, 20\), expected \(20,\)"),
    (5, lambda a: a[:-1].copy(), ValueError, r"b has shape \(19,\), expected \(20,\)"),
]


@pytest.mark.parametrize("position, bad, error, message", LSTM_FORWARD_BAD_INPUT)
def test_lstm_forward_rejects_bad_input(maker, position, bad, error, message):
    bk = maker.backend(np.float32)
    arguments = Draw(bk, np.float32, seed=0).layer(3, 2, 4, 5)[0]
    arguments[position] = bad(arguments[position])
    with pytest.raises(error, match=message):
        bk.lstm_forward(*arguments, training=True)


def test_lstm_backward_rejects_bad_input(maker):
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=0)
    *_, cache = bk.lstm_forward(*draw.layer(3, 2, 4, 5)[0], training=True)
    dhs, dhT, dcT = draw.output_grads(3, 2, 5)[0]
    with pytest.raises(TypeError, match="cache must come from" if maker.consumes_cache else None):
        bk.lstm_backward(dhs, dhT, dcT, None)
    with pytest.raises(ValueError, match=r"dhs has shape \(2, 2, 5\), expected \(3, 2, 5\)"):
        bk.lstm_backward(dhs[:-1].copy(), dhT, dcT, cache)
    with pytest.raises(TypeError, match="dcT must have dtype float32"):
        bk.lstm_backward(dhs, dhT, dcT.astype(np.float64), cache)
    bk.lstm_backward(dhs, dhT, dcT, cache)      # the cache survives refused calls


def test_output_and_optimizer_ops_reject_bad_input(maker):
    bk = maker.backend(np.float32)
    draw = Draw(bk, np.float32, seed=0)
    hs, W, b = draw.uniform((2, 3, 4))[0], draw.uniform((4, 6))[0], draw.uniform((6,))[0]
    with pytest.raises(ValueError, match=r"b has shape \(5,\), expected \(6,\)"):
        bk.linear_forward(hs, W, b[:5].copy())
    with pytest.raises(ValueError, match=r"W has shape \(3, 6\), expected \(4, any\)"):
        bk.linear_backward(draw.uniform((2, 3, 6))[0], hs, W[:3].copy())
    params = {"w": draw.uniform((2, 3))[0]}
    with pytest.raises(TypeError, match=r"grads\['w'\] must have dtype float32"):
        bk.global_norm({"w": params["w"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(3, 2\), expected \(2, 3\)"):
        bk.clipped_sgd_update_(params, {"w": draw.uniform((3, 2))[0]}, None, 0.1, 0.0, 5.0)
    with pytest.raises(ValueError, match="contiguous"):
        bk.scale_({"w": draw.uniform((3, 4))[0][:, ::2]}, 0.5)


def test_arguments_are_checked_once_per_call_not_per_step(maker, monkeypatch):
    """The layer's checks happen on entry; the step loop (T launches) runs unchecked."""
    checked = []

    def counting(name, *args):
        checked.append(name)
        return common.check_array(name, *args)

    monkeypatch.setattr(base, "check_array", counting)
    kernels = sys.modules.get("ltexec.backends.numba_cuda.kernels")
    if kernels is not None:
        monkeypatch.setattr(kernels, "check_array", counting)
    bk = maker.backend(np.float32)
    counts = {}
    for T in (1, 5):
        draw = Draw(bk, np.float32, seed=T)
        checked.clear()
        *_, cache = bk.lstm_forward(*draw.layer(T, 2, 3, 4)[0], training=True)
        forward = len(checked)
        grads_in = draw.output_grads(T, 2, 4)[0]
        checked.clear()
        bk.lstm_backward(*grads_in, cache)
        counts[T] = (forward, len(checked))
    assert counts[1] == counts[5] and min(counts[1]) > 0, counts



def test_device_makers_draw_at_most_the_examples_asked_for():
    """``pytest --device-examples N`` (what benchmarks/gpu_check.py passes) caps the GPU makers' examples only."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("conformance_makers", Path(__file__).with_name("conftest.py"))
    makers = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = makers                  # dataclasses look their module up there
    try:
        spec.loader.exec_module(makers)
    finally:
        del sys.modules[spec.name]
    from dataclasses import replace
    maker = makers.MAKERS[0]
    suite = [replace(maker, id="device", gpu=True, examples=20), replace(maker, id="host", gpu=False, examples=20),
             replace(maker, id="device-few", gpu=True, examples=2)]
    assert [(m.id, m.examples) for m in makers.device_examples(suite, 3)] == [("device", 3), ("host", 20),
                                                                              ("device-few", 2)]
    assert makers.device_examples(suite, None) == suite
    with pytest.raises(pytest.UsageError, match="--device-examples must be at least 1, got 0"):
        makers.device_examples(suite, 0)
