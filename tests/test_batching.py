"""Stream windows (training) and independent-example batches (evaluation)."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.batching import Batch, StreamBatcher, Window, pack_examples, pack_prompts
from ltexec.sampler import Example
from ltexec.vocab import (END_OF_INPUT_ID, LINE_SEP, PAD_ID, TRANSFORMS, decode, encode_example, example_text,
                          transform_input)

PROGRAMS = [
    ("j=8584\nfor x in range(8):j+=920\nb=(1500+j)\nprint((b+7567))", "25011"),
    ("c=79\nprint((c-(4*12)))", "31"),
    ("print((5 if 10<9 else 7))", "7"),
    ("a=(345-8888)\nfor x in range(3):a-=12\nprint((a*2))", "-17158"),
]


def numbered_example(serial: int, seed: int = 0, longest_copy: int = 90) -> Example:
    """Example number ``serial`` of a fixed mixed sequence; its text is unique to the serial."""
    rng = random.Random(seed * 1_000_003 + serial)
    kind = rng.choice(("addition", "copy", "programs"))
    if kind == "addition":
        other = rng.randint(1, 10 ** rng.randint(1, 6))
        return Example(kind, f"print({serial}+{other})", str(serial + other), 6, 1, "train")
    if kind == "copy":
        random_digits = (rng.choice("0123456789") for _ in range(rng.randint(0, longest_copy)))
        digits = f"{serial:06d}" + "".join(random_digits)
        return Example(kind, digits, digits, len(digits), 1, "train")
    program, output = rng.choice(PROGRAMS)
    return Example(kind, f"s={serial}\n{program}", output, 4, 3, "train")


class NumberedSource:
    """A seeded source that hands out ``numbered_example`` 0, 1, 2, ... (or from ``start``)."""

    def __init__(self, seed: int = 0, start: int = 0, longest_copy: int = 90):
        self.seed, self.next_serial, self.longest_copy = seed, start, longest_copy

    def __call__(self) -> Example:
        example = numbered_example(self.next_serial, self.seed, self.longest_copy)
        self.next_serial += 1
        return example


def column_streams(windows, state):
    """Each column's tokens as seen across ``windows``, followed by its unread tokens from ``state``."""
    seen = np.concatenate([window.x for window in windows], axis=0).T
    streams = []
    for column in range(seen.shape[0]):
        unread = state["pending_tokens"][column, :state["pending_lengths"][column]]
        assert unread[0] == windows[-1].y[-1, column]  # the next window starts where y ended
        streams.append(np.concatenate([seen[column], unread]))
    return streams


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 5), window=st.integers(1, 70), count=st.integers(1, 12),
       transform=st.sampled_from(TRANSFORMS), longest_copy=st.sampled_from([0, 10, 150]),
       seed=st.integers(0, 10 ** 6))
def test_stream_columns_are_whole_examples_back_to_back(batch, window, count, transform, longest_copy, seed):
    source = NumberedSource(seed, longest_copy=longest_copy)
    batcher = StreamBatcher(source, batch, window, transform)
    windows = [batcher.next_window() for _ in range(count)]

    for window_now in windows:
        assert window_now.x.shape == window_now.y.shape == window_now.mask.shape == (window, batch)
        assert window_now.x.dtype == window_now.y.dtype == np.int32 and window_now.mask.dtype == np.float32
        np.testing.assert_array_equal(window_now.x[1:], window_now.y[:-1])
        assert PAD_ID not in window_now.x and PAD_ID not in window_now.y
    for before, after in zip(windows, windows[1:]):
        np.testing.assert_array_equal(before.y[-1], after.x[0])

    # Every drawn example lies whole in exactly one column, in the order drawn, with no gap or repeat;
    # the mask is on exactly its target characters and terminator.
    drawn = [numbered_example(serial, seed, longest_copy) for serial in range(source.next_serial)]
    serial_of = {example_text(example.input, example.target, transform): serial
                 for serial, example in enumerate(drawn)}
    assert batcher.examples_used == len(drawn)
    used = []
    for column, stream in enumerate(column_streams(windows, batcher.state_dict())):
        text = decode(stream)
        assert text.endswith(".")
        serials, expected_stream, expected_answer = [], [], []
        for piece in text[:-1].split("."):
            serials.append(serial_of[piece + "."])
            example = drawn[serials[-1]]
            tokens, first_answer = encode_example(example.input, example.target, transform)
            expected_stream.append(tokens)
            expected_answer.append(np.arange(tokens.size) >= first_answer)
        assert serials == sorted(serials)
        used += serials
        np.testing.assert_array_equal(stream, np.concatenate(expected_stream))
        answer = np.concatenate(expected_answer)
        seen_mask = np.concatenate([window_now.mask[:, column] for window_now in windows])
        np.testing.assert_array_equal(seen_mask, answer[1:count * window + 1].astype(np.float32))
    assert sorted(used) == list(range(len(drawn)))


