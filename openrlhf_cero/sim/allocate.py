"""Spend a step's budget on a pool of prompts to maximise a separable value.

    maximise  sum_i V_i(n_i)   subject to  sum_i n_i = budget,  n_i in {0} u [lo, hi]

``V_i`` is any table (not necessarily concave: a group's expected gradient per rollout
rises with n when most groups of a few rollouts are all-wrong). The solver is greedy on
the upper concave hull of each prompt's options: every prompt's hull is a chain of
segments with falling slopes (value per rollout); the segments of all prompts, steepest
first, are taken while they fit, and the first that does not fit is taken in part. This is
the optimum of the problem's linear relaxation except for that one partial segment, so the
value is within one segment's hull gap of the best possible (tests compare it with exact
dynamic programming). Ties go to smaller groups, so budget of no value is spread rather
than piled up. Small problems (pool x budget up to ``EXACT_SIZE``) are solved exactly by
dynamic programming instead. Used by the oracle and by the ``beta_greedy`` baseline.
"""

from __future__ import annotations

import numpy as np

EXACT_SIZE = 2_000  # pool size x budget up to which best_counts solves exactly (tests; tiny steps)


def _hull_segments(values: np.ndarray, options: np.ndarray) -> tuple[np.ndarray, ...]:
    """Segments (prompt, start, end, slope) of each prompt's upper concave hull over ``options``
    (group sizes, options[0] = 0), walked from 0; each prompt's slopes fall along its chain.
    Rows of no value at all (a hopeless prompt) get unit steps of slope 0 without a walk."""
    size, m = values.shape
    scale = max(float(np.abs(values).max()), 1e-300)
    flat = np.abs(values).max(axis=1) <= 1e-12 * scale
    zero_rows = np.flatnonzero(flat)
    parts: list[tuple[np.ndarray, ...]] = []
    if zero_rows.size:
        starts = np.tile(options[:-1], zero_rows.size)
        parts.append((np.repeat(zero_rows, m - 1), starts, np.tile(options[1:], zero_rows.size), np.zeros(starts.size)))
    current = np.zeros(size, dtype=np.int64)
    previous = np.full(size, np.inf)  # slopes along a chain never rise (ties within tolerance)
    active = np.flatnonzero(~flat)
    while active.size:
        c = current[active]
        dn = options[None, :] - options[c][:, None]
        dv = values[active] - values[active, c][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(dn > 0, dv / np.where(dn > 0, dn, 1), -np.inf)
        best_slope = slope.max(axis=1)
        # the nearest option whose slope ties the best (relative 1e-9): smaller groups first
        best = np.argmax(slope >= best_slope[:, None] - 1e-9 * scale, axis=1)
        best_slope = np.minimum(best_slope, previous[active])
        previous[active] = best_slope
        parts.append((active, options[c], options[best], best_slope))
        current[active] = best
        active = active[best < m - 1]
    prompt, start, end, slope = (np.concatenate(x) for x in zip(*parts))
    return prompt, start, end, slope


def exact_counts(values: np.ndarray, budget: int, lo: int, hi: int) -> np.ndarray:
    """The optimum by dynamic programming over prompts and budget spent (O(pool x budget x hi));
    -inf where a total cannot be reached. Ties go to the first prompts' smaller groups."""
    size = values.shape[0]
    options = [0] + list(range(lo, hi + 1))
    tolerance = 1e-12 * max(1.0, float(np.abs(values).max(initial=0.0)))
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((size, budget + 1), dtype=np.int64)
    for i in range(size):
        new = best.copy()  # n = 0
        for n in options[1:]:
            if n > budget:
                break
            candidate = np.full(budget + 1, -np.inf)
            candidate[n:] = best[: budget + 1 - n] + (values[i, n] - values[i, 0])
            better = candidate > new + tolerance
            new = np.where(better, candidate, new)
            choice[i, better] = n
        best = new
    spent = budget if np.isfinite(best[budget]) else int(np.flatnonzero(np.isfinite(best)).max())
    counts = np.zeros(size, dtype=np.int64)
    for i in range(size - 1, -1, -1):
        counts[i] = choice[i, spent]
        spent -= counts[i]
    return counts


def best_counts(values: np.ndarray, budget: int, lo: int, hi: int) -> np.ndarray:
    """Group sizes (0 = skip) for the pool whose values are ``values[i, n]`` (n = 0..hi; columns
    1..lo-1 are ignored and ``values[:, 0]`` is taken as 0). Spends ``budget`` exactly when
    the pool can (at least budget / hi prompts), else as much as it can."""
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[0]
    counts = np.zeros(size, dtype=np.int64)
    budget = int(budget)
    if size == 0 or budget < lo:
        return counts
    if size * budget <= EXACT_SIZE:
        return exact_counts(values, budget, lo, hi)
    return greedy_counts(values, budget, lo, hi)


def greedy_counts(values: np.ndarray, budget: int, lo: int, hi: int) -> np.ndarray:
    """Greedy on the concave hulls (module docstring); for large pools."""
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[0]
    counts = np.zeros(size, dtype=np.int64)
    budget = int(budget)
    options = np.concatenate([[0], np.arange(lo, hi + 1)]).astype(np.int64)
    table = values[:, options] - values[:, :1]
    prompt, start, end, slope = _hull_segments(table, options)
    order = np.lexsort((prompt, start, -slope))
    length = (end - start)[order]
    fits = np.cumsum(length) <= budget
    taken = order[fits] if fits.all() else order[: int(np.argmin(fits))]
    np.maximum.at(counts, prompt[taken], end[taken])
    left = budget - int(counts.sum())
    if left > 0 and not fits.all():  # the first segment that does not fit, in part
        q, a = int(prompt[order[taken.size]]), int(start[order[taken.size]])
        if a + left >= lo and counts[q] == a:
            counts[q] = a + left
            left = 0
    while left > 0:  # a remainder below lo: one rollout at a time where it adds most
        grow = (counts >= lo) & (counts < hi)
        if grow.any():
            gain = np.where(grow, values[np.arange(size), np.minimum(counts + 1, hi)] - values[np.arange(size), counts], -np.inf)
            counts[int(np.argmax(gain))] += 1
            left -= 1
            continue
        # every trained group is full: shrink one by (lo - left) and start the best unused prompt
        donors = np.flatnonzero(counts - (lo - left) >= lo)
        fresh = np.flatnonzero(counts == 0)
        if not donors.size or not fresh.size:
            break
        counts[donors[0]] -= lo - left
        counts[fresh[int(np.argmax(values[fresh, lo]))]] = lo
        left = 0
    return counts
