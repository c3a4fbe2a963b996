"""Best-fit-decreasing: agrees with the plain O(n * packs) loop pack for pack, respects capacity, is fast."""
import time

import numpy as np
import pytest

from wizardcoder.data.packing import (
    best_fit_decreasing,
    best_fit_decreasing_reference,
    packing_efficiency,
    padded_efficiency,
)


def as_lists(items, offsets):
    return [items[offsets[p] : offsets[p + 1]].tolist() for p in range(len(offsets) - 1)]


@pytest.mark.parametrize("n,capacity,hi", [(1, 8, 8), (37, 16, 16), (500, 512, 300), (3000, 2048, 2048), (2000, 100, 7)])
def test_matches_reference(n, capacity, hi):
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, hi + 1, n)
    items, offsets = best_fit_decreasing(lengths, capacity)
    assert as_lists(items, offsets) == best_fit_decreasing_reference(lengths, capacity)
    assert sorted(items.tolist()) == list(range(n))  # every item exactly once
    loads = np.add.reduceat(lengths[items], offsets[:-1])
    assert loads.max() <= capacity


def test_edge_cases():
    items, offsets = best_fit_decreasing([], 16)
    assert len(items) == 0 and offsets.tolist() == [0]
    items, offsets = best_fit_decreasing([16, 16, 1], 16)
    assert as_lists(items, offsets) == [[0], [1], [2]]
    with pytest.raises(ValueError, match=r"in \[1, 16\]"):
        best_fit_decreasing([17], 16)
    with pytest.raises(ValueError):
        best_fit_decreasing([0, 3], 16)


def test_packing_100k_samples_takes_well_under_seconds():
    rng = np.random.default_rng(0)
    # evolved-data-like lengths: mean ~330, long tail, capped at the pack size
    lengths = np.minimum(rng.lognormal(5.5, 0.8, 100_000).astype(np.int64) + 20, 2048)
    t = time.perf_counter()
    items, offsets = best_fit_decreasing(lengths, 2048)
    elapsed = time.perf_counter() - t
    assert elapsed < 3.0, elapsed
    eff = packing_efficiency(lengths, len(offsets) - 1, 2048)
    assert eff >= 0.99
    lower_bound = -(-int(lengths.sum()) // 2048)
    assert lower_bound <= len(offsets) - 1 <= lower_bound * 1.01
    assert np.add.reduceat(lengths[items], offsets[:-1]).max() <= 2048
    assert np.array_equal(np.sort(items), np.arange(len(lengths)))


def test_padded_efficiency_against_a_loop():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 500, 101)
    perm = np.random.default_rng(7).permutation(len(lengths))
    real = padded = 0
    for s in range(0, len(perm), 16):
        batch = lengths[perm[s : s + 16]]
        real += batch.sum()
        padded += batch.max() * len(batch)
    assert padded_efficiency(lengths, 16, seed=7) == pytest.approx(real / padded, rel=1e-12)
    assert padded_efficiency(np.full(32, 9), 16) == 1.0
    assert packing_efficiency([3, 5], 1, 8) == 1.0