def reference_windows(source, batch, window, transform, count):
    """The documented stream semantics in plain Python lists."""
    pending = [[] for _ in range(batch)]
    windows = []
    for _ in range(count):
        for column in range(batch):
            while len(pending[column]) < window + 1:
                example = source()
                pending[column] += encode_example(example.input, example.target, transform)[0].tolist()
        x = np.array([column[:window] for column in pending]).T
        y = np.array([column[1:window + 1] for column in pending]).T
        windows.append((x, y))
        pending = [column[window:] for column in pending]
    return windows


@pytest.mark.parametrize("batch, window, transform", [(1, 1, "none"), (3, 7, "reverse"), (4, 50, "double"),
                                                      (2, 400, "both")])
def test_columns_draw_in_order_and_windows_are_reproducible(batch, window, transform):
    batcher = StreamBatcher(NumberedSource(seed=5), batch, window, transform)
    for expected_x, expected_y in reference_windows(NumberedSource(seed=5), batch, window, transform, 15):
        got = batcher.next_window()
        np.testing.assert_array_equal(got.x, expected_x)
        np.testing.assert_array_equal(got.y, expected_y)


@pytest.mark.parametrize("saved_after", [0, 1, 6])
def test_state_round_trip_through_npz_resumes_identically(tmp_path, saved_after):
    original = StreamBatcher(NumberedSource(seed=3), 4, 13, "reverse")
    for _ in range(saved_after):
        original.next_window()
    path = tmp_path / "stream.npz"
    np.savez(path, **original.state_dict())
    resumed_source = NumberedSource(seed=3, start=original.examples_used)
    expected = [original.next_window() for _ in range(8)]

    resumed = StreamBatcher(resumed_source, 4, 13, "reverse")
    with np.load(path, allow_pickle=False) as saved:
        resumed.load_state_dict(dict(saved))
    for want in expected:
        got = resumed.next_window()
        for name in ("x", "y", "mask"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert resumed.examples_used == original.examples_used
    assert resumed_source.next_serial == original.source.next_serial


def test_state_dict_holds_only_arrays_and_ints_padded_with_pad():
    batcher = StreamBatcher(NumberedSource(longest_copy=30), 6, 5)
    for _ in range(7):
        batcher.next_window()
    state = batcher.state_dict()
    assert all(isinstance(value, (np.ndarray, int)) for value in state.values())
    tokens, answer, lengths = state["pending_tokens"], state["pending_answer"], state["pending_lengths"]
    assert tokens.shape == answer.shape and tokens.shape[0] == 6 and lengths.shape == (6,)
    assert lengths.min() >= 1 and lengths.max() == tokens.shape[1] and len(set(lengths.tolist())) > 1
    for column, length in enumerate(lengths):
        assert PAD_ID not in tokens[column, :length]
        assert (tokens[column, length:] == PAD_ID).all() and not answer[column, length:].any()


def test_load_state_dict_rejects_a_different_configuration():
    state = StreamBatcher(NumberedSource(), 3, 5, "double").state_dict()
    with pytest.raises(ValueError, match="^state is for batch 3, this batcher has batch 2$"):
        StreamBatcher(NumberedSource(), 2, 5, "double").load_state_dict(state)
    with pytest.raises(ValueError, match="^state is for transform 'double', this batcher has 'none'$"):
        StreamBatcher(NumberedSource(), 3, 5).load_state_dict(state)
    del state["pending_answer"]
    with pytest.raises(ValueError, match="^state is missing pending_answer$"):
        StreamBatcher(NumberedSource(), 3, 5, "double").load_state_dict(state)


@pytest.mark.parametrize("arguments, name", [
    ({"batch": 0}, "batch"), ({"window": 0}, "window"), ({"window": 2.5}, "window"),
    ({"transform": "twice"}, "transform"), ({"source": 7}, "source"),
])
def test_stream_batcher_validates_arguments(arguments, name):
    kwargs = {"source": NumberedSource(), "batch": 2, "window": 5, **arguments}
    with pytest.raises(ValueError, match=f"^{name} must be"):
        StreamBatcher(**kwargs)


def test_stream_batcher_reports_bad_examples_from_the_source():
    with pytest.raises(ValueError, match="^expected an Example with input and target, got str$"):
        StreamBatcher(lambda: "print(1)", 1, 5).next_window()
    bad = Example("programs", "print(1)", "1.0", 1, 1, "train")
    reserved = r"^target has character '\.' at position 1, which is a reserved symbol$"
    with pytest.raises(ValueError, match=reserved):
        StreamBatcher(lambda: bad, 1, 5).next_window()


examples_lists = st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=8).map(
    lambda serials: [numbered_example(serial, longest_copy=40) for serial in serials])


