"""The model on the NumPy reference: shapes, input checks, determinism, precision, state carry, decoding."""

import numpy as np
import pytest

from ltexec.backends import BACKENDS, get_backend
from ltexec.model import LSTMModel
from ltexec.testing import relative_error

V, H, LAYERS = 11, 6, 2


def make_model(**kwargs):
    options = {"hidden": H, "layers": LAYERS, "backend": "numpy", "seed": 3}
    options.update(kwargs)
    return LSTMModel(V, **options)


def make_window(rng, T=4, B=3):
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    mask = (rng.random((T, B)) < 0.6).astype(np.float32)
    mask[0, 0] = 1
    return x, y, mask


def random_state(rng, B, layers=LAYERS, hidden=H):
    return [(rng.uniform(-1, 1, (B, hidden)), rng.uniform(-1, 1, (B, hidden))) for _ in range(layers)]





# ------------------------------------------------------------------ parameters

def test_parameters_have_the_documented_names_shapes_and_range():
    model = make_model(layers=3, init_scale=0.05)
    assert list(model.params) == ["embed", "Wx0", "Wh0", "b0", "Wx1", "Wh1", "b1", "Wx2", "Wh2", "b2", "Wy", "by"]
    for name, shape in model.param_shapes().items():
        p = model.params[name]
        assert p.shape == shape and p.dtype == np.float32
        assert np.abs(p).max() <= 0.05 and np.unique(p).size > p.size // 2
    assert model.params["Wx0"].shape == (H, 4 * H) and model.params["Wy"].shape == (H, V)


def test_parameters_are_drawn_in_a_fixed_order_from_the_seed():
    params = make_model(dtype=np.float64, init_scale=0.08).params
    rng = np.random.default_rng(3)
    for name, p in params.items():
        np.testing.assert_array_equal(p, rng.uniform(-0.08, 0.08, p.shape), err_msg=name)


def test_forget_bias_is_added_to_every_forget_gate_after_the_same_draws():
    plain = make_model(dtype=np.float64, layers=2)
    biased = make_model(dtype=np.float64, layers=2, forget_bias=1.0)
    for name, p in plain.params.items():
        expected = p.copy()
        if name.startswith("b") and name != "by":
            expected[H:2 * H] += 1.0                      # gate blocks i, f, g, o
        np.testing.assert_array_equal(biased.params[name], expected, err_msg=name)


def test_same_seed_same_model_and_results_other_seed_differs():
    rng = np.random.default_rng(0)
    x, y, mask = make_window(rng)
    first, second, other = make_model(), make_model(), make_model(seed=4)
    a = first.loss_and_grads(x, y, mask, None)
    b = second.loss_and_grads(x, y, mask, None)
    again = first.loss_and_grads(x, y, mask, None)
    assert a.loss == b.loss == again.loss
    for name in a.grads:
        np.testing.assert_array_equal(a.grads[name], b.grads[name])
        np.testing.assert_array_equal(a.grads[name], again.grads[name])
    assert not np.array_equal(first.params["Wh1"], other.params["Wh1"])


def test_state_dict_round_trip_and_copies():
    source, target = make_model(seed=1), make_model(seed=2)
    saved = source.state_dict()
    saved["by"] += 1.0                      # a copy: the model is untouched
    assert not np.array_equal(saved["by"], source.params["by"])
    target.load_params(source.state_dict())
    x = np.random.default_rng(0).integers(0, V, (3, 2))
    np.testing.assert_array_equal(target.forward(x, None)[0], source.forward(x, None)[0])


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("Wh1"), r"missing \['Wh1'\]"),
    (lambda p: p.update(extra=np.zeros(3)), r"unexpected \['extra'\]"),
    (lambda p: p.update(b0=np.zeros(5)), r"parameter 'b0' has shape \(5,\), expected \(24,\)"),
    (lambda p: p.update(Wy=np.zeros((H, V), np.int32)), r"parameter 'Wy' must be a floating-point array"),
    (lambda p: p.update(embed=np.full((V, H), np.nan)), r"parameter 'embed' holds non-finite values"),
])
def test_load_params_rejects_mismatches_and_changes_nothing(change, message):
    model = make_model()
    before = model.state_dict()
    params = make_model(seed=9).state_dict()
    change(params)
    with pytest.raises(ValueError, match=message):
        model.load_params(params)
    for name, p in before.items():
        np.testing.assert_array_equal(model.params[name], p)


def test_load_params_accepts_float64_into_float32():
    model = make_model()
    params = {name: p.astype(np.float64) * 0.5 for name, p in model.state_dict().items()}
    model.load_params(params)
    assert model.params["Wx0"].dtype == np.float32
    np.testing.assert_allclose(model.params["Wx0"], params["Wx0"], rtol=1e-7)


