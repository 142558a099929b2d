"""The persistent launch plan both GPU backends share (ltexec.backends.persistent_plan), without a GPU.

The unit split, the block size, the geometry's shared memory, the co-residency
checks (from an injected occupancy query) and the launch-mode bookkeeping are
plain functions; each backend's own use of them is tested in its folder.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.backends.common import ceil_div
from ltexec.backends.persistent_plan import (DIRECTIONS, PER_STEP, PERSISTENT, UNDECIDED, LaunchModes,
                                             PersistentUnfit, block_threads, check_cooperative_grid,
                                             persistent_geometry, recurrence_plan, residency_problem, split_units)

KB = 1024


@settings(max_examples=300, deadline=None)
@given(H=st.integers(1, 3000), B=st.integers(1, 600), max_blocks=st.integers(1, 300),
       itemsize=st.sampled_from([4, 8]), max_threads=st.sampled_from([64, 512, 1024]), pad=st.integers(0, 1))
def test_every_unit_has_one_block_within_the_limits(H, B, max_blocks, itemsize, max_threads, pad):
    g = persistent_geometry(H, B, itemsize, max_blocks, max_threads=max_threads, backward_row_pitch=4 * H + pad)
    U = g.units_per_block
    assert (g.H, g.B, g.itemsize) == (H, B, itemsize)
    assert g.grid <= max_blocks and g.grid * U >= H > (g.grid - 1) * U     # the last block is not empty
    assert U == ceil_div(H, max_blocks)                                   # the fewest units within the grid
    assert g.threads % 32 == 0 or g.threads == max_threads
    assert 1 <= g.threads <= max_threads
    assert ceil_div(U * B, g.threads) == ceil_div(U * B, max_threads)     # no more passes than needed
    assert g.threads < 32 * ceil_div(U * B, 32) + 32                     # never a spare warp beyond the items
    assert g.shared_bytes("forward") == H * 4 * U * itemsize
    assert g.shared_bytes("backward") == U * (4 * H + pad) * itemsize


@pytest.mark.parametrize("H, max_blocks, split", [(400, 132, (4, 100)), (400, 108, (4, 100)), (37, 6, (7, 6)),
                                                  (5, 132, (1, 5)), (1, 1, (1, 1)), (2000, 132, (16, 125))])
def test_split_units(H, max_blocks, split):
    assert split_units(H, max_blocks) == split


@pytest.mark.parametrize("items, max_threads, threads", [(400, 1024, 416), (400, 512, 416), (1, 1024, 32),
                                                         (1200, 1024, 608), (1000, 512, 512), (39, 1024, 64)])
def test_block_threads(items, max_threads, threads):
    assert block_threads(items, max_threads) == threads


@pytest.mark.parametrize("argument, call", [
    ("H must be a positive integer, got 0", lambda: persistent_geometry(0, 2, 4, 4, max_threads=512,
                                                                         backward_row_pitch=0)),
    ("max_blocks must be a positive integer, got 1.5", lambda: persistent_geometry(5, 2, 4, 1.5, max_threads=512,
                                                                                    backward_row_pitch=20)),
    ("B must be a positive integer, got True", lambda: persistent_geometry(5, True, 4, 4, max_threads=512,
                                                                            backward_row_pitch=20)),
    ("backward_row_pitch must be at least 4H = 20, got 19",
     lambda: persistent_geometry(5, 2, 4, 4, max_threads=512, backward_row_pitch=19)),
])
def test_bad_arguments_are_named(argument, call):
    with pytest.raises(ValueError, match=re.escape(argument)):
        call()


def test_a_geometry_names_a_bad_direction():
    g = persistent_geometry(5, 2, 4, 4, max_threads=512, backward_row_pitch=20)
    with pytest.raises(ValueError, match=r"direction must be one of \('forward', 'backward'\), got 'sideways'"):
        g.shared_bytes("sideways")


def test_residency_asks_each_direction_and_says_why_not():
    g = persistent_geometry(400, 100, 4, 132, max_threads=512, backward_row_pitch=1601)
    asked = []
    assert residency_problem(g, 227 * KB, lambda *query: asked.append(query) or 1000) is None
    assert asked == [(direction, 416, g.shared_bytes(direction)) for direction in DIRECTIONS]
    assert residency_problem(g, 227 * KB, lambda direction, *_: 1000 if direction == "forward" else 64) == (
        "the backward kernel needs 100 co-resident blocks of 416 threads with 25616 B of shared memory each, "
        "but the device holds 64 at once")
    wide = persistent_geometry(400, 100, 4, 8, max_threads=512, backward_row_pitch=1600)   # 50 units per block
    assert residency_problem(wide, 227 * KB, lambda *query: 1000) == (
        "the forward kernel needs 320000 B of shared memory per block (H=400, 50 units per block), above the "
        f"{227 * KB} B a block may have")


def test_a_cooperative_grid_above_the_occupancy_limit_is_refused_naming_both_numbers():
    check_cooperative_grid("k", grid=12, threads=64, shared_bytes=4144, resident=12)   # fits exactly
    with pytest.raises(PersistentUnfit, match=r"^k needs 13 co-resident blocks of 64 threads with 4144 B of shared "
                                              r"memory each, but the device holds 12 at once$"):
        check_cooperative_grid("k", grid=13, threads=64, shared_bytes=4144, resident=12)


def test_recurrence_plan_and_launch_modes():
    turned_off = "persistent kernels turned off: persistent=False or X=0"
    fits, unfit = (lambda: ("plan", None)), (lambda: (None, "too wide"))
    assert recurrence_plan(None, "B=1, H=2", turned_off, fits) == ("plan", None)
    assert recurrence_plan(None, "B=1, H=2", turned_off, unfit) == (None, "persistent kernels do not fit at B=1, "
                                                                          "H=2: too wide")
    assert recurrence_plan(False, "B=1, H=2", turned_off, lambda: pytest.fail("asked")) == (None, turned_off)
    with pytest.raises(ValueError, match="persistent=True, but the persistent kernels cannot run a layer of B=1, "
                                         "H=2: too wide"):
        recurrence_plan(True, "B=1, H=2", turned_off, unfit)
    modes = LaunchModes(None, turned_off)
    assert modes.launch_mode == UNDECIDED and modes.fallback_reason is None
    plans = []
    assert modes.geometry("a", lambda: plans.append("a") or ("plan", None)) == "plan"
    assert modes.launch_mode == PERSISTENT
    assert modes.geometry("b", lambda: (None, "too wide")) is None
    assert (modes.launch_mode, modes.fallback_reason) == (f"{PER_STEP} (too wide)", "too wide")
    assert modes.geometry("a", lambda: pytest.fail("planned twice")) == "plan" and plans == ["a"]
    modes.refuse("a", "refused")
    assert modes.geometry("a", lambda: pytest.fail("planned again")) is None
    assert modes.launch_mode == f"{PER_STEP} (refused)"
    assert LaunchModes(False, turned_off).launch_mode == f"{PER_STEP} ({turned_off})"
    assert LaunchModes(True, turned_off).launch_mode == PERSISTENT
