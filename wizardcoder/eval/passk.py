"""pass@k with the unbiased estimator of Chen et al. 2021 (HumanEval paper).

For a task with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k), the chance that k samples drawn
without replacement contain a correct one. C(n, k) overflows floats for n=200, so we use the product form
1 - prod_{i=n-c+1}^{n} (1 - k/i), which is exact in real arithmetic and stable in floating point; when n - c < k
every draw of k holds a correct sample and pass@k = 1. The benchmark figure is the mean over tasks.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with n samples, c correct (k <= n)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n} c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The closed form with exact integers (a reference for tests; slow for big n)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_ks(ns: Iterable[int], asked: Sequence[int] | None = None) -> list[int]:
    """The k to report: those asked (default 1, 10, 100) that every task's n allows."""
    ns = list(ns)
    if not ns:
        return []
    m = min(ns)
    return [k for k in (asked or (1, 10, 100)) if 1 <= k <= m]


def per_task(counts: dict[str, tuple[int, int]], ks: Sequence[int] | None = None) -> dict[str, dict]:
    """{task_id: {"n", "c", "pass@k" for each asked k <= that task's n}} (all k <= n when `ks` is None)."""
    out = {}
    for tid, (n, c) in counts.items():
        row: dict = {"n": n, "c": c}
        for k in (ks if ks is not None else range(1, n + 1)):
            if 1 <= k <= n:
                row[f"pass@{k}"] = pass_at_k(n, c, k)
        out[tid] = row
    return out


def overall(counts: dict[str, tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over tasks of pass@k, for each k that every task's n allows."""
    res = {}
    for k in default_ks((n for n, _ in counts.values()), ks):
        res[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
    return res