# ------------------------------------------------------------------ one window

def test_loss_and_grads_shapes_and_counts():
    rng = np.random.default_rng(1)
    x, y, mask = make_window(rng, T=5, B=4)
    model = make_model()
    result = model.loss_and_grads(x, y, mask, model.zero_state(4))
    for name, p in model.params.items():
        assert result.grads[name].shape == p.shape and result.grads[name].dtype == np.float32, name
    assert len(result.state) == len(result.dstate) == LAYERS
    for (h, c), (dh, dc) in zip(result.state, result.dstate):
        assert h.shape == c.shape == dh.shape == dc.shape == (4, H)
    assert result.count == int(mask.sum()) and 0 <= int(result.correct) <= result.count
    assert np.ndim(result.loss) == np.ndim(result.correct) == 0 and float(result.loss) > 0   # backend scalars


def test_loss_is_masked_cross_entropy_over_the_batch_size():
    rng = np.random.default_rng(2)
    x, y, mask = make_window(rng, T=6, B=5)
    model = make_model(dtype=np.float64, init_scale=0.5)
    logits, _ = model.forward(x, None)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, y[..., None], -1)[..., 0]
    result = model.loss_and_grads(x, y, mask, None)
    assert result.loss == pytest.approx(-(picked * mask).sum() / 5, rel=1e-12)
    assert result.correct == int(((logits.argmax(-1) == y) & (mask == 1)).sum())
    assert result.correct > 0


def test_loss_and_gradients_do_not_grow_with_the_batch():
    rng = np.random.default_rng(3)
    x, y, mask = make_window(rng, T=4, B=3)
    model = make_model(dtype=np.float64)
    single = model.loss_and_grads(x, y, mask, None)
    doubled = model.loss_and_grads(np.tile(x, 2), np.tile(y, 2), np.tile(mask, 2), None)
    assert doubled.loss == pytest.approx(single.loss, rel=1e-12)
    assert doubled.count == 2 * single.count
    for name in single.grads:
        np.testing.assert_allclose(doubled.grads[name], single.grads[name], rtol=1e-10, atol=1e-15)


def test_masked_positions_do_not_affect_loss_or_gradients():
    rng = np.random.default_rng(4)
    x, y, mask = make_window(rng, T=5, B=3)
    mask[2] = 0
    model = make_model(dtype=np.float64)
    changed = y.copy()
    changed[2] = (changed[2] + 1) % V
    a = model.loss_and_grads(x, y, mask, None)
    b = model.loss_and_grads(x, changed, mask, None)
    assert a.loss == b.loss
    for name in a.grads:
        np.testing.assert_array_equal(a.grads[name], b.grads[name])


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(5)
    x, y, mask = make_window(rng, T=8, B=4)
    state = random_state(rng, 4)
    single = make_model(dtype=np.float32, init_scale=0.5).loss_and_grads(x, y, mask, state)
    double = make_model(dtype=np.float64, init_scale=0.5).loss_and_grads(x, y, mask, state)
    assert single.loss == pytest.approx(double.loss, rel=1e-5)
    for name in double.grads:
        assert relative_error(single.grads[name], double.grads[name]) < 1e-4, name
    for (dh32, dc32), (dh64, dc64) in zip(single.dstate, double.dstate):
        assert relative_error(dh32, dh64) < 1e-4 and relative_error(dc32, dc64) < 1e-4


def test_large_logits_give_finite_results_without_warnings():
    model = make_model(dtype=np.float32)
    model.params["Wy"][...] = 1e4            # logits in the hundreds of thousands
    x = np.random.default_rng(6).integers(0, V, (3, 2))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        result = model.loss_and_grads(x, x, np.ones((3, 2)), None)
    assert np.isfinite(result.loss)
    assert all(np.isfinite(g).all() for g in result.grads.values())


# ------------------------------------------------------------------ state carry

