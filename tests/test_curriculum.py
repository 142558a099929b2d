"""Tests for the curriculum strategies and the level-advance rule."""

import json
import math
import random
from collections import Counter

import pytest

from ltexec.curriculum import DRAWS as DRAW_MODES
from ltexec.curriculum import STRATEGIES, Curriculum, Draw
from ltexec.sampler import generate

DRAWS = 20000


def walk(curriculum, evaluations):
    """Feed (val_acc, train_acc) pairs to ``update``; return the outcomes."""
    return [curriculum.update(val, train) for val, train in evaluations]


def within(count, n, p, sds=5.0):
    """Whether ``count`` successes in ``n`` trials lie within ``sds`` binomial sds of ``n * p``."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def independence_chi2(pairs):
    """Pearson's chi-square statistic for independence of the two coordinates of ``pairs``."""
    n = len(pairs)
    rows = Counter(a for a, _ in pairs)
    cols = Counter(b for _, b in pairs)
    cells = Counter(pairs)
    return sum((cells[(a, b)] - rows[a] * cols[b] / n) ** 2 / (rows[a] * cols[b] / n)
               for a in rows for b in cols)


# Upper 1e-5 tail of chi-square with (5 - 1) * (4 - 1) = 12 degrees of freedom is about 42.
CHI2_12_BOUND = 42.0


# --- the advance rule ---------------------------------------------------------

def test_starts_at_level_one_for_every_strategy():
    for strategy in STRATEGIES:
        curriculum = Curriculum(strategy, 4, 3)
        assert curriculum.level == (1, 1)
        assert curriculum.target == (4, 3)
        assert curriculum.validation_level() == (1, 1)
        assert curriculum.test_level() == (4, 3)
        assert not curriculum.at_target


def test_validation_accuracy_above_threshold_advances():
    curriculum = Curriculum("naive", 3)
    assert curriculum.update(0.96, 0.5) == "advance"
    assert curriculum.level == (2, 1)
    assert curriculum.validation_level() == (2, 1)


def test_validation_accuracy_equal_to_threshold_does_not_advance():
    curriculum = Curriculum("naive", 3, threshold=0.9)
    assert curriculum.update(0.9, 0.5) is None
    assert curriculum.update(0.9001, 0.5) == "advance"
    assert curriculum.level == (2, 1)


def test_threshold_one_never_triggers_on_validation():
    curriculum = Curriculum("naive", 3, threshold=1.0)
    assert walk(curriculum, [(1.0, 0.5)] * 3) == [None] * 3
    assert curriculum.level == (1, 1)


def test_plateau_patience_boundary():
    curriculum = Curriculum("naive", 3)
    # The first evaluation only fills the history; the next four drop without triggering.
    assert walk(curriculum, [(0.1, 0.50), (0.1, 0.49), (0.1, 0.48), (0.1, 0.47), (0.1, 0.46)]) == [None] * 5
    assert curriculum.level == (1, 1)
    # The fifth non-improving evaluation is below the accuracy five evaluations back.
    assert curriculum.update(0.1, 0.45) == "advance"
    assert curriculum.level == (2, 1)


def test_plateau_needs_a_strict_drop():
    curriculum = Curriculum("naive", 3)
    assert walk(curriculum, [(0.1, 0.5)] * 10) == [None] * 10
    assert curriculum.level == (1, 1)


def test_plateau_compares_with_exactly_patience_evaluations_ago():
    # Worse than the recent evaluations but better than five back: no trigger.
    curriculum = Curriculum("naive", 3)
    walk(curriculum, [(0.1, 0.5), (0.1, 0.9), (0.1, 0.9), (0.1, 0.9), (0.1, 0.9)])
    assert curriculum.update(0.1, 0.6) is None
    # Better than the recent evaluations but worse than five back: trigger.
    curriculum = Curriculum("naive", 3)
    walk(curriculum, [(0.1, 0.7), (0.1, 0.1), (0.1, 0.1), (0.1, 0.1), (0.1, 0.1)])
    assert curriculum.update(0.1, 0.6) == "advance"


def test_patience_argument_sets_the_window():
    curriculum = Curriculum("naive", 3, patience=2)
    assert walk(curriculum, [(0.1, 0.5), (0.1, 0.4)]) == [None, None]
    assert curriculum.update(0.1, 0.45) == "advance"


