"""The session-parallel mini-batch schedule of one epoch (GRU4Rec), built ahead of time in Numba, in chunks.

B slots run side by side. At each step slot b feeds item t of its session and predicts item t+1. A slot whose
session is finished takes the next session (in SessionData order) and its hidden state is zeroed: ``reset`` is
True at the step where the new session's first pair is fed (and for every slot at step 0, since the hidden
state is zero at epoch start). Sessions shorter than 2 give no pair and never occupy a slot. When no session
is left, a slot goes inactive (``active=False``, input and target 0) while the others continue; the epoch
ends when every slot is inactive. Shapes stay fixed at [T, B].

The iterator's whole state is a few [B] arrays and two counters, so a 10^9-event epoch is produced chunk by
chunk and can be resumed from ``state()`` (e.g. from a checkpoint) at any chunk boundary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numba import njit

__all__ = ["EpochSchedule", "ScheduleChunk"]


@dataclass
class ScheduleChunk:
    """``T`` consecutive steps of the schedule (T <= max_steps; smaller only for the epoch's last chunk)."""

    inputs: np.ndarray   # int32 [T, B] item index fed at each step (0 where inactive)
    targets: np.ndarray  # int32 [T, B] item index to predict (0 where inactive)
    active: np.ndarray   # bool  [T, B]
    reset: np.ndarray    # bool  [T, B] zero the slot's hidden state before this step
    step0: int           # global index (within the epoch) of the chunk's first step
    n_events: int        # number of active (input, target) pairs

    @property
    def n_steps(self) -> int:
        return int(self.inputs.shape[0])


@njit(cache=True)
def _next_session(offsets, s):
    """First session index >= s with at least 2 events (len(offsets)-1 if none)."""
    n = offsets.size - 1
    while s < n and offsets[s + 1] - offsets[s] < 2:
        s += 1
    return s


@njit(cache=True)
def _init_slots(offsets, slot_pos, slot_end, slot_reset):
    """Put the first B sessions of length >= 2 into the slots; returns the next-session pointer."""
    n = offsets.size - 1
    s = 0
    for b in range(slot_pos.size):
        s = _next_session(offsets, s)
        if s < n:
            slot_pos[b] = offsets[s]
            slot_end[b] = offsets[s + 1]
            s += 1
        else:
            slot_pos[b] = -1
            slot_end[b] = -1
        slot_reset[b] = True
    return s


@njit(cache=True, nogil=True)
def _fill(offsets, items, slot_pos, slot_end, slot_reset, next_sess, inputs, targets, active, reset, max_steps):
    """Write up to ``max_steps`` steps; mutates the slot state. Returns (n_steps, next_sess, n_events).

    Slot invariant between steps: an active slot has slot_pos + 1 < slot_end (a pair is ready), an inactive one
    has slot_pos == -1. Slots that finish at the same step take the next sessions in slot order."""
    B = slot_pos.size
    n = offsets.size - 1
    n_events = 0
    t = 0
    while t < max_steps:
        any_active = False
        for b in range(B):
            if slot_pos[b] >= 0:
                any_active = True
                break
        if not any_active:
            break
        for b in range(B):
            p = slot_pos[b]
            reset[t, b] = slot_reset[b]
            slot_reset[b] = False
            if p < 0:
                inputs[t, b] = 0
                targets[t, b] = 0
                active[t, b] = False
                continue
            inputs[t, b] = items[p]
            targets[t, b] = items[p + 1]
            active[t, b] = True
            n_events += 1
            p += 1
            if p + 1 >= slot_end[b]:
                next_sess = _next_session(offsets, next_sess)
                if next_sess < n:
                    slot_pos[b] = offsets[next_sess]
                    slot_end[b] = offsets[next_sess + 1]
                    slot_reset[b] = True
                    next_sess += 1
                else:
                    slot_pos[b] = -1
                    slot_end[b] = -1
            else:
                slot_pos[b] = p
        t += 1
    return t, next_sess, n_events


@njit(cache=True)
def _count_steps(offsets, batch_size):
    """Exact number of steps of an epoch: list scheduling of (len-1)-step sessions on B slots, via a min-heap
    of slot finish times. O(n_sessions log B), no per-event work."""
    heap = np.zeros(batch_size, dtype=np.int64)  # finish times; all slots free at 0
    n = offsets.size - 1
    for s in range(n):
        d = offsets[s + 1] - offsets[s] - 1
        if d < 1:
            continue
        # replace the root (earliest free slot) by its new finish time, then sift down
        v = heap[0] + d
        i = 0
        while True:
            c = 2 * i + 1
            if c >= batch_size:
                break
            if c + 1 < batch_size and heap[c + 1] < heap[c]:
                c += 1
            if heap[c] >= v:
                break
            heap[i] = heap[c]
            i = c
        heap[i] = v
    return heap.max()


class EpochSchedule:
    """Resumable iterator over the session-parallel schedule of one epoch.

    ``offsets`` int64 [n_sessions+1] and ``items`` int32 [n_events] are SessionData's arrays (sessions in
    training order). ``next_chunk(max_steps)`` returns the next ``ScheduleChunk`` or None when the epoch is done.
    """

    def __init__(self, offsets: np.ndarray, items: np.ndarray, batch_size: int):
        self.offsets, self.items, self.batch_size = _check_inputs(offsets, items, batch_size)
        B = self.batch_size
        self._slot_pos = np.empty(B, dtype=np.int64)
        self._slot_end = np.empty(B, dtype=np.int64)
        self._slot_reset = np.empty(B, dtype=np.bool_)
        self._next_sess = int(_init_slots(self.offsets, self._slot_pos, self._slot_end, self._slot_reset))
        self._step = 0
        self._n_events_done = 0
        self._n_steps_total: int | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def n_steps_total(self) -> int:
        """Exact number of steps of the whole epoch (independent of how far the iterator is)."""
        if self._n_steps_total is None:
            self._n_steps_total = int(_count_steps(self.offsets, self.batch_size))
        return self._n_steps_total

    @property
    def n_events_total(self) -> int:
        """Number of (input, target) pairs of the epoch: sum of (length - 1) over sessions of length >= 2."""
        lens = np.diff(self.offsets)
        return int((lens[lens >= 2] - 1).sum())

    @property
    def step(self) -> int:
        """Global index of the next step to be produced."""
        return self._step

    @property
    def done(self) -> bool:
        return bool(np.all(self._slot_pos < 0))

    # ------------------------------------------------------------------ iteration
    def next_chunk(self, max_steps: int) -> ScheduleChunk | None:
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps!r}")
        max_steps = int(max_steps)
        if self.done:
            return None
        B = self.batch_size
        inputs = np.empty((max_steps, B), dtype=np.int32)
        targets = np.empty((max_steps, B), dtype=np.int32)
        active = np.empty((max_steps, B), dtype=np.bool_)
        reset = np.empty((max_steps, B), dtype=np.bool_)
        T, self._next_sess, n_ev = _fill(self.offsets, self.items, self._slot_pos, self._slot_end,
                                         self._slot_reset, self._next_sess, inputs, targets, active, reset,
                                         max_steps)
        T, n_ev = int(T), int(n_ev)
        self._next_sess = int(self._next_sess)
        if T < max_steps:  # last chunk: trim to the steps actually written
            inputs, targets, active, reset = inputs[:T], targets[:T], active[:T], reset[:T]
        chunk = ScheduleChunk(inputs, targets, active, reset, self._step, n_ev)
        self._step += T
        self._n_events_done += n_ev
        return chunk

    def chunks(self, max_steps: int) -> Iterator[ScheduleChunk]:
        """Iterate ``next_chunk(max_steps)`` until the epoch is done."""
        while True:
            c = self.next_chunk(max_steps)
            if c is None:
                return
            yield c

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, np.ndarray | int]:
        """Everything needed to resume at the current chunk boundary (copies; small: 3 [B] arrays + counters)."""
        return {"slot_pos": self._slot_pos.copy(), "slot_end": self._slot_end.copy(),
                "slot_reset": self._slot_reset.copy(), "next_session": self._next_sess, "step": self._step,
                "n_events_done": self._n_events_done}

    @classmethod
    def from_state(cls, offsets: np.ndarray, items: np.ndarray, batch_size: int,
                   state: dict[str, np.ndarray | int]) -> "EpochSchedule":
        self = cls(offsets, items, batch_size)
        B = self.batch_size
        try:
            pos = np.asarray(state["slot_pos"], dtype=np.int64)
            end = np.asarray(state["slot_end"], dtype=np.int64)
            rst = np.asarray(state["slot_reset"], dtype=np.bool_)
            nxt, step = int(state["next_session"]), int(state["step"])
            done = int(state.get("n_events_done", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an EpochSchedule state: {e}") from None
        if pos.shape != (B,) or end.shape != (B,) or rst.shape != (B,):
            raise ValueError(f"EpochSchedule state is for another batch size: slot arrays of shape {pos.shape}, "
                             f"batch_size={B}")
        n_ev, n_sess = self.items.size, self.offsets.size - 1
        act = pos >= 0
        if (not 0 <= nxt <= n_sess or step < 0 or np.any(end[act] > n_ev) or np.any(pos[act] + 1 >= end[act])
                or np.any(pos[~act] != -1)):
            raise ValueError("EpochSchedule state does not fit these offsets/items (was it saved for other data?)")
        self._slot_pos[:], self._slot_end[:], self._slot_reset[:] = pos, end, rst
        self._next_sess, self._step, self._n_events_done = nxt, step, done
        return self


def _check_inputs(offsets, items, batch_size):
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    items = np.ascontiguousarray(items, dtype=np.int32)
    if offsets.ndim != 1 or offsets.size < 1 or items.ndim != 1:
        raise ValueError("offsets must be a 1-D array [n_sessions+1] and items a 1-D array [n_events]")
    if offsets[0] != 0 or offsets[-1] != items.size or np.any(np.diff(offsets) < 0):
        raise ValueError(f"offsets must start at 0, be non-decreasing and end at len(items)={items.size}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    return offsets, items, int(batch_size)