@settings(max_examples=60, deadline=None)
@given(examples_lists, st.sampled_from(TRANSFORMS))
def test_pack_examples_one_example_per_column(examples, transform):
    batch = pack_examples(examples, transform)
    assert isinstance(batch, Batch)
    encoded = [encode_example(example.input, example.target, transform) for example in examples]
    rows = max(tokens.size for tokens, _ in encoded) - 1
    assert batch.x.shape == batch.y.shape == batch.mask.shape == (rows, len(examples))
    assert batch.x.dtype == batch.y.dtype == np.int32 and batch.mask.dtype == np.float32
    assert batch.targets == [example.target for example in examples]
    for column, (tokens, first_answer) in enumerate(encoded):
        steps = tokens.size - 1
        np.testing.assert_array_equal(batch.x[:steps, column], tokens[:-1])
        np.testing.assert_array_equal(batch.y[:steps, column], tokens[1:])
        assert (batch.x[steps:, column] == PAD_ID).all() and (batch.y[steps:, column] == PAD_ID).all()
        expected_mask = np.zeros(rows, dtype=np.float32)
        expected_mask[first_answer - 1:steps] = 1.0
        np.testing.assert_array_equal(batch.mask[:, column], expected_mask)
        assert batch.x[batch.answer_start[column], column] == END_OF_INPUT_ID
        assert decode(batch.y[batch.mask[:, column] > 0, column]) == examples[column].target + "."
        assert PAD_ID not in batch.x[:steps, column]


def test_pack_examples_pads_shorter_columns_with_masked_pad():
    short = Example("copy", "12", "12", 2, 1, "train")
    program = Example("programs", *PROGRAMS[1], 2, 2, "train")
    batch = pack_examples([short, program])
    assert batch.x.shape == (len("c=79#print((c-(4*12)))@31.") - 1, 2)
    assert decode(batch.x[:, 0]) == "12@12" + "_" * (batch.x.shape[0] - 5)
    assert decode(batch.y[:, 0]) == "2@12." + "_" * (batch.x.shape[0] - 5)
    assert batch.mask[:, 0].tolist() == [0, 0, 1, 1, 1] + [0] * (batch.x.shape[0] - 5)
    assert batch.answer_start.tolist() == [2, len("c=79#print((c-(4*12)))")]


@settings(max_examples=40, deadline=None)
@given(examples_lists, st.sampled_from(TRANSFORMS))
def test_pack_prompts_lengths_and_padding(examples, transform):
    tokens, lengths = pack_prompts(examples, transform)
    shown = [transform_input(example.input.replace("\n", LINE_SEP), transform) + "@" for example in examples]
    assert lengths.tolist() == [len(text) for text in shown]
    assert tokens.shape == (max(lengths), len(examples)) and tokens.dtype == np.int32
    for column, text in enumerate(shown):
        assert decode(tokens[:lengths[column], column]) == text
        assert (tokens[lengths[column]:, column] == PAD_ID).all()


def test_pack_functions_validate_arguments():
    example = Example("copy", "1", "1", 1, 1, "train")
    for pack in (pack_examples, pack_prompts):
        with pytest.raises(ValueError, match="^examples must contain at least one example$"):
            pack([])
        with pytest.raises(ValueError, match="^transform must be one of"):
            pack([example], "backwards")
    assert isinstance(StreamBatcher(NumberedSource(), 1, 1).next_window(), Window)