def test_history_is_cleared_after_a_trigger_then_gets_the_current_accuracy():
    curriculum = Curriculum("naive", 3)
    walk(curriculum, [(0.1, 0.9)] * 4)
    assert curriculum.update(0.99, 0.9) == "advance"
    assert curriculum.history == (0.9,)
    # Had the history not been cleared, 0.9 five evaluations back would trigger at once.
    assert walk(curriculum, [(0.1, 0.1)] * 4) == [None] * 4
    # Had the current accuracy not been recorded after the trigger, this would wait one more.
    assert curriculum.update(0.1, 0.1) == "advance"
    assert curriculum.level == (3, 1)


def test_length_then_nesting_with_length_reset_then_decay():
    curriculum = Curriculum("combined", 3, 2)
    levels = []
    for _ in range(5):
        assert curriculum.update(0.99, 0.5) == "advance"
        levels.append(curriculum.level)
    assert levels == [(2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]
    assert curriculum.at_target
    assert curriculum.update(0.99, 0.5) == "decay"
    assert curriculum.level == (3, 2)
    assert curriculum.history == (0.5,)
    assert curriculum.update(0.5, 0.5) is None


def test_plateau_at_target_decays():
    curriculum = Curriculum("naive", 1)
    assert curriculum.at_target
    walk(curriculum, [(0.1, 0.5), (0.1, 0.4), (0.1, 0.4), (0.1, 0.4), (0.1, 0.4)])
    assert curriculum.update(0.1, 0.4) == "decay"
    assert curriculum.level == (1, 1)


def test_baseline_advances_its_level_but_trains_at_the_target():
    curriculum = Curriculum("baseline", 3)
    assert curriculum.update(0.99, 0.5) == "advance"
    assert curriculum.level == (2, 1)
    assert curriculum.validation_level() == (2, 1)
    rng = random.Random(0)
    assert {curriculum.sample_level(rng) for _ in range(100)} == {(3, 1)}
    assert curriculum.update(0.99, 0.5) == "advance"
    assert curriculum.update(0.99, 0.5) == "decay"


def test_rejected_update_leaves_state_unchanged():
    curriculum = Curriculum("naive", 3)
    curriculum.update(0.1, 0.5)
    before = curriculum.state_dict()
    with pytest.raises(ValueError, match="^train_acc "):
        curriculum.update(0.99, 1.5)
    assert curriculum.state_dict() == before


def test_describe():
    curriculum = Curriculum("combined", 3)
    curriculum.update(0.99, 0.5)
    assert curriculum.describe() == "combined, level (2, 1) of (3, 1)"


# --- sampling -----------------------------------------------------------------

def advanced(strategy, target_length, target_nesting, steps, **kwargs):
    """A curriculum whose level has been advanced ``steps`` times."""
    curriculum = Curriculum(strategy, target_length, target_nesting, **kwargs)
    assert walk(curriculum, [(0.99, 0.5)] * steps) == ["advance"] * steps
    return curriculum


def test_baseline_always_samples_the_target():
    curriculum = advanced("baseline", 5, 4, 2)
    rng = random.Random(1)
    assert Counter(curriculum.sample_level(rng) for _ in range(1000)) == {(5, 4): 1000}


def test_naive_always_samples_the_level():
    curriculum = advanced("naive", 5, 4, 6)
    assert curriculum.level == (2, 2)
    rng = random.Random(2)
    assert Counter(curriculum.sample_level(rng) for _ in range(1000)) == {(2, 2): 1000}


def test_mix_is_uniform_and_independent():
    curriculum = advanced("mix", 5, 4, 3)
    rng = random.Random(3)
    pairs = [curriculum.sample_level(rng) for _ in range(DRAWS)]
    lengths = Counter(length for length, _ in pairs)
    nestings = Counter(nesting for _, nesting in pairs)
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert set(nestings) == {1, 2, 3, 4}
    assert all(within(lengths[length], DRAWS, 1 / 5) for length in range(1, 6))
    assert all(within(nestings[nesting], DRAWS, 1 / 4) for nesting in range(1, 5))
    assert independence_chi2(pairs) < CHI2_12_BOUND


def test_independence_check_detects_dependence():
    rng = random.Random(4)
    pairs = []
    for _ in range(DRAWS):
        length = rng.randint(1, 5)
        pairs.append((length, min(length, 4) if rng.random() < 0.1 else rng.randint(1, 4)))
    assert independence_chi2(pairs) > CHI2_12_BOUND


def test_combined_mix_proportion():
    curriculum = Curriculum("combined", 5, 4)
    rng = random.Random(5)
    differ = sum(curriculum.sample_level(rng) != (1, 1) for _ in range(DRAWS))
    # A mix draw lands on (1, 1) with probability 1/20.
    assert within(differ, DRAWS, 0.2 * (1 - 1 / 20))


def test_combined_after_advancing_mixes_level_and_uniform_draws():
    curriculum = advanced("combined", 5, 4, 7)
    assert curriculum.level == (3, 2)
    rng = random.Random(6)
    draws = Counter(curriculum.sample_level(rng) for _ in range(DRAWS))
    assert within(draws[(3, 2)], DRAWS, 0.8 + 0.2 / 20)
    assert within(draws[(5, 4)], DRAWS, 0.2 / 20)
    assert set(draws) == {(length, nesting) for length in range(1, 6) for nesting in range(1, 5)}


def test_combined_respects_mix_probability():
    rng = random.Random(7)
    curriculum = Curriculum("combined", 5, 4, mix_probability=0.5)
    differ = sum(curriculum.sample_level(rng) != (1, 1) for _ in range(DRAWS))
    assert within(differ, DRAWS, 0.5 * (1 - 1 / 20))
    never = Curriculum("combined", 5, 4, mix_probability=0.0)
    assert {never.sample_level(rng) for _ in range(1000)} == {(1, 1)}
    always = Curriculum("combined", 5, 4, mix_probability=1.0)
    differ = sum(always.sample_level(rng) != (1, 1) for _ in range(DRAWS))
    assert within(differ, DRAWS, 1 - 1 / 20)


@pytest.mark.parametrize("strategy", ["mix", "combined"])
def test_sampling_depends_only_on_the_given_rng(strategy):
    curriculum = advanced(strategy, 5, 4, 2)
    rng_a, rng_b = random.Random(9), random.Random(9)
    draws_a = [curriculum.sample_level(rng_a) for _ in range(500)]
    draws_b = [curriculum.sample_level(rng_b) for _ in range(500)]
    assert draws_a == draws_b
    assert len(set(draws_a)) > 1


def test_sample_level_rejects_a_non_random_rng():
    with pytest.raises(ValueError, match="^rng "):
        Curriculum("mix", 3).sample_level(42)


# --- state dict ---------------------------------------------------------------

def test_state_dict_round_trip_gives_identical_future_behaviour():
    original = Curriculum("combined", 4, 3, threshold=0.9, patience=3, mix_probability=0.3)
    walk(original, [(0.95, 0.6), (0.5, 0.7), (0.5, 0.65), (0.5, 0.62), (0.5, 0.71)])
    assert original.level == (2, 1) and len(original.history) == 3
    state = original.state_dict()
    restored = Curriculum.from_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state
    assert restored.describe() == original.describe()

    rng = random.Random(10)
    future = [(rng.choice([0.5, 0.95]), rng.random()) for _ in range(60)]
    rng_a, rng_b = random.Random(11), random.Random(11)
    for val, train in future:
        assert original.update(val, train) == restored.update(val, train)
        assert original.state_dict() == restored.state_dict()
        assert [original.sample_level(rng_a) for _ in range(20)] == \
               [restored.sample_level(rng_b) for _ in range(20)]
    assert original.at_target


def test_state_dict_is_plain_json():
    curriculum = Curriculum("mix", 3, 2)
    walk(curriculum, [(0.99, 0.25), (0.5, 0.125)])
    state = curriculum.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state == {"strategy": "mix", "target_length": 3, "target_nesting": 2, "threshold": 0.95,
                     "patience": 5, "mix_probability": 0.2, "draw": "number", "level": [2, 1],
                     "history": [0.25, 0.125]}


def test_a_state_written_before_the_draw_option_draws_per_example():
    state = {k: v for k, v in Curriculum("mix", 3, 2).state_dict().items() if k != "draw"}
    assert Curriculum.from_state_dict(state).draw == "example"


def test_history_keeps_only_what_the_plateau_check_needs():
    curriculum = Curriculum("naive", 3, patience=2)
    walk(curriculum, [(0.1, 0.1), (0.1, 0.2), (0.1, 0.3), (0.1, 0.4)])
    assert curriculum.history == (0.3, 0.4)


def good_state(**changes):
    curriculum = Curriculum("combined", 3, 2)
    walk(curriculum, [(0.99, 0.5), (0.5, 0.6)])
    return {**curriculum.state_dict(), **changes}


@pytest.mark.parametrize("state, message", [
    ([1, 2], "curriculum state must be a dict"),
    ({k: v for k, v in good_state().items() if k != "level"}, r"missing keys \['level'\]"),
    (good_state(extra=1), r"unknown keys \['extra'\]"),
    (good_state(strategy="blend"), "^strategy "),
    (good_state(draw="program"), "^draw "),
    (good_state(target_length=0), "^target_length "),
    (good_state(patience=0), "^patience "),
    (good_state(level=[4, 1]), "^level length "),
    (good_state(level=[1, 3]), "^level nesting "),
    (good_state(level=[0, 1]), "^level length "),
    (good_state(level=[1, 1, 1]), "^level "),
    (good_state(level="1,1"), "^level "),
    (good_state(level=[1.5, 1]), "^level length "),
    (good_state(history=0.5), "^history "),
    (good_state(history=[0.5] * 6), "^history "),
    (good_state(history=[1.5]), "^history accuracy "),
    (good_state(history=[float("nan")]), "^history accuracy "),
])
def test_from_state_dict_rejects_malformed_states(state, message):
    with pytest.raises(ValueError, match=message) as caught:
        Curriculum.from_state_dict(state)
    assert "\n" not in str(caught.value)


def test_good_state_is_accepted():
    assert Curriculum.from_state_dict(good_state()).level == (2, 1)


# --- argument validation ------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"strategy": "blend"}, "strategy"),
    ({"strategy": None}, "strategy"),
    ({"target_length": 0}, "target_length"),
    ({"target_length": 2.5}, "target_length"),
    ({"target_length": True}, "target_length"),
    ({"target_nesting": 0}, "target_nesting"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.01}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"patience": 0}, "patience"),
    ({"mix_probability": -0.1}, "mix_probability"),
    ({"mix_probability": 1.1}, "mix_probability"),
])
def test_constructor_rejects_bad_arguments(kwargs, name):
    arguments = {"strategy": "combined", "target_length": 3, **kwargs}
    with pytest.raises(ValueError, match=f"^{name} ") as caught:
        Curriculum(**arguments)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("val_acc, train_acc, name", [
    (1.1, 0.5, "val_acc"),
    (-0.1, 0.5, "val_acc"),
    (float("nan"), 0.5, "val_acc"),
    (0.5, 1.1, "train_acc"),
    (0.5, -0.1, "train_acc"),
    (0.5, float("nan"), "train_acc"),
    (0.5, None, "train_acc"),
])
def test_update_rejects_bad_accuracies(val_acc, train_acc, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        Curriculum("naive", 3).update(val_acc, train_acc)


def test_boundary_arguments_are_accepted():
    curriculum = Curriculum("mix", 1, 1, threshold=1.0, patience=1, mix_probability=0.0)
    assert curriculum.at_target
    assert curriculum.sample_level(random.Random(0)) == (1, 1)


# --- per-number draws (the authors' code) ---------------------------------------

def recorded_draw(curriculum, rng):
    """One :meth:`Curriculum.sample_draw` whose ``number_length`` records what it returns."""
    draw = curriculum.sample_draw(rng)
    lengths = []

    def number_length():
        lengths.append(draw.number_length())
        return lengths[-1]
    return draw, number_length, lengths


@pytest.mark.parametrize("draw", DRAW_MODES)
def test_baseline_and_naive_draw_nothing_per_number(draw):
    rng = random.Random(12)
    for strategy, expected in (("baseline", (5, 4)), ("naive", (1, 1))):
        curriculum = Curriculum(strategy, 5, 4, draw=draw)
        assert {curriculum.sample_draw(rng) for _ in range(100)} == {Draw(*expected)}


def test_mix_draws_a_length_per_number_and_the_nesting_once():
    curriculum = Curriculum("mix", 5, 4)
    rng = random.Random(13)
    nestings, lengths = Counter(), Counter()
    for _ in range(DRAWS // 10):
        draw = curriculum.sample_draw(rng)
        assert draw.length == 5
        nestings[draw.nesting] += 1
        lengths.update(draw.number_length() for _ in range(10))
    assert all(within(nestings[n], DRAWS // 10, 1 / 4) for n in range(1, 5))
    assert all(within(lengths[length], DRAWS, 1 / 5) for length in range(1, 6))


def test_per_example_mix_gives_one_level_per_example():
    curriculum = Curriculum("mix", 5, 4, draw="example")
    rng = random.Random(14)
    draws = [curriculum.sample_draw(rng) for _ in range(2000)]
    assert all(d.number_length is None for d in draws)
    assert {d.length for d in draws} == set(range(1, 6)) and {d.nesting for d in draws} == set(range(1, 5))


def operand_lengths(example):
    a, b = example.input[len("print("):-1].split("+")
    return int(a), int(b)


@pytest.mark.parametrize("draw, low, high", [("number", 0.035, 0.08), ("example", 0.0, 0.001)])
def test_mix_mixes_number_lengths_within_one_example_only_per_number(draw, low, high):
    # Per number, one operand of 1 digit (or 10) beside one of 6 digits happens in about
    # 2 x 0.185 x 0.15 = 5.6% of additions; per example almost never (both draw one length).
    curriculum = Curriculum("mix", 6, 1, draw=draw)
    rng = random.Random(15)
    count = 5000
    mixed = sum(min(a, b) <= 10 and max(a, b) > 10 ** 5
                for a, b in (operand_lengths(curriculum.draw_example("addition", "train", rng))
                             for _ in range(count)))
    assert low * count <= mixed <= high * count


def all_level_one_share(mix_probability, target_length, target_nesting):
    """P(every length draw of a combined program at level (1, 1) is 1), worked out from the grammar.

    A draw is 1 with probability q = (1 - p) + p / a.  The first operation draws
    its operands (pair 2, multiplication 1, equality 1, variable 2, loop 2, if 4)
    plus a multiplier or a loop count; each later one has the previous result
    as one operand.  The nesting is drawn once: 1 with probability
    (1 - p) + p / b, else uniform.
    """
    p, a, b = mix_probability, target_length, target_nesting
    q = (1 - p) + p / a
    first = sum(q ** d for d in (2, 1 + 1, 1, 2, 2 + 1, 4)) / 6
    later = sum(q ** d for d in (1, 0 + 1, 0, 1, 1 + 1, 3)) / 6
    nesting = {n: p / b + (1 - p if n == 1 else 0) for n in range(1, b + 1)}
    return sum(share * first * later ** (n - 1) for n, share in nesting.items())


def test_combined_per_number_share_of_programs_with_only_level_one_draws():
    curriculum = Curriculum("combined", 6, 3)
    rng = random.Random(16)
    count = 10000
    only_ones = 0
    for _ in range(count):
        draw, number_length, lengths = recorded_draw(curriculum, rng)
        generate("programs", draw.length, draw.nesting, rng, number_length=number_length)   # one draw, no split
        only_ones += set(lengths) == {1}
    expected = all_level_one_share(0.2, 6, 3)
    assert 0.62 < expected < 0.65
    assert within(only_ones, count, expected)


def test_combined_per_example_share_of_level_one_programs():
    curriculum = Curriculum("combined", 6, 3, draw="example")
    rng = random.Random(17)
    count = 10000
    ones = sum(curriculum.draw_example("programs", "train", rng).length == 1 for _ in range(count))
    assert within(ones, count, 0.8 + 0.2 / 6)


def test_a_curriculum_can_start_at_a_given_level():
    curriculum = Curriculum("naive", 4, 3, level=(2, 3))
    assert curriculum.level == (2, 3)
    assert curriculum.draw_example("programs", "val", random.Random(0)).nesting == 3
    with pytest.raises(ValueError, match="^level length must be an integer in 1..4, got 5"):
        Curriculum("naive", 4, 3, level=(5, 1))
    with pytest.raises(ValueError, match="^level must be a"):
        Curriculum("naive", 4, 3, level=3)
