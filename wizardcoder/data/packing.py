"""Packing: place tokenized samples into fixed token budgets (packs of `capacity` tokens) with best-fit-decreasing.

Samples are never split. Sorted longest first, each goes into the open pack whose free room is the smallest that still
fits it (ties: the lowest pack index), or into a new pack. Open packs are kept in buckets by free room (a heap of pack
ids per room value) plus a sorted list of the room values that have any pack; a `bisect` finds the best fit, so a sample
costs O(log capacity) and 100k samples pack in well under a second. `best_fit_decreasing_reference` is the plain
O(n * packs) loop it must agree with, pack for pack.

`padded_efficiency` measures the alternative WizardCoder trains with: random batches of `batch_size`, right-padded to
the longest sample in the batch.
"""
from __future__ import annotations

import bisect
import heapq

import numpy as np


# The longest pack best_fit_decreasing takes: its table of free room has capacity + 1 entries (a million tokens is
# beyond any model this trains; 10^11 would be 19 GB before the first sample is placed).
MAX_CAPACITY = 1 << 20


def best_fit_decreasing(lengths, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack items of `lengths` (each 1..capacity) into packs of `capacity`.

    Returns (items, pack_offsets): pack p holds items[pack_offsets[p]:pack_offsets[p+1]] (indices into `lengths`), in
    the order they were placed (longest first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"item lengths must be in [1, {capacity}], got [{lengths.min()}, {lengths.max()}]")
    order = np.argsort(-lengths, kind="stable")
    pack_of = np.empty(n, np.int64)
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]  # free room -> heap of pack ids
    rooms: list[int] = []  # sorted free-room values whose bucket is non-empty
    n_packs = 0
    lens = lengths.tolist()
    for i in order.tolist():
        size = lens[i]
        j = bisect.bisect_left(rooms, size)
        if j == len(rooms):  # nothing fits: open a pack
            p, room = n_packs, capacity - size
            n_packs += 1
        else:
            r = rooms[j]
            heap = buckets[r]
            p = heapq.heappop(heap)
            if not heap:
                del rooms[j]
            room = r - size
        pack_of[i] = p
        if room:  # a full pack takes nothing more
            heap = buckets[room]
            if not heap:
                bisect.insort(rooms, room)
            heapq.heappush(heap, p)
    items = order[np.argsort(pack_of[order], kind="stable")]
    pack_offsets = np.zeros(n_packs + 1, np.int64)
    np.cumsum(np.bincount(pack_of, minlength=n_packs), out=pack_offsets[1:])
    return items, pack_offsets


def best_fit_decreasing_reference(lengths, capacity: int) -> list[list[int]]:
    """The obviously-correct O(n * packs) best-fit-decreasing, for tests and the benchmark."""
    lengths = [int(x) for x in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable, like argsort(kind="stable")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        best = -1
        for p, r in enumerate(room):
            if r >= lengths[i] and (best < 0 or r < room[best]):
                best = p
        if best < 0:
            packs.append([])
            room.append(capacity)
            best = len(packs) - 1
        packs[best].append(i)
        room[best] -= lengths[i]
    return packs


def packing_efficiency(lengths, n_packs: int, capacity: int) -> float:
    """Real tokens over the tokens the packs occupy."""
    return float(np.sum(lengths)) / (n_packs * capacity) if n_packs else 0.0


def padded_efficiency(lengths, batch_size: int = 16, seed: int = 0) -> float:
    """Real tokens over padded tokens for WizardCoder's recipe: samples in random order (the HF Trainer's
    RandomSampler), batches of `batch_size` (the last may be smaller), each right-padded to its longest sample."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return 0.0
    shuffled = lengths[np.random.default_rng(seed).permutation(len(lengths))]
    starts = np.arange(0, len(shuffled), batch_size)
    longest = np.maximum.reduceat(shuffled, starts)
    sizes = np.diff(np.append(starts, len(shuffled)))
    return float(shuffled.sum()) / float((longest * sizes).sum())
