"""Choosing the step's training rollouts from scores: reuse cap, top-k, sign balance.

All functions take the pool (fresh rows first, then buffered) as flat arrays and return
boolean masks over it. Ties break by position (smaller first), so a selection is a
pure function of its inputs.
"""

from __future__ import annotations

import numpy as np


def _best_first(score: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by score, highest first, ties by position in ``rows`` (stable sort)."""
    return rows[np.argsort(-score[rows], kind="stable")]


def _best_k(score: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best of ``rows`` (0 < k < len(rows)), in no particular order: a partition,
    O(n), not a sort. Among equal scores at the boundary the choice is still a pure
    function of the input, so selections stay reproducible."""
    return rows[np.argpartition(-score[rows], k - 1)[:k]]


def eligible_rows(n_fresh: int, score: np.ndarray, reuse_cap: int) -> np.ndarray:
    """Every fresh row, and the ``reuse_cap`` best buffered rows (the rest may not train)."""
    eligible = np.zeros(score.size, dtype=bool)
    eligible[:n_fresh] = True
    buffered = np.arange(n_fresh, score.size)
    if reuse_cap >= buffered.size:
        eligible[n_fresh:] = True
    elif reuse_cap > 0:
        eligible[_best_k(score, buffered, reuse_cap)] = True
    return eligible


def top_k(score: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best eligible rows (all of them when fewer)."""
    chosen = np.zeros(score.size, dtype=bool)
    rows = np.flatnonzero(eligible)
    if k >= rows.size:
        chosen[rows] = True
    elif k > 0:
        chosen[_best_k(score, rows, k)] = True
    return chosen


def _first_per_key(rows: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Of ``rows`` (already ordered best first within each key, keys grouped), the first per key."""
    if not rows.size:
        return rows
    keys = key[rows]
    return rows[np.concatenate([[True], keys[1:] != keys[:-1]])]


def balance_signs(
    chosen: np.ndarray, eligible: np.ndarray, score: np.ndarray, group: np.ndarray, advantage: np.ndarray
) -> tuple[np.ndarray, int]:
    """Swap rollouts so that a group whose chosen rollouts all share one advantage sign also
    trains its best rollout of the other sign, when it has one eligible.

    Why: the advantages of a group sum to about zero around its baseline; training only its
    positive (or only its negative) rollouts shifts the group's update as a moved baseline
    would. Each added rollout replaces the lowest-scored chosen rollout that is not the
    best of its own (group, sign): every group keeps the best of each sign it had chosen,
    so no swap undoes another, and the train size is unchanged. Returns the new mask and
    the number of swaps.
    """
    sign = np.sign(advantage).astype(np.int64)
    groups = int(group.max()) + 1 if group.size else 0
    if not groups:
        return chosen, 0
    pos, neg = sign > 0, sign < 0
    chosen_pos = np.bincount(group[chosen & pos], minlength=groups)
    chosen_neg = np.bincount(group[chosen & neg], minlength=groups)
    open_ = eligible & ~chosen
    have_pos = np.bincount(group[open_ & pos], minlength=groups) > 0
    have_neg = np.bincount(group[open_ & neg], minlength=groups) > 0
    need_neg = (chosen_pos > 0) & (chosen_neg == 0) & have_neg
    need_pos = (chosen_neg > 0) & (chosen_pos == 0) & have_pos
    wanted = np.flatnonzero(open_ & ((neg & need_neg[group]) | (pos & need_pos[group])))
    if not wanted.size:
        return chosen, 0
    ordered = wanted[np.lexsort((-score[wanted], group[wanted]))]  # stable: ties by row
    add = _best_first(score, _first_per_key(ordered, group))
    signed = np.flatnonzero(chosen & (sign != 0))
    key = group * 2 + pos
    anchors = _first_per_key(signed[np.lexsort((-score[signed], key[signed]))], key)
    removable = chosen.copy()
    removable[anchors] = False
    spare = np.flatnonzero(removable)
    spare = spare[np.argsort(score[spare], kind="stable")]  # lowest score first
    swaps = min(add.size, spare.size)
    out = chosen.copy()
    out[add[:swaps]] = True
    out[spare[:swaps]] = False
    return out, int(swaps)