def test_two_windows_with_carried_state_equal_one_long_window():
    rng = np.random.default_rng(7)
    x, y, mask = make_window(rng, T=7, B=3)
    model = make_model(dtype=np.float64, init_scale=0.5)
    start = random_state(rng, 3)
    logits, end = model.forward(x, start)
    first, middle = model.forward(x[:3], start)
    second, split_end = model.forward(x[3:], middle)
    np.testing.assert_allclose(np.concatenate([first, second]), logits, rtol=1e-12, atol=1e-14)
    for (h, c), (h2, c2) in zip(end, split_end):
        np.testing.assert_allclose(h2, h, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c2, c, rtol=1e-12, atol=1e-14)

    whole = model.loss_and_grads(x, y, mask, start)
    part1 = model.loss_and_grads(x[:3], y[:3], mask[:3], start)
    part2 = model.loss_and_grads(x[3:], y[3:], mask[3:], part1.state)
    assert part1.loss + part2.loss == pytest.approx(whole.loss, rel=1e-12)
    assert part1.correct + part2.correct == whole.correct
    for (h, c), (h2, c2) in zip(whole.state, part2.state):
        np.testing.assert_allclose(h2, h, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c2, c, rtol=1e-12, atol=1e-14)


def test_carried_state_changes_the_result():
    rng = np.random.default_rng(8)
    x, y, mask = make_window(rng)
    model = make_model(dtype=np.float64, init_scale=0.5)
    zero = model.loss_and_grads(x, y, mask, None)
    carried = model.loss_and_grads(x, y, mask, random_state(rng, x.shape[1]))
    assert zero.loss != carried.loss
    assert np.abs(zero.dstate[0][1]).max() > 0


# ------------------------------------------------------------------ input checks

@pytest.mark.parametrize("change, error, message", [
    (lambda a: a.update(x=a["x"].astype(np.float32)), TypeError, "x must be an integer array"),
    (lambda a: a.update(x=a["x"] > 2), TypeError, "x must be an integer array"),
    (lambda a: a.update(x=a["x"][0]), ValueError, r"x must have shape \(T, B\)"),
    (lambda a: a.update(x=a["x"][:0]), ValueError, r"x must have shape \(T, B\)"),
    (lambda a: a.update(y=a["y"][:2]), ValueError, r"y has shape \(2, 3\), expected \(4, 3\)"),
    (lambda a: a["x"].__setitem__((1, 1), V), ValueError, rf"x holds ids outside \[0, {V}\), e.g. {V}"),
    (lambda a: a["y"].__setitem__((0, 2), -1), ValueError, r"y holds ids outside"),
    (lambda a: a.update(mask=a["mask"][:, :2]), ValueError, r"mask has shape \(4, 2\)"),
    (lambda a: a["mask"].__setitem__((0, 0), 0.5), ValueError, "mask must hold only 0 and 1"),
    (lambda a: a.update(mask=a["mask"].astype(str)), TypeError, "mask must be a numeric or boolean array"),
    (lambda a: a.update(state=a["state"][:1]), ValueError, r"state must be a list of 2 \(h, c\) pairs"),
    (lambda a: a.update(state=[a["state"][0], a["state"][1][0]]), ValueError, r"state\[1\] must be an \(h, c\) pair"),
    (lambda a: a.update(state=[a["state"][0], (a["state"][1][0], np.zeros((3, H + 1)))]), ValueError,
     r"state\[1\] c has shape \(3, 7\), expected \(3, 6\)"),
    (lambda a: a.update(state=[(np.zeros((3, H), int), a["state"][0][1]), a["state"][1]]), TypeError,
     r"state\[0\] h must be floating-point"),
])
def test_loss_and_grads_rejects_bad_input_naming_the_argument(change, error, message):
    model = make_model()
    rng = np.random.default_rng(9)
    x, y, mask = make_window(rng, T=4, B=3)
    arguments = {"x": x, "y": y, "mask": mask, "state": model.zero_state(3)}
    change(arguments)
    with pytest.raises(error, match=message):
        model.loss_and_grads(**arguments)


def test_mask_may_be_boolean_and_state_may_be_host_float64():
    model = make_model()
    rng = np.random.default_rng(10)
    x, y, mask = make_window(rng, T=4, B=3)
    by_floats = model.loss_and_grads(x, y, mask, model.zero_state(3))
    by_bools = model.loss_and_grads(x, y, mask.astype(bool), [(np.zeros((3, H)), np.zeros((3, H)))] * LAYERS)
    assert by_bools.loss == by_floats.loss


