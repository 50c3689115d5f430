"""Water-filling: the budget dual that makes clipped per-prompt allocations spend a total,
and rounding to integers that keeps the total and the bounds exactly.

Every prompt's continuous allocation ``n_i(t)`` is non-increasing in the log budget dual
``t = log lambda`` and clipped to ``[low, high]``, so the total is monotone in t and one
scalar root (scipy's brentq) sets it to any feasible budget. Rounding by largest
remainder then moves at most one rollout per prompt.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import brentq

# n(t) for every prompt of the batch at log budget dual t (before clipping).
Allocation = Callable[[float], np.ndarray]


def solve_log_dual(
    allocation: Allocation, low: int, high: int | np.ndarray, total: float, bracket: tuple[float, float]
) -> float:
    """The t at which ``sum(clip(allocation(t), low, high)) == total`` (``high`` may be
    one bound per prompt).

    ``bracket = (t_all_high, t_all_low)``: at the first every prompt is at ``high``, at
    the second every prompt is at ``low``. ``total`` must lie between those sums.
    """
    t_all_high, t_all_low = bracket

    def excess(t: float) -> float:
        return float(np.clip(allocation(t), low, high).sum()) - total

    if excess(t_all_low) >= 0.0:
        return t_all_low
    if excess(t_all_high) <= 0.0:
        return t_all_high
    return brentq(excess, t_all_high, t_all_low, xtol=1e-9, rtol=1e-12, maxiter=200)


def solve_clipped_linear(
    slope: np.ndarray, offset: np.ndarray, low: int, high: int | np.ndarray, total: float
) -> float:
    """Exact s with ``sum(clip(slope * s - offset, low, high)) == total`` (slope > 0).

    Both utility forms are of this kind in a suitable variable (exp: s = -log lambda;
    hyperbolic: s = lambda^-1/2), so the total is piecewise linear in s: sort the
    2 x batch breakpoints, accumulate the total's slope between them and interpolate in
    the crossing segment. O(batch log batch), no iterations; a step may re-solve several
    times when it skips prompts, which brentq made the slowest part of a step."""
    high = np.broadcast_to(np.asarray(high, dtype=np.float64), slope.shape)
    enter = (low + offset) / slope  # left of it the prompt sits at low
    leave = (high + offset) / slope  # right of it, at its upper bound
    points = np.concatenate([enter, leave])
    slope_change = np.concatenate([slope, -slope])
    order = np.argsort(points, kind="stable")
    points, slope_change = points[order], slope_change[order]
    slopes = np.cumsum(slope_change)[:-1]  # the total's slope between consecutive points
    totals = low * slope.size + np.concatenate([[0.0], np.cumsum(slopes * np.diff(points))])
    if total <= totals[0]:
        return float(points[0])
    if total >= totals[-1]:
        return float(points[-1])
    j = int(np.searchsorted(totals, total, side="right")) - 1  # totals[j] <= total < totals[j + 1]
    if slopes[j] <= 0.0:
        return float(points[j])
    return float(points[j] + (total - totals[j]) / slopes[j])


def round_to_total(continuous: np.ndarray, total: int, low: int, high: int | np.ndarray) -> np.ndarray:
    """Integers within ``[low, high]`` summing to ``total``, each within one of ``continuous``
    where the bounds allow (largest remainder; ties go to the earlier position). ``high``
    may be one bound per prompt."""
    size = continuous.size
    most = int(np.broadcast_to(high, size).sum())
    if not low * size <= total <= most:
        raise ValueError(f"total {total} is outside [{low * size}, {most}] for {size} prompts")
    clipped = np.clip(continuous, low, high)
    counts = np.floor(clipped + 1e-9).astype(np.int64)
    remainder = clipped - counts
    missing = int(total - counts.sum())
    while missing:
        if missing > 0:  # round up the largest remainders that have room
            room = np.flatnonzero(counts < high)
            order = room[np.argsort(-remainder[room], kind="stable")]
            chosen = order[:missing]
            counts[chosen] += 1
        else:  # round down the smallest remainders above the floor
            room = np.flatnonzero(counts > low)
            order = room[np.argsort(remainder[room], kind="stable")]
            chosen = order[:-missing]
            counts[chosen] -= 1
        remainder[chosen] = 0.0
        missing = int(total - counts.sum())
    return counts
