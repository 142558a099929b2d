"""The persistent launch plan both GPU backends share: how one cooperative launch runs a layer's recurrence.

A persistent launch runs all T steps of one layer and window, forward or
backward, in one grid: block ``blk`` owns the hidden units
``blk*U .. blk*U + U - 1`` (fewer in the last block) for every batch row,
keeps its slice of ``Wh`` in shared memory for the whole window, and a grid
barrier stands between steps. The grid is semantic (a block that never runs
leaves its units uncomputed) and the barrier spins, so every block must be
resident at once: the plan is checked against the device when it is made and
again before every launch.

Each backend keeps only its own residency query (the driver's occupancy
calculator through CuPy or numba-cuda) and passes it in; everything else is
here: the unit split (:func:`split_units`), the block size
(:func:`block_threads`), the one geometry type, the co-residency checks, and
how a backend reports what it chose (:class:`LaunchModes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ltexec.backends.common import ceil_div

DIRECTIONS = ("forward", "backward")

PERSISTENT = "persistent"
"""A GPU backend's ``launch_mode`` when the latest layer ran its recurrence as one launch per direction."""

PER_STEP = "per-step launches"
"""The start of a GPU backend's ``launch_mode``, "per-step launches (why)", when it ran a launch per step."""

UNDECIDED = "persistent where a layer's shape fits, else per-step launches (no layer run yet)"
"""A GPU backend's ``launch_mode`` in auto mode before the first layer: the choice is made per layer shape."""


# ------------------------------------------------------------------ geometry

