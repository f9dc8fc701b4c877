"""The few tests the compare view needs, in plain Python (no scipy): did a share change
beyond noise between two analyses, and did a distribution move.

* Two shares: Fisher's exact test (two-sided, hypergeometric) when a 2x2 table has an
  expected count below 5, where the normal approximation is poor; else the pooled
  two-proportion z-test.
* Two samples of times: the Mann-Whitney U test with the normal approximation (ties
  corrected).
* Many tests on one page: Holm's step-down adjustment, so "changed" means beyond noise
  for the page as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _norm_sf2(z: float) -> float:
    """Two-sided normal tail: P(|Z| >= |z|)."""
    return math.erfc(abs(z) / math.sqrt(2))


def z_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test for x1/n1 against x2/n2."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return _norm_sf2((x1 / n1 - x2 / n2) / se)


def _log_hyper(k: int, row1: int, col1: int, n: int) -> float:
    """log P(X = k) for the 2x2 table with first-row total row1, first-column total col1."""

    def lc(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return lc(col1, k) + lc(n - col1, row1 - k) - lc(n, row1)


def fisher_exact(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for the table [[x1, n1-x1], [x2, n2-x2]]:
    the probability of every table with the same margins no likelier than this one."""
    n, col1 = n1 + n2, x1 + x2
    lo, hi = max(0, col1 - n2), min(n1, col1)
    if lo == hi:
        return 1.0
    ks = np.arange(lo, hi + 1)
    logs = np.array([_log_hyper(int(k), n1, col1, n) for k in ks])
    obs = _log_hyper(x1, n1, col1, n)
    # relative tolerance, as R and scipy use, so equal probabilities compare equal
    mask = logs <= obs + 1e-7
    top = logs.max()
    return float(min(1.0, np.exp(logs[mask] - top).sum() / np.exp(logs - top).sum()))


@dataclass
class ShareTest:
    p_value: float
    method: str  # "Fisher's exact" | "z-test"


def compare_shares(x1: int, n1: int, x2: int, n2: int) -> ShareTest:
    """Fisher's exact test where an expected cell count is below 5, else the z-test."""
    n, col1 = n1 + n2, x1 + x2
    if n == 0:
        return ShareTest(1.0, "none")
    expected = [n1 * col1 / n, n1 * (n - col1) / n, n2 * col1 / n, n2 * (n - col1) / n]
    if min(expected) < 5:
        return ShareTest(fisher_exact(x1, n1, x2, n2), "Fisher's exact")
    return ShareTest(z_test(x1, n1, x2, n2), "z-test")


def mann_whitney(a, b) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected):
    do values in ``a`` tend to be larger or smaller than in ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(both)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    t = (ends - starts).astype(float)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - (t**3 - t).sum() / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u1 - n1 * n2 / 2) / math.sqrt(var)
    return _norm_sf2(z)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
