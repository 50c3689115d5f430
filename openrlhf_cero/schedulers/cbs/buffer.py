"""The bounded buffer of past rollouts, with a staleness limit.

A buffered rollout is a record (``context.ROLLOUT_FIELDS``): what the scheduler needs to
build its context again next step. The payload itself (tokens, old log-probabilities)
stays with the caller, which keeps exactly the ids of ``Selection.kept``.

Two limits, both hard:

* staleness: a rollout drawn at step s may train at step t only while t - s <=
  ``max_staleness``. Its payload carries the log-probabilities of the policy that drew
  it; PPO's importance ratio and clip correct for the gap only while it is small. So at
  the end of step t the buffer keeps only rollouts still usable at step t + 1;
* size: at most ``capacity`` rollouts. Over it, the lowest-valued go first (value: the
  scheduler's score; ties: older first, then larger id), so eviction is deterministic.

Columns are numpy arrays side by side; one step costs a concatenation and one sort of
(fresh + buffered) rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from openrlhf_cero.schedulers.cbs.context import ROLLOUT_FIELDS


def empty_records() -> dict[str, np.ndarray]:
    return {name: np.zeros(0, dtype=dtype) for name, dtype in ROLLOUT_FIELDS.items()}


def concat_records(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([first[name], second[name]]).astype(dtype, copy=False)
            for name, dtype in ROLLOUT_FIELDS.items()}


def take_records(records: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: column[rows] for name, column in records.items()}


class RolloutBuffer:
    """At most ``capacity`` past rollouts, none older than ``max_staleness`` steps when used."""

    def __init__(self, capacity: int, max_staleness: int) -> None:
        self.capacity = int(capacity)
        self.max_staleness = int(max_staleness)
        self.records = empty_records()

    def __len__(self) -> int:
        return int(self.records["id"].size)

    @property
    def ids(self) -> np.ndarray:
        return self.records["id"]

    def usable_next_step(self, records: dict[str, np.ndarray], step: int) -> np.ndarray:
        """Rows that may still train at step + 1 (age there <= max_staleness)."""
        return step + 1 - records["step_drawn"] <= self.max_staleness

    def refill(self, pool: dict[str, np.ndarray], candidate: np.ndarray, value: np.ndarray, step: int) -> None:
        """The buffer after step ``step``: the best ``capacity`` of the candidate rows of
        ``pool`` that are still usable next step, stored in id order."""
        rows = np.flatnonzero(candidate & self.usable_next_step(pool, step))
        if rows.size > self.capacity:
            order = np.lexsort((-pool["id"][rows], pool["step_drawn"][rows], value[rows]))
            rows = rows[order[rows.size - self.capacity:]]  # lexsort is ascending: the best come last
        rows = rows[np.argsort(pool["id"][rows], kind="stable")]
        self.records = take_records(pool, rows)

    def state(self) -> dict[str, Any]:
        return {name: column.copy() for name, column in self.records.items()}

    def load(self, state: dict[str, Any]) -> None:
        records = {name: np.asarray(state[name], dtype=dtype) for name, dtype in ROLLOUT_FIELDS.items()}
        sizes = {column.shape for column in records.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"buffer columns differ in shape: {sorted(sizes)}")
        if records["id"].size > self.capacity:
            raise ValueError(f"the saved buffer holds {records['id'].size} rollouts, more than "
                             f"--scheduler.cbs.buffer_size={self.capacity}; resume with a buffer at least that large")
        self.records = records