@dataclass(frozen=True)
class PersistentGeometry:
    """One persistent launch of a layer of (B, H): ``grid`` blocks of ``threads`` threads, ``units_per_block`` each."""

    H: int
    B: int
    itemsize: int
    units_per_block: int
    grid: int
    threads: int
    forward_shared_bytes: int     # the Wh columns of the block's units, four gates: H x 4U values
    backward_shared_bytes: int    # the Wh rows of the block's units: U x (row pitch) values

    def shared_bytes(self, direction: str) -> int:
        """Dynamic shared memory per block of the ``direction`` ("forward" or "backward") kernel."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return self.forward_shared_bytes if direction == "forward" else self.backward_shared_bytes


def split_units(H: int, max_blocks: int) -> tuple[int, int]:
    """(units per block, grid): the fewest units per block that keep the grid within ``max_blocks``.

    With ``max_blocks`` the SM count this is one block per SM at most: every
    block reads all of h_{t-1} (backward: da_{t+1}) each step and arrives at
    the barrier, so more, emptier blocks only add traffic and arrivals, while
    one block per SM already spreads Wh over the whole device. Every block
    of the grid is non-empty.
    """
    units = ceil_div(H, max_blocks)
    return units, ceil_div(H, units)


def block_threads(items: int, max_threads: int) -> int:
    """Threads for a block's ``items`` (row, unit) pairs: spread evenly over the fewest passes of at most
    ``max_threads``, rounded up to a whole warp (threads past the last pair stay idle)."""
    per_pass = ceil_div(items, ceil_div(items, max_threads))
    return min(max_threads, 32 * ceil_div(per_pass, 32))


def persistent_geometry(H: int, B: int, itemsize: int, max_blocks: int, *, max_threads: int,
                        backward_row_pitch: int) -> PersistentGeometry:
    """The plan for a layer of (B, H) on ``max_blocks`` SMs; ``backward_row_pitch`` is how many values one
    unit's row of Wh takes in the backward kernel's shared memory (4H, or 4H + 1 to spread banks)."""
    for name, value in (("H", H), ("B", B), ("itemsize", itemsize), ("max_blocks", max_blocks),
                        ("max_threads", max_threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if backward_row_pitch < 4 * H:
        raise ValueError(f"backward_row_pitch must be at least 4H = {4 * H}, got {backward_row_pitch}")
    units, grid = split_units(H, max_blocks)
    return PersistentGeometry(H=H, B=B, itemsize=itemsize, units_per_block=units, grid=grid,
                              threads=block_threads(units * B, max_threads),
                              forward_shared_bytes=H * 4 * units * itemsize,
                              backward_shared_bytes=units * backward_row_pitch * itemsize)


# -------------------------------------------------------------- residency

def residency_problem(geometry: PersistentGeometry, shared_limit: int,
                      resident_grid: Callable[[str, int, int], int]) -> str | None:
    """None if both directions' kernels can run with every block resident, else why not.

    ``resident_grid(direction, threads, shared_bytes)``: the most blocks of
    that kernel the device holds at once (the backend's occupancy query);
    ``shared_limit``: the dynamic shared memory a block may have after opting in.
    """
    g = geometry
    for direction in DIRECTIONS:
        nbytes = g.shared_bytes(direction)
        if nbytes > shared_limit:
            return (f"the {direction} kernel needs {nbytes} B of shared memory per block (H={g.H}, "
                    f"{g.units_per_block} units per block), above the {shared_limit} B a block may have")
        fits = resident_grid(direction, g.threads, nbytes)
        if fits < g.grid:
            return (f"the {direction} kernel needs {g.grid} co-resident blocks of {g.threads} threads with "
                    f"{nbytes} B of shared memory each, but the device holds {fits} at once")
    return None


class PersistentUnfit(ValueError):
    """A persistent launch cannot run on this device as planned; the message says why."""


def check_cooperative_grid(kernel: str, grid: int, threads: int, shared_bytes: int, resident: int) -> None:
    """Raise :class:`PersistentUnfit` naming both numbers unless all ``grid`` blocks fit on the device at once
    (``resident``: the device's most co-resident blocks of ``kernel`` at this block and shared memory).

    Checked before every cooperative launch, not only when the launch is
    planned: a launch library may shrink a 1-D cooperative grid that does not
    fit to what does (CuPy does, with only a warning), which would leave
    units uncomputed.
    """
    if grid > resident:
        raise PersistentUnfit(f"{kernel} needs {grid} co-resident blocks of {threads} threads with {shared_bytes} B "
                              f"of shared memory each, but the device holds {resident} at once")


# ------------------------------------------------------------ launch modes

def turned_off_reason(variable: str) -> str:
    """Why a GPU backend's recurrence runs per step when its persistent kernels were turned off."""
    return f"persistent kernels turned off: persistent=False or {variable}=0"


def recurrence_plan(requested: bool | None, shape: str, turned_off: str, find) -> tuple:
    """How a layer of ``shape`` (e.g. "B=100, H=400") runs its recurrence: (geometry, None) for one
    persistent launch per window and direction, or (None, why not) for per-step launches.

    ``find()`` gives (the persistent launch's geometry, None where it fits,
    else why not); it is not called when ``requested`` is False (``turned_off``
    is then the reason). ``requested`` True turns a shape that does not fit
    into a ValueError naming why; None (auto) falls back to per-step launches.
    """
    if requested is False:
        return None, turned_off
    geometry, problem = find()
    if problem is None:
        return geometry, None
    if requested:
        raise ValueError(f"persistent=True, but the persistent kernels cannot run a layer of {shape}: {problem}")
    return None, f"persistent kernels do not fit at {shape}: {problem}"


class LaunchModes:
    """A GPU backend's plan per layer shape, and how its latest layer ran the recurrence.

    ``launch_mode``: PERSISTENT or "per-step launches (why)" after a layer;
    before the first, what ``requested`` implies (UNDECIDED in auto mode).
    ``fallback_reason``: the why alone (None when persistent, or undecided).
    """

    def __init__(self, requested: bool | None, turned_off: str):
        self.fallback_reason = turned_off if requested is False else None
        self.launch_mode = {None: UNDECIDED, True: PERSISTENT, False: f"{PER_STEP} ({turned_off})"}[requested]
        self._plans: dict = {}                       # shape -> (geometry or None, why not)

    def geometry(self, shape, plan):
        """The persistent launch for ``shape`` (any hashable key), or None for per-step launches.

        ``plan()`` (a :func:`recurrence_plan`) is called once per shape; every
        call records the shape's mode as the latest.
        """
        if shape not in self._plans:
            self._plans[shape] = plan()
        geometry, self.fallback_reason = self._plans[shape]
        self.launch_mode = PERSISTENT if geometry is not None else f"{PER_STEP} ({self.fallback_reason})"
        return geometry

    def refuse(self, shape, why: str) -> None:
        """``shape``'s persistent launch was refused at launch time: per step from now on, because ``why``."""
        self._plans[shape] = (None, why)
        self.fallback_reason, self.launch_mode = why, f"{PER_STEP} ({why})"