@pytest.mark.parametrize("kwargs, error, message", [
    ({"vocab_size": 0}, ValueError, "vocab_size must be an integer >= 1"),
    ({"hidden": 0}, ValueError, "hidden must be an integer >= 1"),
    ({"layers": 2.5}, ValueError, "layers must be an integer"),
    ({"init_scale": 0}, ValueError, "init_scale must be a finite number > 0"),
    ({"forget_bias": float("nan")}, ValueError, "forget_bias must be a finite number"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({"dtype": np.float16}, ValueError, "dtype must be float32 or float64"),
    ({"backend": "tpu"}, ValueError, f"unknown backend 'tpu'; choose one of: auto, {', '.join(BACKENDS)}$"),
    ({"backend": 3}, TypeError, "backend must be a backend name or a Backend instance"),
    ({"backend": get_backend("numpy", np.float64), "dtype": np.float32}, ValueError,
     "dtype float32 disagrees with the backend's float64"),
    ({"backend": "numpy", "backend_options": {"persistent": False}}, ValueError,
     "backend 'numpy' takes no option 'persistent'"),
    ({"backend": get_backend("numpy"), "backend_options": {"threads": 1}}, ValueError,
     "backend_options go with a backend name"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, message):
    arguments = {"vocab_size": V, **kwargs}
    with pytest.raises(error, match=message):
        LSTMModel(**arguments)


def test_backend_options_reach_the_backend():
    assert LSTMModel(V, hidden=H, backend="numpy", backend_options={"threads": 1}).backend.threads == 1


def test_backend_instance_sets_the_dtype():
    model = LSTMModel(V, hidden=H, backend=get_backend("numpy", np.float64))
    assert model.dtype == np.float64 and model.params["embed"].dtype == np.float64


# ------------------------------------------------------------------ greedy decoding

def decode_one_column(model, prompt, max_answer_len, stop_id):
    """Step-by-step reference: read the prompt, then feed back the argmax, one forward call per step."""
    logits, state = model.forward(np.asarray(prompt)[:, None], None)
    answer = [int(logits[-1, 0].argmax())]
    while answer[-1] != stop_id and len(answer) < max_answer_len:
        logits, state = model.forward(np.array([[answer[-1]]]), state)
        answer.append(int(logits[0, 0].argmax()))
    return answer


@pytest.fixture
def decoding_case():
    """A model whose answers depend on the prompt, and prompts of different lengths, padded with -1."""
    model = make_model(dtype=np.float64, init_scale=1.0, seed=1)
    rng = np.random.default_rng(11)
    lengths = np.array([5, 1, 3, 5, 2, 4])
    prompts = rng.integers(0, V, (5, len(lengths)))
    prompts[np.arange(5)[:, None] >= lengths] = -1
    return model, prompts, lengths


def test_greedy_decode_matches_a_step_by_step_reference(decoding_case):
    model, prompts, lengths = decoding_case
    stop_id, max_answer_len = 7, 6
    answers = model.greedy_decode(prompts, lengths, max_answer_len, stop_id)
    expected = [decode_one_column(model, prompts[:n, b], max_answer_len, stop_id) for b, n in enumerate(lengths)]
    assert [a.tolist() for a in answers] == expected
    assert all(a.dtype == np.int64 for a in answers)
    # the case exercises both ways of ending and more than one answer
    assert any(a[-1] == stop_id and len(a) < max_answer_len for a in answers)
    assert any(len(a) == max_answer_len and stop_id not in a for a in answers)
    assert len({tuple(a) for a in answers}) > 2


def test_greedy_decode_columns_are_independent(decoding_case):
    model, prompts, lengths = decoding_case
    batched = model.greedy_decode(prompts, lengths, 6, 7)
    for b, n in enumerate(lengths):
        alone = model.greedy_decode(prompts[:n, b:b + 1], lengths[b:b + 1], 6, 7)
        np.testing.assert_array_equal(alone[0], batched[b])
    reordered = model.greedy_decode(prompts[:, ::-1], lengths[::-1], 6, 7)
    for a, b in zip(reordered[::-1], batched):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change, error, message", [
    (lambda a: a.update(lengths=np.array([1, 0])), ValueError, r"lengths must lie in 1..3"),
    (lambda a: a.update(lengths=np.array([1, 4])), ValueError, r"lengths must lie in 1..3"),
    (lambda a: a.update(lengths=np.array([1, 2, 3])), ValueError, r"lengths must be an integer array of shape \(2,\)"),
    (lambda a: a.update(prompts=a["prompts"].astype(float)), TypeError, "prompts must be an integer array"),
    (lambda a: a["prompts"].__setitem__((0, 1), V), ValueError, "prompts holds ids outside"),
    (lambda a: a.update(max_answer_len=0), ValueError, "max_answer_len must be an integer >= 1"),
    (lambda a: a.update(stop_id=V), ValueError, rf"stop_id must be an integer in 0..{V - 1}"),
])
def test_greedy_decode_rejects_bad_arguments(change, error, message):
    arguments = {"prompts": np.array([[1, 2], [3, 4], [5, 6]]), "lengths": np.array([3, 2]),
                 "max_answer_len": 4, "stop_id": 0}
    change(arguments)
    with pytest.raises(error, match=message):
        make_model().greedy_decode(**arguments)
